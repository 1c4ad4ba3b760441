//! Names of images in the store: `registry/repository:tag` (normalised,
//! e.g. `docker.io/library/busybox:latest`) -> the digest of the manifest
//! (or index) the name pointed at when it was last pulled or imported.
//! Kept in one small JSON file rewritten atomically.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::durable;

/// The name table.
#[derive(Debug)]
pub struct Refs {
    path: PathBuf,
    names: BTreeMap<String, String>,
}

impl Refs {
    /// Loads `refs.json` under `root` (empty when absent).
    pub fn load(root: &Path) -> io::Result<Refs> {
        let path = root.join("refs.json");
        let names = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Refs { path, names })
    }

    /// The digest a name points at.
    pub fn get(&self, name: &str) -> Option<Digest> {
        self.names.get(name).and_then(|d| d.parse().ok())
    }

    /// Points `name` at `digest` (persisted before returning).
    pub fn set(&mut self, name: &str, digest: &Digest) -> io::Result<()> {
        if self.names.get(name) == Some(&digest.to_string()) {
            return Ok(());
        }
        self.names.insert(name.to_string(), digest.to_string());
        self.save()
    }

    /// Every name and its digest.
    pub fn all(&self) -> impl Iterator<Item = (&str, Option<Digest>)> {
        self.names
            .iter()
            .map(|(name, digest)| (name.as_str(), digest.parse().ok()))
    }

    /// Drops names whose digest `keep` rejects (persisted).
    pub fn retain(&mut self, mut keep: impl FnMut(&Digest) -> bool) -> io::Result<usize> {
        let before = self.names.len();
        self.names
            .retain(|_, d| d.parse::<Digest>().map(|d| keep(&d)).unwrap_or(false));
        let removed = before - self.names.len();
        if removed > 0 {
            self.save()?;
        }
        Ok(removed)
    }

    fn save(&self) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.names)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        durable::write_file(&self.path, &bytes)
    }
}
