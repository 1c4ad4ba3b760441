//! mecvisor's content store: where container images, kernels and disk
//! images live on an edge box.
//!
//! - [`store`]: [`ContentStore`] — pull by tag or digest, resolve offline,
//!   unpack root filesystems; [`archive`] imports for air-gapped sites;
//!   [`gc`] removes what nothing wants.
//! - [`registry`]: registry access (auth, CA bundle, plain HTTP, timeouts)
//!   over oci-client, with resumable blob downloads.
//! - [`blobs`]: verified, content-addressed blobs and partial downloads.
//! - [`manifest`]: manifests, indexes and image configs, parsed strictly.
//! - [`unpack`]: applies OCI layer tarballs (plain, gzip, zstd) onto a
//!   root directory, refusing anything that would escape it.

pub mod archive;
pub mod blobs;
pub mod digest;
mod durable;
pub mod error;
pub mod gc;
pub mod manifest;
pub mod refs;
pub mod registry;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::StoreError;
pub use gc::GcReport;
pub use manifest::{ImageConfig, Platform, RunConfig};
pub use registry::{trust_anchor_file, RegistryAccess, RegistryOptions};
pub use store::{ContentStore, Image, StoreOptions};

/// Installs ring as rustls' process-wide crypto provider (reqwest is built
/// without one, so it must be present before the first TLS connection).
/// Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    /// The agent shares one store between its async tasks and the blocking
    /// threads that unpack layers.
    #[test]
    fn the_store_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<crate::ContentStore>();
    }

    /// An unpack cut short by a crash leaves its scratch tree in tmp/; the
    /// next open clears it, and nothing half-unpacked is ever in images/.
    #[test]
    fn opening_clears_what_a_crash_left_in_scratch_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leftover = dir.path().join("tmp/unpack-0123456789ab-a1b2c3/usr/bin");
        std::fs::create_dir_all(&leftover).expect("leftover");
        std::fs::write(leftover.join("half-written"), b"x").expect("file");
        let store = crate::ContentStore::open(crate::StoreOptions::at(dir.path())).expect("open");
        assert!(!dir.path().join("tmp/unpack-0123456789ab-a1b2c3").exists());
        assert!(dir.path().join("tmp").is_dir());
        assert_eq!(
            std::fs::read_dir(store.root().join("images"))
                .expect("images")
                .count(),
            0
        );
    }
}
