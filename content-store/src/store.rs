//! The content store: pull or import images and artifacts, resolve names
//! without the network, unpack image root filesystems once, collect garbage.
//!
//! On disk under its root:
//! ```text
//! blobs/sha256/<hex>      verified blobs (manifests, configs, layers, artifacts)
//! ingest/                 downloads in progress (resumed after a restart)
//! refs.json               name -> manifest digest
//! images/<hex>/rootfs     unpacked root filesystem of image manifest <hex>
//! tmp/                    scratch space, emptied when the store opens
//! ```

use std::path::{Path, PathBuf};

use oci_client::Reference;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::blobs::Blobs;
use crate::digest::Digest;
use crate::error::{io, StoreError};
use crate::manifest::{Descriptor, ImageConfig, Manifest, Platform};
use crate::refs::Refs;
use crate::registry::{Registries, RegistryOptions};
use crate::unpack::{self, Compression, Limits};

/// A resolved image: its manifest digest, manifest and config.
#[derive(Debug, Clone)]
pub struct Image {
    /// Digest of the platform-specific image manifest.
    pub digest: Digest,
    /// Config blob descriptor.
    pub config_descriptor: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
    /// The parsed config (for artifacts that are not images, often empty).
    pub config: ImageConfig,
}

/// Where the store lives and how it reaches registries.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Root directory.
    pub root: PathBuf,
    /// Registry access.
    pub registries: RegistryOptions,
    /// Platform whose manifest is picked from multi-platform indexes.
    pub platform: Platform,
    /// Bounds on what one layer may unpack to.
    pub unpack_limits: Limits,
}

impl StoreOptions {
    /// Defaults for a store at `root`: no registry settings, this host's platform.
    pub fn at(root: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions {
            root: root.into(),
            registries: RegistryOptions::default(),
            platform: Platform::host(),
            unpack_limits: Limits::default(),
        }
    }
}

/// The content store.
pub struct ContentStore {
    root: PathBuf,
    blobs: Blobs,
    refs: Refs,
    registries: Registries,
    platform: Platform,
    limits: Limits,
}

/// Normalised name and pinned digest of a reference string.
pub(crate) fn parse_reference(reference: &str) -> Result<Reference, StoreError> {
    Reference::try_from(reference).map_err(|e| StoreError::Reference {
        reference: reference.to_string(),
        reason: e.to_string(),
    })
}

