//! The content-addressed store behind every image artifact.
//!
//! Blobs live in `target/images/cas/sha256/<hex>`, named by the SHA-256 of
//! their bytes and never changed once written. A recipe's output is found
//! again through its *key*: the SHA-256 of everything the recipe reads (its
//! name, the recipe files, the digests of its inputs). `keys/<key>` holds the
//! digests of the outputs, so a second build with unchanged inputs only checks
//! that those blobs are still there.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The code that turns inputs into image files.
const RECIPE_CODE: &[&str] = &[
    include_str!("boot.rs"),
    include_str!("kernel.rs"),
    include_str!("oci.rs"),
    include_str!("tree.rs"),
];

/// A SHA-256 digest as 64 lowercase hex digits.
pub type Digest256 = String;

/// The store: a blob directory and a recipe-key directory.
pub struct Cas {
    root: PathBuf,
}

/// Builds a recipe key from named parts, in the order given.
#[derive(Default)]
pub struct KeyBuilder {
    hasher: Sha256,
}

impl KeyBuilder {
    /// A key for the recipe `name`. The source of the image code itself is
    /// part of every key, so a change to how images are made rebuilds them
    /// (no version number to forget to bump).
    pub fn new(name: &str) -> Self {
        let mut builder = KeyBuilder::default();
        builder.part("recipe", name.as_bytes());
        for source in RECIPE_CODE {
            builder.part("code", source.as_bytes());
        }
        builder
    }

    /// Adds one named input (length-prefixed, so parts cannot run together).
    pub fn part(&mut self, label: &str, bytes: &[u8]) -> &mut Self {
        for piece in [label.as_bytes(), bytes] {
            self.hasher.update((piece.len() as u64).to_le_bytes());
            self.hasher.update(piece);
        }
        self
    }

    /// The finished key.
    pub fn finish(&self) -> Digest256 {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl Cas {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        for dir in ["cas/sha256", "keys", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        Ok(Cas {
            root: root.to_path_buf(),
        })
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("cas/sha256").join(digest)
    }

    /// Stores `bytes`; returns their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest256> {
        let digest = hex::encode(Sha256::digest(bytes));
        if !self.check(&digest, "blob")? {
            let tmp = self.temp_path(&digest);
            write_synced(&tmp, bytes)?;
            self.commit(&tmp, &digest)?;
        }
        Ok(digest)
    }

    /// Moves the file at `path` into the store; returns its digest. When
    /// `expected` is given, a file with another digest is refused (and left
    /// where it was).
    pub fn put_file(&self, path: &Path, expected: Option<&str>) -> Result<Digest256> {
        let digest = sha256_file(path)?;
        if let Some(expected) = expected {
            if expected != digest {
                bail!(
                    "{} has sha256 {digest}, expected {expected}; refusing it",
                    path.display()
                );
            }
        }
        if self.check(&digest, "blob")? {
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        } else {
            self.commit(path, &digest)?;
        }
        Ok(digest)
    }

    /// True when the blob is stored *and* its bytes still hash to its name.
    /// A corrupt blob is removed (so it is fetched or built again) and named
    /// in a message; it is never used.
    pub fn check(&self, digest: &str, what: &str) -> Result<bool> {
        let path = self.blob_path(digest);
        if !path.is_file() {
            return Ok(false);
        }
        let actual = sha256_file(&path)?;
        if actual == digest {
            return Ok(true);
        }
        println!(
            "images: cached {what} {} is corrupt (its sha256 is {actual}); removing it and rebuilding",
            path.display()
        );
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        Ok(false)
    }

    /// The outputs recorded for a recipe key, if every one is still stored
    /// intact (see [`Cas::check`]).
    pub fn lookup(&self, key: &str) -> Result<Option<BTreeMap<String, Digest256>>> {
        let Ok(text) = std::fs::read_to_string(self.root.join("keys").join(key)) else {
            return Ok(None);
        };
        let Ok(outputs) = serde_json::from_str::<BTreeMap<String, Digest256>>(&text) else {
            println!("images: recipe record {key} is unreadable; rebuilding");
            return Ok(None);
        };
        for (name, digest) in &outputs {
            if !self.check(digest, name)? {
                return Ok(None);
            }
        }
        Ok(Some(outputs))
    }

    /// Records the outputs of a recipe key.
    pub fn record(&self, key: &str, outputs: &BTreeMap<String, Digest256>) -> Result<()> {
        let tmp = self.temp_path(key);
        write_synced(&tmp, serde_json::to_string_pretty(outputs)?.as_bytes())?;
        let path = self.root.join("keys").join(key);
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// A fresh scratch path inside the store's filesystem (for atomic renames).
    pub fn temp_path(&self, hint: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        self.root
            .join("tmp")
            .join(format!("{hint}.{}.{nanos}", std::process::id()))
    }

    fn commit(&self, from: &Path, digest: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let to = self.blob_path(digest);
        std::fs::set_permissions(from, std::fs::Permissions::from_mode(0o444))
            .with_context(|| format!("chmod {}", from.display()))?;
        std::fs::rename(from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))
    }
}

/// SHA-256 of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<Digest256> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes a file and fsyncs it, so a blob is never half there after a crash.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_named_by_their_digest_and_keys_find_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let digest = cas.put_bytes(b"abc").unwrap();
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(std::fs::read(cas.blob_path(&digest)).unwrap(), b"abc");

        let key = KeyBuilder::new("r").part("in", b"x").finish();
        assert!(cas.lookup(&key).unwrap().is_none());
        let outputs = BTreeMap::from([("out".to_string(), digest.clone())]);
        cas.record(&key, &outputs).unwrap();
        assert_eq!(cas.lookup(&key).unwrap(), Some(outputs));

        // A key whose blob vanished is a miss, not a broken artifact.
        std::fs::remove_file(cas.blob_path(&digest)).unwrap();
        assert!(cas.lookup(&key).unwrap().is_none());
    }

    #[test]
    fn a_corrupt_blob_is_removed_and_never_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let digest = cas.put_bytes(b"kernel bytes").unwrap();
        let key = KeyBuilder::new("r").finish();
        let outputs = BTreeMap::from([("kernel".to_string(), digest.clone())]);
        cas.record(&key, &outputs).unwrap();
        let path = cas.blob_path(&digest);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&path, b"kernel bytes, flipped").unwrap();

        assert!(cas.lookup(&key).unwrap().is_none(), "corrupt blob used");
        assert!(!path.exists(), "corrupt blob kept");
        // Stored again, the same bytes make the key whole again.
        cas.put_bytes(b"kernel bytes").unwrap();
        assert_eq!(cas.lookup(&key).unwrap(), Some(outputs));
    }

    #[test]
    fn key_parts_do_not_run_together() {
        let a = KeyBuilder::new("r").part("a", b"bc").finish();
        let b = KeyBuilder::new("r").part("ab", b"c").finish();
        assert_ne!(a, b);
        assert_ne!(a, KeyBuilder::new("s").part("a", b"bc").finish());
    }

    #[test]
    fn a_file_with_the_wrong_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path()).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        let err = cas.put_file(&file, Some(&"0".repeat(64))).unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");
        assert!(file.exists());
    }
}
