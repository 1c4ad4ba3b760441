//! Verified blobs on disk: `blobs/sha256/<hex>` holds exactly the bytes
//! whose SHA-256 is `<hex>`; nothing else ever appears there. Downloads
//! grow in `ingest/sha256-<hex>.partial` (kept across restarts so a pull
//! resumes where it stopped) and are renamed into place only once their
//! size and digest match.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::durable;

/// Why a blob could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes hash to something else than the digest they were fetched for.
    #[error("blob {expected}: content hashes to {actual}; refused")]
    DigestMismatch {
        /// Digest the descriptor named.
        expected: Digest,
        /// Digest of what arrived.
        actual: Digest,
    },
    /// Fewer or more bytes than the descriptor's size.
    #[error("blob {digest}: expected {expected} bytes, got {actual}; refused")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// Size the descriptor named.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// A file system error.
    #[error("blob {digest}: {context}: {source}")]
    Io {
        /// The blob.
        digest: Digest,
        /// What was being done.
        context: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// The blob directory of a store.
#[derive(Debug, Clone)]
pub struct Blobs {
    blobs: PathBuf,
    ingest: PathBuf,
    /// Blobs this handle wrote (not found already present), for an import
    /// to undo exactly its own work.
    created: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<Digest>>>,
}

impl Blobs {
    /// Opens (creating if needed) the blob and ingest directories under `root`.
    pub fn open(root: &Path) -> io::Result<Blobs> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        fs::create_dir_all(&blobs)?;
        fs::create_dir_all(&ingest)?;
        Ok(Blobs {
            blobs,
            ingest,
            created: Default::default(),
        })
    }

    fn record(&self, digest: &Digest) {
        if let Ok(mut created) = self.created.lock() {
            created.insert(digest.clone());
        }
    }

    /// The blobs this handle wrote since the last call (and forgets them).
    pub fn take_created(&self) -> std::collections::BTreeSet<Digest> {
        self.created
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    /// Path of a verified blob (which may not exist).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the verified blob is present.
    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Reads a whole verified blob (manifests, configs).
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        fs::read(self.path(digest)).map_err(|source| BlobError::Io {
            digest: digest.clone(),
            context: "reading",
            source,
        })
    }

    /// Stores `bytes` under `digest` after checking they hash to it.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), BlobError> {
        let actual = Digest::of(bytes);
        if &actual != digest {
            return Err(BlobError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if self.has(digest) {
            return Ok(());
        }
        let io = |context| {
            move |source| BlobError::Io {
                digest: digest.clone(),
                context,
                source,
            }
        };
        durable::write_file(&self.path(digest), bytes).map_err(io("writing"))?;
        make_read_only(&self.path(digest)).map_err(io("making read-only"))?;
        self.record(digest);
        Ok(())
    }

    /// Starts or resumes the download of a blob: the partial file and the
    /// hash state of what it already holds.
    pub fn ingest(&self, digest: &Digest) -> Result<Ingest, BlobError> {
        let path = self.ingest.join(format!("sha256-{}.partial", digest.hex()));
        let io = |context| {
            move |source| BlobError::Io {
                digest: digest.clone(),
                context,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io("opening the partial download"))?;
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(io("reading the partial download"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Ingest {
            digest: digest.clone(),
            path,
            file,
            hasher,
        })
    }

    /// Stores whatever `reader` yields under the digest it hashes to
    /// (archive imports, where a file's digest is known only once read);
    /// returns that digest and the size.
    pub fn put_reader(&self, mut reader: impl Read) -> io::Result<(Digest, u64)> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
        let tmp = self
            .ingest
            .join(format!("stream-{}.tmp", hex::encode(random)));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            let mut hasher = Hasher::default();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                file.write_all(&buf[..n])?;
                hasher.update(&buf[..n]);
            }
            file.sync_all()?;
            let size = hasher.len();
            let digest = hasher.finish();
            let target = self.path(&digest);
            if target.exists() {
                fs::remove_file(&tmp)?;
            } else {
                durable::rename(&tmp, &target)?;
                make_read_only(&target)?;
                self.record(&digest);
            }
            Ok((digest, size))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Partial downloads present, by digest (for garbage collection).
    pub fn partials(&self) -> io::Result<Vec<(Option<Digest>, PathBuf)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.ingest)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = name
                .strip_prefix("sha256-")
                .and_then(|n| n.strip_suffix(".partial"))
                .and_then(|hex| format!("sha256:{hex}").parse().ok());
            out.push((digest, entry.path()));
        }
        Ok(out)
    }

    /// Verified blobs present.
    pub fn list(&self) -> io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Ok(digest) = format!("sha256:{name}").parse() {
                out.push(digest);
            }
        }
        Ok(out)
    }

    /// Deletes a verified blob; absent is fine.
    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// A download in progress: append bytes, then [`Ingest::commit`].
