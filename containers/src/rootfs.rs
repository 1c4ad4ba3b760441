//! A container's root file system, made from its image's unpacked (and
//! shared, read-only) root: an overlayfs with a per-container upper layer
//! where the kernel has overlayfs and the state directory supports it, a
//! full copy otherwise (and always when the container runs in a user
//! namespace, where the copy's owners are shifted into the mapped range).
//! Every (re)start gets a fresh writable layer: data that must survive a
//! restart belongs in a volume.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tracing::{debug, info};

/// How the root file system was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    /// overlayfs over the image.
    Overlay,
    /// A copy of the image.
    Copy,
}

/// Makes `target` (the bundle's `rootfs`) from `image_root`; `scratch` is
/// the container's directory for the overlay's upper and work dirs.
/// `shift` adds an offset to every owner (user namespaces: forces a copy).
pub fn prepare(
    image_root: &Path,
    target: &Path,
    scratch: &Path,
    shift: Option<u32>,
) -> io::Result<RootfsKind> {
    release(target)?;
    for dir in ["upper", "work"] {
        let path = scratch.join(dir);
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
    }
    if target.exists() {
        fs::remove_dir_all(target)?;
    }
    fs::create_dir_all(target)?;
    if shift.is_none() {
        match overlay(image_root, target, scratch) {
            Ok(()) => return Ok(RootfsKind::Overlay),
            Err(e) => info!(error = %e, "overlayfs not usable here; copying the image instead"),
        }
    }
    copy_tree(image_root, target, shift.unwrap_or(0))?;
    Ok(RootfsKind::Copy)
}

fn overlay(lower: &Path, target: &Path, scratch: &Path) -> io::Result<()> {
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    fs::create_dir_all(&upper)?;
    fs::create_dir_all(&work)?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(io::Error::from)?;
    debug!(target = %target.display(), "overlay mounted");
    Ok(())
}

/// Unmounts `target` if something is mounted there (lazily, so a process
/// still holding it open cannot block removal).
pub fn release(target: &Path) -> io::Result<()> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Copies a tree preserving modes, owners (plus `shift`), symlinks and
/// FIFOs; hard links become separate files.
pub fn copy_tree(from: &Path, to: &Path, shift: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let m = fs::symlink_metadata(&source)?;
        let kind = m.file_type();
        if kind.is_dir() {
            copy_tree(&source, &target, shift)?;
            continue;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&source)?, &target)?;
        } else if kind.is_file() {
            fs::copy(&source, &target)?;
        } else {
            use std::os::unix::fs::FileTypeExt;
            if kind.is_fifo() {
                nix::unistd::mkfifo(
                    &target,
                    nix::sys::stat::Mode::from_bits_truncate(m.mode() & 0o777),
                )?;
            } else {
                debug!(path = %source.display(), "special file not copied");
                continue;
            }
        }
        own(&target, &m, shift)?;
    }
    own(to, &meta, shift)
}

/// Ids at or above this are outside a shifted range (65536 per container):
/// such files become owned by the range's "nobody".
const RANGE: u32 = 65_536;

fn own(path: &Path, meta: &fs::Metadata, shift: u32) -> io::Result<()> {
    let map = |id: u32| {
        if shift == 0 {
            id
        } else {
            shift.saturating_add(if id < RANGE { id } else { RANGE - 2 })
        }
    };
    std::os::unix::fs::lchown(path, Some(map(meta.uid())), Some(map(meta.gid())))?;
    if !meta.file_type().is_symlink() {
        // chown clears setuid bits: set the mode after it.
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}
