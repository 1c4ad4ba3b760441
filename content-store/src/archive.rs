//! Imports for air-gapped sites: an OCI image layout directory, the same
//! as a tarball (`oci-archive`), or a `docker save` tarball
//! (`docker-archive`). Every file is hashed as it is copied in; a blob
//! whose content does not match its name, a manifest that refers to a
//! missing blob, or a truncated tarball fails the import, and the blobs
//! the failed import added are removed again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::{info, warn};

use crate::digest::Digest;
use crate::error::{io, StoreError};
use crate::manifest::{Descriptor, Manifest, DOCKER_CONFIG, DOCKER_MANIFEST};
use crate::store::{parse_reference, ContentStore};

/// OCI annotation that carries a tag (or a whole reference) in an index.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Largest metadata file (index.json, manifest.json) read into memory.
const MAX_METADATA_BYTES: u64 = 8 << 20;

/// Names imported (with their top-level digests) and every blob they reach.
type Imported = (Vec<(String, Digest)>, BTreeSet<Digest>);

/// One file of the archive, as stored.
struct Staged {
    digest: Digest,
    size: u64,
    /// Contents, for small metadata files only.
    bytes: Option<Vec<u8>>,
}

/// One entry of docker's manifest.json.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl ContentStore {
    /// Imports an image layout directory or an oci-/docker-archive tarball.
    /// `repository` names the images whose index entries carry only a tag
    /// (default: `import/<file name>`). Returns each imported name and the
    /// digest it points at. Blocking.
    pub fn import(
        &self,
        path: &Path,
        repository: Option<&str>,
    ) -> Result<Vec<(String, Digest)>, StoreError> {
        // No garbage collection while this runs; only what this import
        // wrote is undone on failure (the agent may pull meanwhile).
        let _lock = self.lock(false)?;
        let _ = self.blobs().take_created();
        let result = self.import_staged(path, repository);
        let keep: BTreeSet<Digest> = match &result {
            Ok((_, reachable)) => reachable.clone(),
            Err(_) => BTreeSet::new(),
        };
        for digest in self.blobs().take_created() {
            if !keep.contains(&digest) {
                let _ = self.blobs().remove(&digest);
            }
        }
        let (names, _) = result?;
        for (name, digest) in &names {
            self.set_ref(name, digest)?;
        }
        info!(path = %path.display(), images = names.len(), "archive imported");
        Ok(names)
    }

    fn import_staged(&self, path: &Path, repository: Option<&str>) -> Result<Imported, StoreError> {
        let staged = if path.is_dir() {
            self.stage_dir(path)?
        } else {
            self.stage_tar(path)?
        };
        let archive_error = |reason: String| StoreError::Archive {
            path: path.to_path_buf(),
            reason,
        };
        let default_repository = match repository {
            Some(r) => r.to_string(),
            None => format!(
                "import/{}",
                path.file_stem()
                    .map(|s| s.to_string_lossy().to_lowercase())
                    .unwrap_or_else(|| "image".into())
            ),
        };
        let tops: Vec<(String, Digest)> = if let Some(index) = staged.get("index.json") {
            self.oci_tops(index, &default_repository)
                .map_err(archive_error)?
        } else if let Some(manifest) = staged.get("manifest.json") {
            self.docker_tops(manifest, &staged).map_err(archive_error)?
        } else {
            return Err(archive_error(
                "neither index.json (OCI layout) nor manifest.json (docker save) found".into(),
            ));
        };
        let mut reachable = BTreeSet::new();
        let mut names = Vec::new();
        for (name, top) in tops {
            let image = self.complete_image(&name, &top)?.ok_or_else(|| {
                archive_error(format!(
                    "{name} ({top}) refers to blobs the archive does not contain"
                ))
            })?;
            reachable.insert(top.clone());
            reachable.insert(image.digest.clone());
            for d in std::iter::once(&image.config_descriptor).chain(&image.layers) {
                let digest = d.digest().map_err(|e| archive_error(e.to_string()))?;
                let size = std::fs::metadata(self.blobs().path(&digest))
                    .map(|m| m.len())
                    .unwrap_or(0);
                if size != d.size {
                    return Err(archive_error(format!(
                        "{name}: blob {digest} is {size} bytes, its descriptor says {}",
                        d.size
                    )));
                }
                reachable.insert(digest);
            }
            if let Ok(Manifest::Index(entries)) = self.read_manifest(&name, &top) {
                for entry in entries {
                    if let Ok(d) = entry.digest() {
                        reachable.insert(d);
                    }
                }
            }
            names.push((name, top));
        }
        Ok((names, reachable))
    }

    /// Names and top-level digests listed by an OCI layout's index.json.
    fn oci_tops(&self, index: &Staged, repository: &str) -> Result<Vec<(String, Digest)>, String> {
        let bytes = index.bytes.as_deref().ok_or("index.json is too large")?;
        let Manifest::Index(entries) =
            Manifest::parse(bytes, None).map_err(|e| format!("index.json: {e}"))?
        else {
            return Err("index.json is not an image index".into());
        };
        let mut tops = Vec::new();
        for entry in entries {
            let digest = entry.digest().map_err(|e| e.to_string())?;
            let name = entry
                .annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .map(|tag| full_name(tag, repository))
                .unwrap_or_else(|| format!("{repository}@{digest}"));
            let name = parse_reference(&name).map_err(|e| e.to_string())?.whole();
            tops.push((name, digest));
        }
        Ok(tops)
    }

    /// Writes an OCI manifest for each image of a docker-archive.
    fn docker_tops(
        &self,
        manifest: &Staged,
        staged: &BTreeMap<String, Staged>,
    ) -> Result<Vec<(String, Digest)>, String> {
        let bytes = manifest
            .bytes
            .as_deref()
            .ok_or("manifest.json is too large")?;
        let entries: Vec<DockerEntry> =
            serde_json::from_slice(bytes).map_err(|e| format!("manifest.json: {e}"))?;
        let file = |name: &str| {
            staged.get(name.trim_start_matches("./")).ok_or_else(|| {
                format!("manifest.json names {name}, which the archive does not contain")
            })
        };
        let mut tops = Vec::new();
        for entry in entries {
            let config = file(&entry.config)?;
            let mut layers = Vec::new();
            for layer in &entry.layers {
                let staged = file(layer)?;
                layers.push(Descriptor {
                    media_type: self.layer_media_type(&staged.digest).to_string(),
                    digest: staged.digest.to_string(),
                    size: staged.size,
                    urls: None,
                    platform: None,
                    annotations: None,
                });
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": { "mediaType": DOCKER_CONFIG, "digest": config.digest.to_string(), "size": config.size },
                "layers": layers,
            });
            let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
            let digest = Digest::of(&bytes);
            self.put_blob("manifest.json", &digest, &bytes)
                .map_err(|e| e.to_string())?;
            let tags = entry.repo_tags.unwrap_or_default();
            if tags.is_empty() {
                warn!(%digest, "docker-archive image without RepoTags; imported by digest only");
                tops.push((format!("import/untagged@{digest}"), digest.clone()));
            }
            for tag in tags {
                let name = parse_reference(&tag).map_err(|e| e.to_string())?.whole();
                tops.push((name, digest.clone()));
            }
        }
        Ok(tops)
    }

    /// docker save writes plain tars, but some tools store them compressed.
    fn layer_media_type(&self, digest: &Digest) -> &'static str {
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(self.blobs().path(digest))
            .and_then(|mut f| f.read_exact(&mut magic));
        match (read, magic) {
            (Ok(()), [0x1f, 0x8b, ..]) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            (Ok(()), [0x28, 0xb5, 0x2f, 0xfd]) => "application/vnd.oci.image.layer.v1.tar+zstd",
            _ => "application/vnd.docker.image.rootfs.diff.tar",
        }
    }

    fn stage_dir(&self, dir: &Path) -> Result<BTreeMap<String, Staged>, StoreError> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files).map_err(io(format!("reading {}", dir.display())))?;
        let mut staged = BTreeMap::new();
        for (name, path) in files {
            let file =
                std::fs::File::open(&path).map_err(io(format!("opening {}", path.display())))?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.stage(dir, &name, file, size, &mut staged)?;
        }
        Ok(staged)
    }

    fn stage_tar(&self, path: &Path) -> Result<BTreeMap<String, Staged>, StoreError> {
        let file = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        let mut staged = BTreeMap::new();
        let tar_error = |e: std::io::Error| StoreError::Archive {
            path: path.to_path_buf(),
            reason: format!("not a readable tar archive: {e}"),
        };
        for entry in archive.entries().map_err(tar_error)? {
            let entry = entry.map_err(tar_error)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry
                .path()
                .map_err(tar_error)?
                .to_string_lossy()
                .into_owned();
            let name = name.trim_start_matches("./").to_string();
            let size = entry.header().size().map_err(tar_error)?;
            self.stage(path, &name, entry, size, &mut staged)?;
        }
        Ok(staged)
    }

    /// Copies one file into the blob store (and keeps small metadata in
    /// memory); a file named `blobs/sha256/<hex>` must hash to `<hex>`.
    fn stage(
        &self,
        archive: &Path,
        name: &str,
        mut reader: impl Read,
        size: u64,
        staged: &mut BTreeMap<String, Staged>,
    ) -> Result<(), StoreError> {
        let archive_error = |reason: String| StoreError::Archive {
            path: archive.to_path_buf(),
            reason,
        };
        let bytes =
            if size <= MAX_METADATA_BYTES && (name.ends_with(".json") || name == "oci-layout") {
                let mut bytes = Vec::new();
                reader
                    .read_to_end(&mut bytes)
                    .map_err(|e| archive_error(format!("{name}: {e}")))?;
                Some(bytes)
            } else {
                None
            };
        let (digest, stored) = match &bytes {
            Some(bytes) => {
                let digest = Digest::of(bytes);
                self.put_blob(name, &digest, bytes)?;
                (digest, bytes.len() as u64)
            }
            None => self
                .blobs()
                .put_reader(reader)
                .map_err(|e| archive_error(format!("{name}: {e}")))?,
        };
        if stored != size {
            return Err(archive_error(format!(
                "{name}: {stored} bytes read, {size} expected (truncated?)"
            )));
        }
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            if hex != digest.hex() {
                return Err(archive_error(format!("{name} hashes to {digest}; refused")));
            }
        }
        staged.insert(
            name.to_string(),
            Staged {
                digest,
                size,
                bytes,
            },
        );
        Ok(())
    }
}

/// `tag` -> `repository:tag`; a whole reference is kept as it is.
fn full_name(tag: &str, repository: &str) -> String {
    if tag.contains('/') || tag.contains('@') {
        tag.to_string()
    } else {
        format!("{repository}:{tag}")
    }
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(base, &entry.path(), out)?;
        } else if kind.is_file() {
            let name = entry
                .path()
                .strip_prefix(base)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((name, entry.path()));
        }
    }
    Ok(())
}
