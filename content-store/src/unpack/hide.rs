//! Applying whiteouts: removing what lower layers brought, and only that.
//!
//! OCI layer.md: whiteouts apply to lower layers only; a file this same
//! layer adds is never hidden by this layer's whiteouts, whatever the order
//! of the entries in the tar. So a whiteout (or opaque marker) removes a
//! path only if this layer did not write it; a directory this layer wrote
//! (or created on the way to an entry) is kept, and the rule is applied to
//! its children instead.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use super::at;
use super::entry_path::EntryPath;
use super::error::UnpackError;
use super::writer::Applier;

impl Applier {
    /// `.wh.<target>` in `dir`: removes `dir/<target>` of the lower layers.
    /// Nothing to remove is fine.
    pub(super) fn whiteout(
        &mut self,
        dir: &EntryPath,
        target: &OsStr,
        name: &str,
    ) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        let Some(dir_fd) = self.existing_dir(dir, name)? else {
            tracing::debug!(entry = name, "whiteout in a directory that does not exist");
            return Ok(());
        };
        tracing::debug!(entry = name, "whiteout: hiding lower-layer path");
        self.keep.extend(dir.self_and_ancestors());
        self.remove_lower(dir_fd.as_fd(), &dir.join(target), name)
    }

    /// `.wh..wh..opq` in `dir`: removes every child of `dir` that lower
    /// layers brought, keeping what this layer adds (before or after the
    /// marker: later entries are simply created in the emptied directory).
    pub(super) fn opaque(&mut self, dir: &EntryPath, name: &str) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        let Some(dir_fd) = self.existing_dir(dir, name)? else {
            tracing::debug!(
                entry = name,
                "opaque marker in a directory that does not exist"
            );
            return Ok(());
        };
        tracing::debug!(
            entry = name,
            "opaque directory: hiding lower-layer children"
        );
        self.keep.extend(dir.self_and_ancestors());
        let children =
            at::list(dir_fd.as_fd()).map_err(|e| UnpackError::io(name, "list directory", e))?;
        for child in children {
            self.remove_lower(dir_fd.as_fd(), &dir.join(&child), name)?;
        }
        Ok(())
    }

    /// Removes `path` (a child of `parent`) unless this layer wrote it; for
    /// a directory this layer wrote, recurses into its children.
    fn remove_lower(
        &self,
        parent: BorrowedFd<'_>,
        path: &EntryPath,
        name: &str,
    ) -> Result<(), UnpackError> {
        let Some(file_name) = path.name() else {
            return Ok(());
        };
        let Some(st) =
            at::lstat(parent, file_name).map_err(|e| UnpackError::io(name, "stat", e))?
        else {
            return Ok(());
        };
        if !self.keep.contains(&path.to_path()) {
            return at::remove(parent, file_name, &st)
                .map_err(|e| UnpackError::io(name, "remove whited-out path", e));
        }
        if at::is_dir(&st) {
            let dir = at::open_child_dir(parent, file_name)
                .map_err(|e| UnpackError::io(name, "open directory", e))?;
            let children =
                at::list(dir.as_fd()).map_err(|e| UnpackError::io(name, "list directory", e))?;
            for child in children {
                self.remove_lower(dir.as_fd(), &path.join(&child), name)?;
            }
        }
        Ok(())
    }
}
