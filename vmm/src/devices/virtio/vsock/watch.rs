//! What the device needs an event loop to watch, shared between the
//! device (behind its transport's lock) and the loop's subscriber
//! ([`super::subscriber::VsockBackend`]), which must be able to clear
//! and update its watches even while the device is not live:
//! - a kick eventfd (level-triggered): the device has work it could not
//!   finish under the vCPUs' lock, or new streams to watch;
//! - a timer (level-triggered): an unfinished handshake or request may
//!   have timed out;
//! - the connections' streams, added and retired as connections come and
//!   go ([`FdChanges`]). A retired stream stays open until the loop takes
//!   it (after unregistering it), so that its descriptor number cannot be
//!   reused by a new stream while the loop still watches it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

/// How often the timer fires while a deadline is pending.
const TICK: Duration = Duration::from_millis(500);

/// Streams to start and stop watching.
#[derive(Debug, Default)]
pub struct FdChanges {
    /// New connection streams: watch them for readability, writability
    /// and peer hang-up, edge-triggered.
    pub added: Vec<RawFd>,
    /// Closed connections' streams: stop watching them, then drop them.
    pub retired: Vec<UnixStream>,
}

struct Shared {
    kick: EventFd,
    timer: Mutex<TimerFd>,
    changes: Mutex<FdChanges>,
    /// Whether a loop takes the changes (else none are kept).
    watched: AtomicBool,
    /// Whether the timer is armed (saves a syscall per round).
    armed: AtomicBool,
}

/// The device's watch list and wake-ups; clones share them.
#[derive(Clone)]
pub struct HostWatch {
    shared: Arc<Shared>,
}

impl HostWatch {
    /// A kick eventfd and a disarmed non-blocking timer.
    pub(super) fn new() -> io::Result<HostWatch> {
        let timer = TimerFd::new().map_err(io::Error::from)?;
        // SAFETY: fcntl on the timer's own descriptor, no memory passed.
        let set = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(HostWatch {
            shared: Arc::new(Shared {
                kick: EventFd::new(EFD_NONBLOCK)?,
                timer: Mutex::new(timer),
                changes: Mutex::new(FdChanges::default()),
                watched: AtomicBool::new(false),
                armed: AtomicBool::new(false),
            }),
        })
    }

    /// The kick eventfd (level-triggered).
    pub fn kick_fd(&self) -> RawFd {
        self.shared.kick.as_raw_fd()
    }

    /// The timer (level-triggered).
    pub fn timer_fd(&self) -> RawFd {
        self.lock_timer().as_raw_fd()
    }

    /// Clears the kick and the timer's expirations (before the device
    /// works, so that what it leaves for later raises them again).
    pub fn clear(&self) {
        let _ = self.shared.kick.read();
        let _ = self.lock_timer().wait();
    }

    /// Takes the streams to start and stop watching since the last call.
    pub fn take_changes(&self) -> FdChanges {
        std::mem::take(&mut *self.lock_changes())
    }

    /// From now on keeps the changes for a loop, starting with `current`
    /// (the streams already open).
    pub(super) fn start(&self, current: impl Iterator<Item = RawFd>) {
        if !self.shared.watched.swap(true, Ordering::AcqRel) {
            self.lock_changes().added.extend(current);
        }
    }

    /// Asks the loop to call the device again.
    pub(super) fn kick(&self) {
        if let Err(e) = self.shared.kick.write(1) {
            tracing::warn!("vsock: cannot kick the event loop: {e}");
        }
    }

    /// A new stream to watch.
    pub(super) fn add(&self, fd: RawFd) {
        if self.shared.watched.load(Ordering::Acquire) {
            self.lock_changes().added.push(fd);
            self.kick();
        }
    }

    /// A stream no longer used (already shut down).
    pub(super) fn retire(&self, stream: UnixStream) {
        if self.shared.watched.load(Ordering::Acquire) {
            self.lock_changes().retired.push(stream);
            self.kick();
        }
    }

    /// Arms the periodic timer (`pending`: a deadline waits) or disarms it.
    pub(super) fn set_timer(&self, pending: bool) {
        if self.shared.armed.swap(pending, Ordering::AcqRel) == pending {
            return;
        }
        let mut timer = self.lock_timer();
        let result = if pending {
            timer.reset(TICK, Some(TICK))
        } else {
            timer.clear()
        };
        if let Err(e) = result {
            tracing::warn!("vsock: cannot set the timeout timer: {e}");
        }
    }

    fn lock_timer(&self) -> std::sync::MutexGuard<'_, TimerFd> {
        self.shared.timer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_changes(&self) -> std::sync::MutexGuard<'_, FdChanges> {
        self.shared
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}