pub struct Ingest {
    digest: Digest,
    path: PathBuf,
    file: File,
    hasher: Hasher,
}

impl Ingest {
    /// Bytes already downloaded (where a resumed request starts).
    pub fn offset(&self) -> u64 {
        self.hasher.len()
    }

    /// Throws away what was downloaded (the registry ignored the range
    /// request and sends the whole blob again).
    pub fn restart(&mut self) -> Result<(), BlobError> {
        self.file.set_len(0).map_err(|source| BlobError::Io {
            digest: self.digest.clone(),
            context: "truncating the partial download",
            source,
        })?;
        self.hasher = Hasher::default();
        Ok(())
    }

    /// Appends downloaded bytes, refusing to grow past `limit`.
    pub fn append(&mut self, bytes: &[u8], limit: u64) -> Result<(), BlobError> {
        let total = self.hasher.len() + bytes.len() as u64;
        if total > limit {
            return Err(BlobError::SizeMismatch {
                digest: self.digest.clone(),
                expected: limit,
                actual: total,
            });
        }
        self.file.write_all(bytes).map_err(|source| BlobError::Io {
            digest: self.digest.clone(),
            context: "writing the partial download",
            source,
        })?;
        self.hasher.update(bytes);
        Ok(())
    }

    /// Checks size and digest and moves the blob into place. On a mismatch
    /// the partial file is deleted (the next attempt starts afresh) and
    /// nothing enters the store.
    pub fn commit(self, blobs: &Blobs, expected_size: u64) -> Result<(), BlobError> {
        let size = self.hasher.len();
        let actual = self.hasher.clone().finish();
        let refused = if size != expected_size {
            Some(BlobError::SizeMismatch {
                digest: self.digest.clone(),
                expected: expected_size,
                actual: size,
            })
        } else if actual != self.digest {
            Some(BlobError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            })
        } else {
            None
        };
        if let Some(error) = refused {
            drop(self.file);
            let _ = fs::remove_file(&self.path);
            return Err(error);
        }
        let digest = self.digest.clone();
        let io = |context| {
            let digest = digest.clone();
            move |source| BlobError::Io {
                digest,
                context,
                source,
            }
        };
        self.file.sync_all().map_err(io("syncing"))?;
        let target = blobs.path(&self.digest);
        durable::rename(&self.path, &target).map_err(io("moving into the store"))?;
        make_read_only(&target).map_err(io("making read-only"))?;
        blobs.record(&self.digest);
        Ok(())
    }
}

fn make_read_only(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_refuses_mismatched_bytes_and_stores_matching_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::open(dir.path()).expect("open");
        let digest = Digest::of(b"config");
        assert!(matches!(
            blobs.put(&digest, b"other"),
            Err(BlobError::DigestMismatch { .. })
        ));
        assert!(!blobs.has(&digest));
        blobs.put(&digest, b"config").expect("put");
        assert_eq!(blobs.read(&digest).expect("read"), b"config");
        assert_eq!(blobs.list().expect("list"), vec![digest]);
    }

    #[test]
    fn ingest_resumes_from_what_is_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::open(dir.path()).expect("open");
        let data = b"0123456789abcdef".repeat(1000);
        let digest = Digest::of(&data);
        let mut first = blobs.ingest(&digest).expect("ingest");
        first
            .append(&data[..5000], data.len() as u64)
            .expect("append");
        drop(first); // the agent stops mid-download
        let mut second = blobs.ingest(&digest).expect("resume");
        assert_eq!(second.offset(), 5000);
        second
            .append(&data[5000..], data.len() as u64)
            .expect("append");
        second.commit(&blobs, data.len() as u64).expect("commit");
        assert_eq!(blobs.read(&digest).expect("read"), data);
        assert!(blobs.partials().expect("partials").is_empty());
    }

    #[test]
    fn corrupt_or_oversized_downloads_never_enter_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Blobs::open(dir.path()).expect("open");
        let digest = Digest::of(b"the real layer");
        let mut ingest = blobs.ingest(&digest).expect("ingest");
        assert!(matches!(
            ingest.append(b"far too many bytes for it", 14),
            Err(BlobError::SizeMismatch { .. })
        ));
        ingest.append(b"the fake layer", 14).expect("append");
        assert!(matches!(
            ingest.commit(&blobs, 14),
            Err(BlobError::DigestMismatch { .. })
        ));
        assert!(!blobs.has(&digest));
        assert!(blobs.partials().expect("partials").is_empty());
    }
}
