//! Garbage collection: everything not reachable from the images still
//! wanted goes — blobs, unpacked root filesystems, names, and partial
//! downloads of blobs nobody wants any more.

use std::collections::BTreeSet;

use tracing::info;

use crate::digest::Digest;
use crate::error::{io, StoreError};
use crate::manifest::Manifest;
use crate::store::{parse_reference, ContentStore};

/// What a collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Verified blobs deleted.
    pub blobs_removed: u64,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Unpacked root filesystems deleted.
    pub rootfs_removed: u64,
    /// Partial downloads deleted.
    pub partials_removed: u64,
    /// Names dropped.
    pub names_removed: u64,
}

impl ContentStore {
    /// Removes everything not reachable from `keep` (image references,
    /// by tag or digest) or from a pinned (imported) name. Blocking.
    pub fn gc(&self, keep: &[&str]) -> Result<GcReport, StoreError> {
        let _lock = self.lock(true)?;
        let mut marked = BTreeSet::new();
        for top in self.pinned()? {
            self.mark("(imported)", &top, &mut marked)?;
        }
        // Images whose tree a running container uses as its overlay lower
        // layer stay, wanted or not (a container on an older digest of a
        // tag, or one whose update failed, still runs from it).
        for top in self.mounted_images() {
            self.mark("(in use)", &top, &mut marked)?;
        }
        let names = self.names_checked()?;
        for reference in keep {
            let parsed = parse_reference(reference)?;
            let top = match parsed.digest() {
                Some(d) => d.parse().ok(),
                None => names
                    .iter()
                    .find(|(n, _)| *n == parsed.whole())
                    .and_then(|(_, d)| d.clone()),
            };
            if let Some(top) = top {
                self.mark(reference, &top, &mut marked)?;
            }
        }
        let mut report = GcReport::default();
        for digest in self.blobs().list().map_err(io("listing blobs"))? {
            if marked.contains(&digest) {
                continue;
            }
            let path = self.blobs().path(&digest);
            report.bytes_freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            self.blobs()
                .remove(&digest)
                .map_err(io(format!("removing blob {digest}")))?;
            report.blobs_removed += 1;
        }
        let images = self.root().join("images");
        for entry in std::fs::read_dir(&images).map_err(io("listing images/"))? {
            let entry = entry.map_err(io("listing images/"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let wanted = format!("sha256:{name}")
                .parse::<Digest>()
                .is_ok_and(|d| marked.contains(&d));
            if !wanted {
                std::fs::remove_dir_all(entry.path())
                    .map_err(io(format!("removing images/{name}")))?;
                report.rootfs_removed += 1;
            }
        }
        for (digest, path) in self.blobs().partials().map_err(io("listing ingest/"))? {
            // A file being written by an import right now has no digest
            // yet: only ones older than an hour are abandoned.
            let fresh = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| {
                    t.elapsed().unwrap_or_default() < std::time::Duration::from_secs(3600)
                });
            if digest.is_none() && fresh {
                continue;
            }
            if !digest.is_some_and(|d| marked.contains(&d)) {
                std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
                report.partials_removed += 1;
            }
        }
        report.names_removed = self.refs_retain(|d| marked.contains(d))? as u64;
        info!(
            blobs = report.blobs_removed,
            bytes = report.bytes_freed,
            rootfs = report.rootfs_removed,
            partials = report.partials_removed,
            names = report.names_removed,
            "garbage collected"
        );
        Ok(report)
    }

    /// Manifest digests of `images/<hex>/rootfs` trees that overlay mounts
    /// of this process's mount namespace use as a lower layer.
    fn mounted_images(&self) -> Vec<Digest> {
        let images = self.root().join("images");
        let prefix = format!("{}/", images.display());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut found = Vec::new();
        for line in mountinfo.lines().filter(|l| l.contains(" - overlay ")) {
            for part in line.split([',', ' ', ':']) {
                let Some(rest) = part
                    .strip_prefix("lowerdir=")
                    .unwrap_or(part)
                    .strip_prefix(&prefix)
                else {
                    continue;
                };
                if let Some(hex) = rest.strip_suffix("/rootfs") {
                    if let Ok(d) = format!("sha256:{hex}").parse() {
                        found.push(d);
                    }
                }
            }
        }
        found
    }

    /// Marks a manifest and everything below it that is present (the other
    /// platforms of an index are usually absent, and their partial
    /// downloads are kept while the index is wanted).
    fn mark(
        &self,
        reference: &str,
        digest: &Digest,
        marked: &mut BTreeSet<Digest>,
    ) -> Result<(), StoreError> {
        if !marked.insert(digest.clone()) || !self.blobs().has(digest) {
            return Ok(());
        }
        let manifest = self.read_manifest(reference, digest)?;
        for d in manifest.descriptors() {
            let Ok(child) = d.digest() else { continue };
            match &manifest {
                Manifest::Index(_) => self.mark(reference, &child, marked)?,
                Manifest::Image { .. } => {
                    marked.insert(child);
                }
            }
        }
        Ok(())
    }
}
