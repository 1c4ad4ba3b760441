//! AF_VSOCK stream sockets through libc: a listener on a port of any local
//! CID, its accepted streams, and the guest's own CID (which tells whether
//! a vsock transport device is there at all).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::server::{Connection, Listener};

/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID` on `/dev/vsock`: `_IO(7, 0xb9)`.
const GET_LOCAL_CID: u64 = 0x7b9;

/// The guest's CID as the vsock core knows it; `None` when no guest-to-host
/// transport has a device (no virtio-vsock in this VM). Fails when
/// `/dev/vsock` is missing (the `vsock` module is not loaded).
pub fn local_cid() -> io::Result<Option<u32>> {
    let dev = std::fs::File::open("/dev/vsock")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/vsock: {e}")))?;
    let mut cid: libc::c_uint = libc::VMADDR_CID_ANY;
    // SAFETY: the ioctl writes one c_uint through the pointer, which points
    // at `cid`, alive for the call; the fd is open.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), GET_LOCAL_CID as _, &mut cid) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cid != libc::VMADDR_CID_ANY).then_some(cid))
}

/// A listening AF_VSOCK stream socket.
pub struct VsockListener {
    fd: OwnedFd,
}

impl VsockListener {
    /// Binds `port` on any local CID and listens.
    pub fn bind(port: u32) -> io::Result<Self> {
        // SAFETY: plain socket(2) call with constant arguments.
        let raw =
            unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_vm is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: the pointer and length describe `addr`, alive for the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: listen(2) on a descriptor this function owns.
        if unsafe { libc::listen(fd.as_raw_fd(), 16) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(VsockListener { fd })
    }
}

impl Listener for VsockListener {
    type Conn = VsockStream;

    fn accept(&self) -> io::Result<VsockStream> {
        // SAFETY: null address pointers are allowed (the peer's address is
        // not wanted); the listener's descriptor is open.
        let raw = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(VsockStream {
            // SAFETY: `raw` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }
}

/// One accepted AF_VSOCK connection.
pub struct VsockStream {
    fd: OwnedFd,
}

impl VsockStream {
    fn set_timeout(&self, option: libc::c_int, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX).into(),
            tv_usec: timeout.subsec_micros().into(),
        };
        // SAFETY: the pointer and length describe `tv`, alive for the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`;
        // MSG_NOSIGNAL turns a closed peer into EPIPE, not SIGPIPE.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Connection for VsockStream {
    fn set_idle_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_timeout(libc::SO_RCVTIMEO, timeout)?;
        self.set_timeout(libc::SO_SNDTIMEO, timeout)
    }
}
