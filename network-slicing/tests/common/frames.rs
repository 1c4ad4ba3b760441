//! Raw Ethernet frames sent with an AF_PACKET socket, e.g. 802.1Q-tagged
//! frames towards an uplink on a kernel that has no VLAN links (the
//! receiving side moves the tag into the packet's metadata in its core
//! receive path, 8021q or not).

use std::io;

use nix::libc;

/// Sends `count` UDP-in-IPv4 frames out of interface `ifindex`, from
/// `src_mac` to `dst_mac`, with an 802.1Q tag if `vlan_id` is given.
pub fn send_frames(
    ifindex: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan_id: Option<u16>,
    count: usize,
) -> io::Result<()> {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket this function owns from here on.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let frame = frame(src_mac, dst_mac, vlan_id);
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = ifindex as i32;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&dst_mac);
    for _ in 0..count {
        // SAFETY: the buffer and address outlive the call; lengths match.
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A frame carrying a small UDP datagram, 802.1Q-tagged if `vlan_id` is
/// given (checksums are not checked on the way to tc).
fn frame(src_mac: [u8; 6], dst_mac: [u8; 6], vlan_id: Option<u16>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    if let Some(vlan_id) = vlan_id {
        frame.extend_from_slice(&0x8100u16.to_be_bytes());
        frame.extend_from_slice(&(vlan_id & 0x0fff).to_be_bytes());
    }
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4 header, 20 bytes + 8 UDP + 4 payload.
    frame.extend_from_slice(&[0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    frame.extend_from_slice(&[10, 99, 0, 1, 10, 99, 0, 2]);
    frame.extend_from_slice(&[0x1f, 0x90, 0x1f, 0x90, 0, 12, 0, 0, b'm', b'e', b'c', b'v']);
    frame
}

/// A frame seen by [`Capture`]: its VLAN id (from the kernel's packet
/// metadata, where the tag of a received frame lives) and source MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// VLAN id, if the frame was tagged.
    pub vlan_id: Option<u16>,
    /// Source MAC address.
    pub source: [u8; 6],
}

/// An AF_PACKET socket capturing every frame received on one interface.
pub struct Capture {
    fd: std::os::fd::OwnedFd,
}

const PACKET_AUXDATA: i32 = 8;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;

impl Capture {
    /// Starts capturing on interface `ifindex`.
    pub fn start(ifindex: u32) -> io::Result<Capture> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                i32::from(protocol),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh socket owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let on: i32 = 1;
        // SAFETY: the option value is a live i32 of the size passed.
        let set = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_AUXDATA,
                (&on as *const i32).cast(),
                4,
            )
        };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = ifindex as i32;
        // SAFETY: the address outlives the call; its size is passed.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Capture { fd })
    }

    /// Every frame received so far (non-blocking drain).
    pub fn drain(&self) -> io::Result<Vec<Seen>> {
        use std::os::fd::AsRawFd;
        let mut out = Vec::new();
        loop {
            let mut frame = [0u8; 2048];
            let mut control = [0u64; 16];
            let mut iov = libc::iovec {
                iov_base: frame.as_mut_ptr().cast(),
                iov_len: frame.len(),
            };
            // SAFETY: msghdr is plain data; all-zero is a valid value.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = &mut iov;
            header.msg_iovlen = 1;
            header.msg_control = control.as_mut_ptr().cast();
            header.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: every buffer in the header outlives the call.
            let len = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut header, 0) };
            if len < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::WouldBlock {
                    return Ok(out);
                }
                return Err(error);
            }
            if len < 14 {
                continue;
            }
            let mut vlan_id = None;
            // SAFETY: walking the control messages the kernel wrote into
            // `control`, with the libc helpers, within msg_controllen.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&header);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == PACKET_AUXDATA
                    {
                        let aux = libc::CMSG_DATA(cmsg)
                            .cast::<libc::tpacket_auxdata>()
                            .read_unaligned();
                        if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                            vlan_id = Some(aux.tp_vlan_tci & 0x0fff);
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(&header, cmsg);
                }
            }
            // A tag still in the frame (a kernel that left it there).
            if vlan_id.is_none() && frame[12..14] == [0x81, 0x00] && len >= 16 {
                vlan_id = Some(u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff);
            }
            let mut source = [0u8; 6];
            source.copy_from_slice(&frame[6..12]);
            out.push(Seen { vlan_id, source });
        }
    }
}
