//! The errors of store operations, each naming the image or file involved.

use std::path::PathBuf;

use crate::blobs::BlobError;
use crate::digest::{Digest, DigestError};
use crate::manifest::ManifestError;
use crate::registry::RegistryError;
use crate::unpack::UnpackError;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The reference does not parse.
    #[error("image reference `{reference}`: {reason}")]
    Reference {
        /// As given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// Fetching from the registry failed.
    #[error("pulling {reference}: {source}")]
    Registry {
        /// The image.
        reference: String,
        /// The failure.
        source: RegistryError,
    },
    /// A manifest or config was refused.
    #[error("{reference}: {source}")]
    Manifest {
        /// The image.
        reference: String,
        /// The failure.
        source: ManifestError,
    },
    /// A digest named by a document is malformed.
    #[error("{reference}: {source}")]
    Digest {
        /// The image.
        reference: String,
        /// The failure.
        source: DigestError,
    },
    /// A blob was refused or could not be written.
    #[error("{reference}: {source}")]
    Blob {
        /// The image.
        reference: String,
        /// The failure.
        source: BlobError,
    },
    /// A descriptor's size or the registry's answer disagree with the blob.
    #[error("{reference}: {what}")]
    Mismatch {
        /// The image.
        reference: String,
        /// What disagreed.
        what: String,
    },
    /// No manifest in the index runs on this box.
    #[error("{reference}: no image for {platform} (the index has {available})")]
    NoPlatform {
        /// The image.
        reference: String,
        /// This box's platform.
        platform: String,
        /// Platforms the index lists.
        available: String,
    },
    /// Not in the store, and not fetched.
    #[error("{reference}: not in the content store")]
    NotFound {
        /// The image.
        reference: String,
    },
    /// A layer could not be unpacked.
    #[error("{image}: layer {layer}: {source}")]
    Unpack {
        /// Image manifest digest.
        image: Digest,
        /// The layer.
        layer: Digest,
        /// The failure.
        source: UnpackError,
    },
    /// An archive to import is malformed.
    #[error("archive {path}: {reason}")]
    Archive {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file system error in the store.
    #[error("content store: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Shorthand for mapping io errors with context.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}
