//! The host side's sockets: the listener host processes connect to, and
//! non-blocking connections to the sockets guest connections reach.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The socket a guest connection to host port `port` reaches: the
/// device's path with `_<port>` appended.
pub(super) fn port_path(base: &Path, port: u32) -> PathBuf {
    let mut path = base.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// A non-blocking listener bound at `path`.
pub(super) fn listen(path: &Path) -> io::Result<UnixListener> {
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A non-blocking stream connected to the listener at `path`, without
/// waiting (a full backlog is `WouldBlock`, refused like a missing
/// socket): connecting happens on a vCPU thread.
pub(super) fn connect(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain old data (a family and a byte array):
    // all zeroes is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= address.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a Unix socket path",
        ));
    }
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, &byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = byte as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: creates a socket; no memory is passed.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just created and owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `address` is a valid sockaddr_un that outlives the call,
    // and `len` (family, path, terminating zero) is within its size.
    let result = unsafe {
        libc::connect(
            fd,
            (&address as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}
