//! The controller's Ed25519 signing key: a file holding the hex seed, mode 0600,
//! created on first start.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use mecvisor_protocol::envelope::{
    generate_signing_key, signing_key_from_hex, signing_key_to_hex, KeyError,
};

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "signing.key";

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// Reading or writing the key file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file holds something that is not a key.
    #[error("key file {path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        source: KeyError,
    },
}

/// Loads the signing key from `data_dir/signing.key`, creating the directory
/// and a fresh key (mode 0600) if there is none.
pub fn load_or_create(data_dir: &Path) -> Result<SigningKey, SignerError> {
    let path = data_dir.join(KEY_FILE);
    let io = |action, source| SignerError::Io {
        action,
        path: path.clone(),
        source,
    };
    fs::create_dir_all(data_dir).map_err(|e| io("creating the directory of", e))?;
    match fs::read_to_string(&path) {
        Ok(text) => {
            let meta = fs::metadata(&path).map_err(|e| io("reading", e))?;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "signing key is readable by others; restricting it to mode 0600");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(|e| io("restricting the permissions of", e))?;
            }
            signing_key_from_hex(&text).map_err(|source| SignerError::Key {
                path: path.clone(),
                source,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_signing_key().map_err(|source| SignerError::Key {
                path: path.clone(),
                source,
            })?;
            let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io("creating", e))?;
            file.write_all(format!("{}\n", signing_key_to_hex(&key)).as_bytes())
                .map_err(|e| io("writing", e))?;
            file.sync_all().map_err(|e| io("syncing", e))?;
            fs::rename(&tmp, &path).map_err(|e| io("installing", e))?;
            if let Ok(dir) = fs::File::open(data_dir) {
                // Best effort: makes the rename durable on filesystems that need it.
                let _ = dir.sync_all();
            }
            tracing::info!(path = %path.display(), "created a new controller signing key");
            Ok(key)
        }
        Err(e) => Err(io("reading", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_with_mode_0600_then_loads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
    }

    #[test]
    fn refuses_a_garbage_key_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        fs::set_permissions(dir.path().join(KEY_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(SignerError::Key { .. })
        ));
    }
}
