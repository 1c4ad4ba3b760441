//! The network device on a real tap. The tap's other side is the host's
//! network stack; each test runs on a thread of its own in a fresh
//! network namespace (namespaces are per thread), where it creates the
//! tap, brings its link up and watches it through an AF_PACKET socket
//! bound to it: what the device transmits arrives on that socket, what
//! is sent on it reaches the device. Nothing touches the host's network;
//! the tap and the namespace go away with the thread's file descriptors.
//!
//! Creating taps and namespaces needs root and `/dev/net/tun`: without
//! them the tests print "SKIPPED <test>: <why>" and pass.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::tests::{ethernet, nic, rx_header, Nic, RX_BUF};
use super::{Tap, TapError, HEADER_LEN};
use crate::devices::mmio::MmioDevice;
use crate::devices::virtio::mmio::regs;
use crate::devices::virtio::testing::Ring;

/// The tap's name inside each test's namespace.
const TAP: &str = "mvtest0";
const WAIT: Duration = Duration::from_secs(5);

/// Runs `body` on a thread in a new network namespace; prints why and
/// returns if that cannot be had.
fn in_netns(test: &str, body: impl FnOnce() + Send + 'static) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED {test}: not root (taps and network namespaces need it)");
        return;
    }
    if !Path::new("/dev/net/tun").exists() {
        println!("SKIPPED {test}: no /dev/net/tun");
        return;
    }
    let thread = thread::spawn(move || {
        // SAFETY: unshare takes flags only; it moves this thread alone
        // into a new network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            ));
        }
        // No IPv6 autoconfiguration traffic on the tap (best effort: the
        // tests also pick their frames out by content).
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        body();
        Ok(())
    });
    match thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(why)) => println!("SKIPPED {test}: {why}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A socket for interface ioctls.
fn inet_socket() -> OwnedFd {
    // SAFETY: socket takes plain arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: fd was just created and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sets IFF_UP on interface `name`.
fn link_up(name: &str) {
    let socket = inet_socket();
    let mut req = super::tap::request(name);
    // SAFETY: SIOCGIFFLAGS fills the ifreq, valid for the call.
    let got = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    assert_eq!(got, 0, "SIOCGIFFLAGS: {}", io::Error::last_os_error());
    // SAFETY: SIOCGIFFLAGS set the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq, valid for the call.
    let set = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    assert_eq!(set, 0, "SIOCSIFFLAGS: {}", io::Error::last_os_error());
}

/// An AF_PACKET socket bound to one interface: every frame on it.
struct Packets(OwnedFd);

impl Packets {
    fn bind(name: &str) -> Packets {
        let all = (libc::ETH_P_ALL as u16).to_be();
        let flags = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: socket takes plain arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, flags, libc::c_int::from(all)) };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: fd was just created and is owned by nobody else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let cname = CString::new(name).expect("name");
        // SAFETY: a NUL-terminated name valid for the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(index, 0, "no interface {name}");
        // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = all;
        address.sll_ifindex = index as libc::c_int;
        // SAFETY: the address is a sockaddr_ll of the length given, valid
        // for the call.
        let bound = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(bound, 0, "bind: {}", io::Error::last_os_error());
        Packets(socket)
    }

    /// Sends `frame` out of the interface (to the tap's reader).
    fn send(&self, frame: &[u8]) {
        // SAFETY: the buffer is valid for its length during the call.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(sent, frame.len() as isize, "{}", io::Error::last_os_error());
    }

    /// The first frame seen within [`WAIT`] that `wanted` accepts.
    fn receive(&self, wanted: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            // SAFETY: the buffer is valid for its length during the call.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            match usize::try_from(n) {
                Ok(n) if wanted(&buf[..n]) => return Some(buf[..n].to_vec()),
                Ok(_) => {}
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
        None
    }
}

/// A device on the tap [`TAP`], its link up, and a socket on it.
fn live_nic() -> (Nic<Tap>, Packets) {
    let tap = Tap::open(TAP).expect("tap");
    assert_eq!(tap.name(), TAP);
    let n = nic(tap, 16);
    link_up(TAP);
    let packets = Packets::bind(TAP);
    (n, packets)
}

/// Receive buffers as descriptors 0..count, 2 KiB each, made available.
fn post_rx_buffers(n: &mut Nic<Tap>, count: u16) {
    for i in 0..count {
        n.post_rx(i, &[(RX_BUF + 0x1000 * u64::from(i), 2048, true)]);
    }
}

/// Whether a used receive buffer (as [`post_rx_buffers`] made them)
/// holds `frame` after its header.
fn received(rx: &Ring, frame: &[u8]) -> bool {
    let mut expected = rx_header();
    expected.extend_from_slice(frame);
    (0..rx.used_idx()).any(|i| {
        let (id, len) = rx.used(i);
        let at = RX_BUF + 0x1000 * u64::from(id);
        len as usize == expected.len() && rx.get(at, expected.len()) == expected
    })
}