impl ContentStore {
    /// Opens (creating) the store and clears scratch space left by a crash.
    pub fn open(options: StoreOptions) -> Result<ContentStore, StoreError> {
        let root = options.root;
        std::fs::create_dir_all(root.join("images"))
            .map_err(io(format!("creating {}", root.display())))?;
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io("creating tmp/"))?;
        clear_dead_scratch(&tmp).map_err(io("clearing tmp/"))?;
        let blobs = Blobs::open(&root).map_err(io("opening blobs/"))?;
        let refs = Refs::load(&root).map_err(io("loading refs.json"))?;
        let registries =
            Registries::new(options.registries).map_err(|source| StoreError::Registry {
                reference: "(configuration)".into(),
                source,
            })?;
        Ok(ContentStore {
            root,
            blobs,
            refs,
            registries,
            platform: options.platform,
            limits: options.unpack_limits,
        })
    }

    fn refs(&self) -> &Refs {
        &self.refs
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Blob bytes this store received from registries since it was opened.
    pub fn bytes_downloaded(&self) -> u64 {
        self.registries.bytes_received()
    }

    /// The blobs.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Makes `reference` available locally and returns its image. A
    /// digest-pinned reference that is complete in the store never touches
    /// the network; a tag is looked up in the registry, and when the
    /// registry cannot be reached the last pulled digest of that tag is
    /// used (with a warning) so a box keeps working offline.
    pub async fn ensure(&self, reference: &str) -> Result<Image, StoreError> {
        let parsed = parse_reference(reference)?;
        // A digest names fixed content; an imported tag is what the
        // operator put here for an air-gapped site: neither needs the
        // registry while the store holds it.
        if parsed.digest().is_some() || self.refs().is_pinned(&parsed.whole()) {
            if let Some(image) = self.resolve_local(reference)? {
                debug!(
                    reference,
                    "in the store (by digest or imported); the registry is not asked"
                );
                return Ok(image);
            }
        }
        let span = info_span!("pull", reference = %parsed.whole());
        match self.pull(&parsed).instrument(span).await {
            Ok(image) => Ok(image),
            Err(e @ StoreError::Registry { .. }) if parsed.digest().is_none() => {
                match self.resolve_local(reference)? {
                    Some(image) => {
                        warn!(reference, error = %e, digest = %image.digest,
                            "registry unreachable; using the copy pulled earlier");
                        Ok(image)
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The image a reference names, from the store alone; `None` when it is
    /// not (completely) there.
    pub fn resolve_local(&self, reference: &str) -> Result<Option<Image>, StoreError> {
        let parsed = parse_reference(reference)?;
        let top = match parsed.digest() {
            Some(d) => d.parse().map_err(|source| StoreError::Digest {
                reference: reference.to_string(),
                source,
            })?,
            None => match self.refs().get(&parsed.whole()) {
                Some(d) => d,
                None => return Ok(None),
            },
        };
        self.complete_image(reference, &top)
    }

    /// Walks from a top-level manifest to this platform's image and checks
    /// every blob is present.
    pub(crate) fn complete_image(
        &self,
        reference: &str,
        top: &Digest,
    ) -> Result<Option<Image>, StoreError> {
        if !self.blobs.has(top) {
            return Ok(None);
        }
        let manifest = self.read_manifest(reference, top)?;
        let (digest, manifest) = match manifest {
            Manifest::Index(entries) => {
                let entry = self.pick_platform(reference, &entries)?;
                let digest = self.descriptor_digest(reference, entry)?;
                if !self.blobs.has(&digest) {
                    return Ok(None);
                }
                let manifest = self.read_manifest(reference, &digest)?;
                (digest, manifest)
            }
            image => (top.clone(), image),
        };
        let Manifest::Image { config, layers } = manifest else {
            return Err(StoreError::Mismatch {
                reference: reference.to_string(),
                what: format!("{digest} is an index inside an index"),
            });
        };
        for d in std::iter::once(&config).chain(&layers) {
            if !self.blobs.has(&self.descriptor_digest(reference, d)?) {
                return Ok(None);
            }
        }
        let config_digest = self.descriptor_digest(reference, &config)?;
        let config_bytes = self.read_blob(reference, &config_digest)?;
        let image_config = if is_image_config(&config.media_type) {
            ImageConfig::parse(&config_bytes).map_err(|source| StoreError::Manifest {
                reference: reference.to_string(),
                source,
            })?
        } else {
            ImageConfig::default()
        };
        Ok(Some(Image {
            digest,
            config_descriptor: config,
            layers,
            config: image_config,
        }))
    }

    async fn pull(&self, reference: &Reference) -> Result<Image, StoreError> {
        let name = reference.whole();
        let registry = |source| StoreError::Registry {
            reference: name.clone(),
            source,
        };
        let (bytes, top) = self
            .registries
            .manifest(reference)
            .await
            .map_err(registry)?;
        if let Some(pinned) = reference.digest() {
            if pinned != top.to_string() {
                return Err(StoreError::Mismatch {
                    reference: name,
                    what: format!("registry sent a manifest hashing to {top}"),
                });
            }
        }
        let manifest = Manifest::parse(&bytes, None).map_err(|source| StoreError::Manifest {
            reference: name.clone(),
            source,
        })?;
        let image_manifest = match &manifest {
            Manifest::Index(entries) => {
                let entry = self.pick_platform(&name, entries)?;
                let digest = self.descriptor_digest(&name, entry)?;
                let child = reference.clone_with_digest(digest.to_string());
                let (child_bytes, child_digest) =
                    self.registries.manifest(&child).await.map_err(registry)?;
                if child_digest != digest || child_bytes.len() as u64 != entry.size {
                    return Err(StoreError::Mismatch {
                        reference: name,
                        what: format!("index entry {digest} ({} bytes) does not match the manifest sent ({child_digest}, {} bytes)", entry.size, child_bytes.len()),
                    });
                }
                let parsed =
                    Manifest::parse(&child_bytes, Some(&entry.media_type)).map_err(|source| {
                        StoreError::Manifest {
                            reference: name.clone(),
                            source,
                        }
                    })?;
                self.put_blob(&name, &digest, &child_bytes)?;
                parsed
            }
            image => image.clone(),
        };
        self.put_blob(&name, &top, &bytes)?;
        let Manifest::Image { config, layers } = &image_manifest else {
            return Err(StoreError::Mismatch {
                reference: name,
                what: "an index inside an index".into(),
            });
        };
        for descriptor in std::iter::once(config).chain(layers) {
            let digest = self.descriptor_digest(&name, descriptor)?;
            if self.blobs.has(&digest) {
                continue;
            }
            self.registries
                .blob(reference, &digest, descriptor.size, &self.blobs)
                .await
                .map_err(registry)?;
        }
        if reference.digest().is_none() {
            self.refs()
                .set(&name, &top, false)
                .map_err(io("writing refs.json"))?;
        }
        let image = self
            .complete_image(&name, &top)?
            .ok_or_else(|| StoreError::NotFound {
                reference: name.clone(),
            })?;
        info!(digest = %image.digest, layers = image.layers.len(), "pulled");
        Ok(image)
    }

    /// Records a pinned name for a top-level digest (archive imports).
    pub(crate) fn set_ref(&self, name: &str, digest: &Digest) -> Result<(), StoreError> {
        self.refs()
            .set(name, digest, true)
            .map_err(io("writing refs.json"))
    }

    pub(crate) fn put_blob(
        &self,
        reference: &str,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.blobs
            .put(digest, bytes)
            .map_err(|source| StoreError::Blob {
                reference: reference.to_string(),
                source,
            })
    }

    fn read_blob(&self, reference: &str, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        self.blobs.read(digest).map_err(|source| StoreError::Blob {
            reference: reference.to_string(),
            source,
        })
    }

    pub(crate) fn read_manifest(
        &self,
        reference: &str,
        digest: &Digest,
    ) -> Result<Manifest, StoreError> {
        let bytes = self.read_blob(reference, digest)?;
        Manifest::parse(&bytes, None).map_err(|source| StoreError::Manifest {
            reference: reference.to_string(),
            source,
        })
    }

    fn descriptor_digest(&self, reference: &str, d: &Descriptor) -> Result<Digest, StoreError> {
        d.digest().map_err(|source| StoreError::Digest {
            reference: reference.to_string(),
            source,
        })
    }

    fn pick_platform<'a>(
        &self,
        reference: &str,
        entries: &'a [Descriptor],
    ) -> Result<&'a Descriptor, StoreError> {
        entries
            .iter()
            .find(|e| {
                e.platform
                    .as_ref()
                    .is_some_and(|p| self.platform.accepts(p))
            })
            .ok_or_else(|| StoreError::NoPlatform {
                reference: reference.to_string(),
                platform: self.platform.to_string(),
                available: entries
                    .iter()
                    .filter_map(|e| e.platform.as_ref().map(|p| p.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The unpacked root filesystem of an image, unpacking it on first use
    /// (into scratch space, flushed to disk, renamed into place, then marked
    /// `complete`: a tree without the mark, e.g. after a power cut, is
    /// unpacked again). Blocking: call it off the async executor.
    pub fn rootfs(&self, image: &Image) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("images").join(image.digest.hex());
        let rootfs = dir.join("rootfs");
        let complete = dir.join("complete");
        if complete.is_file() && rootfs.is_dir() {
            return Ok(rootfs);
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io("removing an incomplete unpack"))?;
        }
        let scratch = self.scratch_dir(&format!("unpack-{}", &image.digest.hex()[..12]))?;
        let result = self.unpack_into(image, &scratch);
        let result = result.and_then(|()| {
            // Every file of the tree on disk before the rename makes it
            // visible (the unpacker writes without fsync).
            let tree = std::fs::File::open(&scratch).map_err(io("opening the unpacked tree"))?;
            nix::unistd::syncfs(&tree).map_err(|e| io("syncing the unpacked tree")(e.into()))?;
            std::fs::create_dir_all(&dir).map_err(io("creating images/<digest>"))?;
            crate::durable::rename(&scratch, &rootfs)
                .map_err(io("moving the unpacked rootfs into place"))?;
            crate::durable::write_file(&complete, image.digest.to_string().as_bytes())
                .map_err(io("marking the unpack complete"))
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&scratch);
        }
        result.map(|()| rootfs)
    }

    fn unpack_into(&self, image: &Image, target: &Path) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        for layer in &image.layers {
            let digest = self.descriptor_digest(&image.digest.to_string(), layer)?;
            let unpack_error = |source| StoreError::Unpack {
                image: image.digest.clone(),
                layer: digest.clone(),
                source,
            };
            let compression =
                Compression::from_media_type(&layer.media_type).map_err(unpack_error)?;
            let file = std::fs::File::open(self.blobs.path(&digest))
                .map_err(io(format!("opening layer {digest}")))?;
            let stats = unpack::apply_layer(
                std::io::BufReader::new(file),
                compression,
                target,
                &self.limits,
            )
            .map_err(|source| StoreError::Unpack {
                image: image.digest.clone(),
                layer: digest.clone(),
                source,
            })?;
            debug!(%digest, files = stats.files, bytes = stats.bytes, "layer applied");
        }
        info!(image = %image.digest, layers = image.layers.len(),
            ms = started.elapsed().as_millis() as u64, "root filesystem unpacked");
        Ok(())
    }

    /// A fresh directory under tmp/.
    pub(crate) fn scratch_dir(&self, prefix: &str) -> Result<PathBuf, StoreError> {
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).map_err(|e| StoreError::Io {
            context: "random scratch name".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let dir = self
            .root
            .join("tmp")
            .join(format!("{prefix}-{}", hex::encode(random)));
        std::fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(dir)
    }

    /// The file of a single-blob artifact (kernel, disk image): the one
    /// layer of its manifest.
    pub fn artifact_file(&self, image: &Image) -> Result<PathBuf, StoreError> {
        match image.layers.as_slice() {
            [layer] => Ok(self
                .blobs
                .path(&self.descriptor_digest(&image.digest.to_string(), layer)?)),
            layers => Err(StoreError::Mismatch {
                reference: image.digest.to_string(),
                what: format!(
                    "an artifact has exactly one layer, this has {}",
                    layers.len()
                ),
            }),
        }
    }

    /// Names in the store and the digests they point at.
    pub fn names(&self) -> Vec<(String, Option<Digest>)> {
        self.refs().all()
    }

    /// Holds `store.lock`: shared by imports (another process may import
    /// while the agent runs), exclusive for garbage collection, so a
    /// collection never deletes the blobs of an import that has not named
    /// them yet.
    pub(crate) fn lock(
        &self,
        exclusive: bool,
    ) -> Result<nix::fcntl::Flock<std::fs::File>, StoreError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("store.lock"))
            .map_err(io("opening store.lock"))?;
        let how = if exclusive {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockShared
        };
        nix::fcntl::Flock::lock(file, how)
            .map_err(|(_, errno)| io("locking store.lock")(errno.into()))
    }

    /// Top-level digests of pinned (imported) names.
    pub(crate) fn pinned(&self) -> Result<Vec<Digest>, StoreError> {
        self.refs().pinned().map_err(io("reading refs.json"))
    }

    /// Names and digests, failing when the table cannot be read.
    pub(crate) fn names_checked(&self) -> Result<Vec<(String, Option<Digest>)>, StoreError> {
        self.refs().try_all().map_err(io("reading refs.json"))
    }

    pub(crate) fn refs_retain(
        &self,
        keep: impl FnMut(&Digest) -> bool,
    ) -> Result<usize, StoreError> {
        self.refs().retain(keep).map_err(io("writing refs.json"))
    }
}

/// Scratch space is per process (`tmp/<pid>/`): an `edge-agent import` run
/// beside the agent must not clear the agent's unpack in progress. What a
/// process that is gone left behind is removed.
fn clear_dead_scratch(tmp: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(tmp)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let alive = name
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

fn is_image_config(media_type: &str) -> bool {
    media_type == crate::manifest::OCI_CONFIG || media_type == crate::manifest::DOCKER_CONFIG
}
