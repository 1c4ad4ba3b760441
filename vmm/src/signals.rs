//! The signals that end a VMM process cleanly (SIGTERM, SIGINT), read from
//! a signalfd by the event loop instead of interrupting whatever thread
//! happens to run.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Signals that ask the VMM to stop the guest and exit.
pub const TERMINATION_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// A signalfd for [`TERMINATION_SIGNALS`]. Creating it blocks those signals
/// in the calling thread, and threads started afterwards (the vCPUs)
/// inherit the mask, so the signals wait in the fd for the event loop.
pub struct TerminationSignals {
    fd: OwnedFd,
}

impl TerminationSignals {
    /// Blocks the signals and opens the fd. Call it before starting any
    /// thread.
    pub fn block() -> std::io::Result<TerminationSignals> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before
        // any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut set) };
        for signal in TERMINATION_SIGNALS {
            // SAFETY: as above; the signal numbers are valid.
            unsafe { libc::sigaddset(&mut set, signal) };
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new fd; `set` is initialised.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TerminationSignals { fd })
    }

    /// The next pending signal's number, if one is pending.
    pub fn take(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is that big.
        let read = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (usize::try_from(read).ok() == Some(size)).then_some(info.ssi_signo as i32)
    }
}

impl AsRawFd for TerminationSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
