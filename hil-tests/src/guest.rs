//! The microVMM's test guest (`images/guest/`) in the lab's tests: its
//! image, when a box can run it, and the disk the tests give it (whose
//! first 4 KiB the guest's init reports as `MECVISOR-GUEST-DISK <sha256>
//! <first line>`).

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::images::BootImage;
use crate::{missing_prerequisite, skip_if, Arch};

/// The guest image for `arch` when the lab can boot a box of that
/// architecture; `None` after printing why not (a panic instead with
/// `MECVISOR_HIL_REQUIRED=1`).
pub fn guest_for_box_or_skip(test: &str, arch: Arch) -> Option<BootImage> {
    let guest = BootImage::load(arch, "guest");
    let missing = missing_prerequisite(&[arch]).or_else(|| guest.as_ref().err().cloned());
    if skip_if(test, missing) {
        return None;
    }
    guest.ok()
}

/// The first 4 KiB of a test disk: a line of text, a newline, zeros.
pub struct DiskHead {
    first_line: String,
    bytes: Vec<u8>,
}

impl DiskHead {
    /// A head starting with `first_line` (shorter than 4 KiB).
    pub fn new(first_line: &str) -> DiskHead {
        let mut bytes = vec![0u8; 4096];
        bytes[..first_line.len()].copy_from_slice(first_line.as_bytes());
        bytes[first_line.len()] = b'\n';
        DiskHead {
            first_line: first_line.to_string(),
            bytes,
        }
    }

    /// Writes a disk image of `size` bytes that starts with the head.
    pub fn write_disk(&self, path: &Path, size: u64) {
        let mut file = std::fs::File::create(path).expect("create the test disk");
        file.write_all(&self.bytes).expect("write the disk head");
        file.set_len(size.max(self.bytes.len() as u64))
            .expect("size the test disk");
    }

    /// What the guest prints after `MECVISOR-GUEST-DISK `: the head's
    /// sha256 and its first line.
    pub fn report(&self) -> String {
        let digest: String = Sha256::digest(&self.bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{digest} {}", self.first_line)
    }
}
