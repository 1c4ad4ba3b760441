//! Names of images in the store: `registry/repository:tag` (normalised,
//! e.g. `docker.io/library/busybox:latest`) -> the digest of the manifest
//! (or index) the name pointed at when it was last pulled or imported.
//! Imported names are pinned: garbage collection keeps their images even
//! when no workload wants them yet (an air-gapped site imports first and
//! deploys later).
//!
//! Kept in one small JSON file, read afresh on every lookup and changed
//! under an exclusive lock (`refs.lock`) with an atomic rewrite, so the
//! agent and an `edge-agent import` run beside it never lose each other's
//! names.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::digest::Digest;
use crate::durable;

/// The name table of a store.
#[derive(Debug, Clone)]
pub struct Refs {
    path: PathBuf,
    lock: PathBuf,
}

/// One name's entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Entry {
    digest: String,
    #[serde(default)]
    pinned: bool,
}

type Names = BTreeMap<String, Entry>;

impl Refs {
    /// The table under `root` (`refs.json`; absent means empty). Checks it
    /// can be read.
    pub fn load(root: &Path) -> io::Result<Refs> {
        let refs = Refs {
            path: root.join("refs.json"),
            lock: root.join("refs.lock"),
        };
        refs.read()?;
        Ok(refs)
    }

    fn read(&self) -> io::Result<Names> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Names::new()),
            Err(e) => Err(e),
        }
    }

    /// Reads, changes and rewrites the table under the lock.
    fn update<T>(&self, change: impl FnOnce(&mut Names) -> T) -> io::Result<T> {
        let file = File::create(&self.lock)?;
        let _guard = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        let mut names = self.read()?;
        let before = names.clone();
        let result = change(&mut names);
        if names != before {
            let bytes = serde_json::to_vec_pretty(&names)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            durable::write_file(&self.path, &bytes)?;
        }
        Ok(result)
    }

    /// The digest a name points at.
    pub fn get(&self, name: &str) -> Option<Digest> {
        self.read()
            .ok()?
            .get(name)
            .and_then(|e| e.digest.parse().ok())
    }

    /// Points `name` at `digest` (persisted before returning); `pinned`
    /// names survive garbage collection. A pull never unpins a name.
    pub fn set(&self, name: &str, digest: &Digest, pinned: bool) -> io::Result<()> {
        self.update(|names| {
            let pinned = pinned || names.get(name).is_some_and(|e| e.pinned);
            names.insert(
                name.to_string(),
                Entry {
                    digest: digest.to_string(),
                    pinned,
                },
            );
        })
    }

    /// Whether `name` was imported (pinned).
    pub fn is_pinned(&self, name: &str) -> bool {
        self.read()
            .ok()
            .and_then(|names| names.get(name).map(|e| e.pinned))
            .unwrap_or(false)
    }

    /// Every name and its digest.
    pub fn all(&self) -> Vec<(String, Option<Digest>)> {
        self.read()
            .unwrap_or_default()
            .into_iter()
            .map(|(name, e)| (name, e.digest.parse().ok()))
            .collect()
    }

    /// Digests of the pinned names; an unreadable table is an error (a
    /// collector that saw no names would delete everything).
    pub fn pinned(&self) -> io::Result<Vec<Digest>> {
        Ok(self
            .read()?
            .into_values()
            .filter(|e| e.pinned)
            .filter_map(|e| e.digest.parse().ok())
            .collect())
    }

    /// Every name and its digest, or the error reading the table.
    pub fn try_all(&self) -> io::Result<Vec<(String, Option<Digest>)>> {
        Ok(self
            .read()?
            .into_iter()
            .map(|(name, e)| (name, e.digest.parse().ok()))
            .collect())
    }

    /// Drops unpinned names whose digest `keep` rejects (persisted);
    /// returns how many. Pinned names stay (one may have been imported
    /// while the caller decided what to keep).
    pub fn retain(&self, mut keep: impl FnMut(&Digest) -> bool) -> io::Result<usize> {
        self.update(|names| {
            let before = names.len();
            names.retain(|_, e| {
                e.pinned
                    || e.digest
                        .parse::<Digest>()
                        .map(|d| keep(&d))
                        .unwrap_or(false)
            });
            before - names.len()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_handles_see_and_keep_each_others_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = Refs::load(dir.path()).expect("load");
        let import = Refs::load(dir.path()).expect("load");
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        agent.set("docker.io/library/a:v1", &a, false).expect("set");
        import.set("docker.io/library/b:v1", &b, true).expect("set");
        agent
            .set("docker.io/library/b:v1", &b, false)
            .expect("pull again");
        assert_eq!(
            agent.pinned().expect("pinned"),
            vec![b.clone()],
            "a pull never unpins"
        );
        assert_eq!(agent.get("docker.io/library/b:v1"), Some(b.clone()));
        assert_eq!(agent.all().len(), 2);
        assert_eq!(import.retain(|d| *d == b).expect("retain"), 1);
        assert_eq!(agent.get("docker.io/library/a:v1"), None);
    }
}
