//! The content store ([`content_store::ContentStore`]) as the reconciler's
//! artifact store: images, kernels, initramfs and disks fetched by
//! reference, digest-verified, and dropped once no desired workload needs
//! them. Shared by the container and VM runtimes, which read what it
//! fetched.

use std::sync::Arc;

use content_store::ContentStore;
use tracing::info;

use crate::runtimes::{ArtifactStore, RuntimeError, RuntimeFuture};

/// The content store as the reconciler's artifact store.
pub struct ContentArtifacts {
    store: Arc<ContentStore>,
}

impl ContentArtifacts {
    /// Wraps a store.
    pub fn new(store: Arc<ContentStore>) -> ContentArtifacts {
        ContentArtifacts { store }
    }
}

impl ArtifactStore for ContentArtifacts {
    fn ensure<'a>(&'a mut self, reference: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.store
                .ensure(reference)
                .await
                .map(drop)
                .map_err(RuntimeError::failed)
        })
    }

    fn retain<'a>(&'a mut self, references: &'a [String]) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let store = self.store.clone();
            let keep = references.to_vec();
            let report = tokio::task::spawn_blocking(move || {
                let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
                store.gc(&keep)
            })
            .await
            .map_err(RuntimeError::worker)?
            .map_err(RuntimeError::failed)?;
            if report.blobs_removed > 0 || report.rootfs_removed > 0 {
                info!(
                    blobs = report.blobs_removed,
                    bytes = report.bytes_freed,
                    rootfs = report.rootfs_removed,
                    "content no longer wanted removed"
                );
            }
            Ok(())
        })
    }
}
