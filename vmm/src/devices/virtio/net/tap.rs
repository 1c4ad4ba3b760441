//! A Linux tap device: an Ethernet interface of the host whose frames this
//! process reads and writes through `/dev/net/tun`. It is opened by name
//! (the VMM's config names it; the network-slicing code attaches it to a
//! bridge afterwards), without packet information, with a 12-byte
//! `virtio_net_hdr_v1` before every frame (IFF_VNET_HDR), with no offloads
//! (the kernel hands over only whole, checksummed frames), non-blocking.
//! The interface goes away when the `Tap` is dropped: it is never made
//! persistent.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{FrameIo, HEADER_LEN};

/// The tun/tap control device.
const TUN_DEVICE: &str = "/dev/net/tun";

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not one the kernel takes as is.
    #[error("tap name {0:?}: 1 to 15 bytes of letters, digits, '-', '_' or '.'")]
    BadName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_DEVICE}: {0}")]
    Open(io::Error),
    /// The kernel refused one of the setup ioctls.
    #[error("{what} on tap {name}: {source}")]
    Ioctl {
        /// The request.
        what: &'static str,
        /// The tap.
        name: String,
        /// The OS error.
        source: io::Error,
    },
}

/// An open tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Whether the kernel takes `name` as an interface name unchanged: no
/// `%` (a name template), no '/', ':' or white space, not "." or "..",
/// shorter than IFNAMSIZ.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An `ifreq` naming `name` (checked by [`valid_name`]).
pub(super) fn request(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of
    // integers, addresses and a pointer): all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    req
}

impl Tap {
    /// Opens (creating it if needed) the tap interface `name`, set up for
    /// a virtio-net device: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a vnet
    /// header of [`HEADER_LEN`] bytes, no offloads, non-blocking. Needs
    /// CAP_NET_ADMIN (or a persistent tap this user owns).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(TapError::Open)?;
        let failed = |what: &'static str| {
            let source = io::Error::last_os_error();
            TapError::Ioctl {
                what,
                name: name.to_string(),
                source,
            }
        };
        let mut req = request(name);
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and updates the ifreq, which lives for
        // the call; the fd is ours.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(failed("TUNSETIFF"));
        }
        let header_len = HEADER_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // is valid for the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) } < 0 {
            return Err(failed("TUNSETVNETHDRSZ"));
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value (no offload
        // bits); nothing is read or written through it.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
            return Err(failed("TUNSETOFFLOAD"));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame, its vnet header first, into `buf`; returns its
    /// length (cut to `buf`'s). `WouldBlock` when none is waiting.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame, its vnet header first.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        let written = (&self.file).write(frame)?;
        if written != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the tap took {written} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }
}

impl FrameIo for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Tap::read_frame(self, buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        Tap::write_frame(self, frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn tap_names_are_taken_as_is_or_refused() {
        for good in ["mvt0123abcd", "a", "tap-0_x.y", "fifteen-chars-x"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-chars-xx",
            "mvt%d",
            "a/b",
            "a b",
            "a:b",
            "tap\0",
            "tapé",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