#[test]
fn a_tap_opens_non_blocking_and_goes_away_when_closed() {
    assert!(matches!(Tap::open("bad%d"), Err(TapError::BadName(_))));
    in_netns("a_tap_opens_non_blocking_and_goes_away_when_closed", || {
        let exists = || {
            let name = CString::new(TAP).expect("name");
            // SAFETY: a NUL-terminated name valid for the call.
            unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
        };
        let tap = Tap::open(TAP).expect("tap");
        assert!(exists());
        let mut buf = [0u8; 64];
        let error = tap.read_frame(&mut buf).expect_err("nothing to read");
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        // A frame while the link is down: the kernel refuses it.
        let mut frame = vec![0; HEADER_LEN];
        frame.extend_from_slice(&ethernet(b"down"));
        assert!(tap.write_frame(&frame).is_err());
        drop(tap);
        assert!(!exists(), "not persistent");
    });
}

#[test]
fn frames_the_guest_transmits_come_out_of_the_tap() {
    in_netns("frames_the_guest_transmits_come_out_of_the_tap", || {
        let (mut n, packets) = live_nic();
        let frame = ethernet(b"mecvisor virtio-net transmit test");
        assert_eq!(n.transmit(&[0; HEADER_LEN], &frame), 0);
        let seen = packets.receive(|bytes| bytes == frame.as_slice());
        assert!(seen.is_some(), "the frame came out of the tap");
        let counters = n.counters();
        assert_eq!((counters.tx_frames, counters.tx_dropped), (1, 0));
        // A frame larger than the link's MTU still goes to the kernel,
        // which may drop it; the device goes on.
        let big = ethernet(&vec![1; 9000]);
        assert_eq!(n.transmit(&[0; HEADER_LEN], &big), 0);
        assert_eq!(n.transmit(&[0; HEADER_LEN], &frame), 0);
        assert_eq!(n.driver.read(regs::STATUS), super::tests::LIVE);
    });
}

#[test]
fn frames_sent_to_the_tap_reach_the_guest() {
    in_netns("frames_sent_to_the_tap_reach_the_guest", || {
        let (mut n, packets) = live_nic();
        let frame = ethernet(&[0x42; 1500]);
        packets.send(&frame);
        // Nothing is read while the guest has no buffer.
        let deadline = Instant::now() + WAIT;
        post_rx_buffers(&mut n, 4);
        let mut found = false;
        while !found && Instant::now() < deadline {
            n.driver.notify(0);
            found = received(&n.rx, &frame);
            thread::sleep(Duration::from_millis(5));
        }
        assert!(found, "the frame reached a receive buffer");
        assert!(n.line.take());
        assert_eq!(n.counters().rx_dropped, 0);
    });
}

#[test]
fn the_event_loop_receives_when_the_tap_becomes_readable() {
    in_netns(
        "the_event_loop_receives_when_the_tap_becomes_readable",
        || {
            let (mut n, packets) = live_nic();
            post_rx_buffers(&mut n, 4);
            let Nic {
                driver, rx, line, ..
            } = n;
            let (tap_fd, kick_fd) = (
                driver.transport.device().tap_fd(),
                driver.transport.device().rx_kick_fd(),
            );
            // The transport as the VMM shares it: the vCPUs' side through the
            // MMIO bus, the event loop's through its own handle.
            let shared = Arc::new(Mutex::new(driver.transport));
            let stop = Arc::new(AtomicBool::new(false));
            let event_loop = {
                let (shared, stop) = (shared.clone(), stop.clone());
                thread::spawn(move || {
                    let epoll = Epoll::new().expect("epoll");
                    let readable = EventSet::IN | EventSet::EDGE_TRIGGERED;
                    epoll
                        .ctl(ControlOperation::Add, tap_fd, EpollEvent::new(readable, 0))
                        .expect("watch the tap");
                    epoll
                        .ctl(
                            ControlOperation::Add,
                            kick_fd,
                            EpollEvent::new(EventSet::IN, 1),
                        )
                        .expect("watch the kick");
                    let mut events = [EpollEvent::default(); 2];
                    while !stop.load(Ordering::Acquire) {
                        if epoll.wait(50, &mut events).expect("epoll_wait") > 0 {
                            let mut transport = shared.lock().expect("transport");
                            transport.run_live(|net| net.process_rx());
                        }
                    }
                })
            };
            let mut bus_side = shared.clone();
            bus_side.write(regs::QUEUE_NOTIFY, &0u32.to_le_bytes());
            let frame = ethernet(b"through the event loop");
            packets.send(&frame);
            let deadline = Instant::now() + WAIT;
            let mut found = false;
            while !found && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
                found = received(&rx, &frame);
            }
            stop.store(true, Ordering::Release);
            event_loop.join().expect("event loop");
            assert!(found, "received without a notification");
            assert!(line.take(), "the interrupt was raised");
        },
    );
}
