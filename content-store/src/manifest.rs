//! The JSON documents of an image: manifests, indexes (multi-platform
//! image lists) and image configs, in their OCI and Docker v2 forms.
//! Everything here comes from a registry or an archive, so it is parsed
//! strictly and size-bounded, and every digest is checked for form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestError};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker v2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Media types asked for when fetching a manifest.
pub const ACCEPTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Largest manifest accepted (the distribution spec lets registries stop at 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: usize = 8 << 20;

/// Why a manifest or config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("{what} is not valid: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Larger than the bound.
    #[error("{what} is {size} bytes, more than the {limit} accepted")]
    TooLarge {
        /// Which document.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// schemaVersion other than 2 (schema 1 is long deprecated).
    #[error("manifest schemaVersion {0} is not supported (only 2)")]
    SchemaVersion(u32),
    /// A media type the store does not handle.
    #[error("unknown manifest media type `{0}`")]
    UnknownMediaType(String),
    /// Neither layers nor manifests: not something the store can use.
    #[error("manifest has neither `layers` nor `manifests`")]
    Empty,
    /// A descriptor's digest is malformed.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A reference from one document to a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    pub media_type: String,
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Alternative download locations (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// For index entries: the platform of the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Free-form annotations (e.g. the tag in an OCI layout's index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    /// The parsed digest.
    pub fn digest(&self) -> Result<Digest, DigestError> {
        self.digest.parse()
    }
}

/// OS and CPU a manifest is built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `linux`, ...
    pub os: String,
    /// `v8` for arm64, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, in OCI's names.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            variant: None,
        }
    }

    /// Whether an index entry's platform can run here (a missing variant matches).
    pub fn accepts(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// One image (or artifact): a config and layers.
    Image {
        /// The config blob.
        config: Descriptor,
        /// Layer blobs, bottom first.
        layers: Vec<Descriptor>,
    },
    /// A list of manifests, one per platform.
    Index(Vec<Descriptor>),
}

impl Manifest {
    /// Parses manifest bytes; `media_type` is what the registry or the
    /// referring descriptor said (the document's own field wins).
    pub fn parse(bytes: &[u8], media_type: Option<&str>) -> Result<Manifest, ManifestError> {
        bound("manifest", bytes, MAX_MANIFEST_BYTES)?;
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
                what: "manifest",
                source,
            })?;
        if raw.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(raw.schema_version));
        }
        let media_type = raw.media_type.as_deref().or(media_type);
        let manifest = match (media_type, raw.config, raw.layers, raw.manifests) {
            (Some(OCI_INDEX | DOCKER_LIST) | None, None, None, Some(manifests)) => {
                Manifest::Index(manifests)
            }
            (Some(OCI_MANIFEST | DOCKER_MANIFEST) | None, Some(config), Some(layers), None) => {
                Manifest::Image { config, layers }
            }
            (Some(other), ..) if !ACCEPTED.contains(&other) => {
                return Err(ManifestError::UnknownMediaType(other.to_string()))
            }
            _ => return Err(ManifestError::Empty),
        };
        for d in manifest.descriptors() {
            d.digest()?;
        }
        Ok(manifest)
    }

    /// Every descriptor the manifest refers to.
    pub fn descriptors(&self) -> Vec<&Descriptor> {
        match self {
            Manifest::Image { config, layers } => std::iter::once(config).chain(layers).collect(),
            Manifest::Index(manifests) => manifests.iter().collect(),
        }
    }
}

/// The part of an image config that says how to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `NAME=value` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Signal that stops the container (default SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// An image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// How to run it.
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    rootfs: RootFs,
}

impl ImageConfig {
    /// Parses config bytes.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, ManifestError> {
        bound("image config", bytes, MAX_CONFIG_BYTES)?;
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            what: "image config",
            source,
        })
    }

    /// Uncompressed layer digests, bottom first.
    pub fn diff_ids(&self) -> &[String] {
        &self.rootfs.diff_ids
    }
}

fn bound(what: &'static str, bytes: &[u8], limit: usize) -> Result<(), ManifestError> {
    if bytes.len() > limit {
        return Err(ManifestError::TooLarge {
            what,
            size: bytes.len(),
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_oci_and_docker_image_manifests() {
        for media_type in [OCI_MANIFEST, DOCKER_MANIFEST] {
            let json = format!(
                r#"{{"schemaVersion":2,"mediaType":"{media_type}",
                "config":{{"mediaType":"{OCI_CONFIG}","digest":"{D}","size":0}},
                "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D}","size":0}}]}}"#
            );
            let m = Manifest::parse(json.as_bytes(), None).expect("parse");
            assert!(matches!(m, Manifest::Image { ref layers, .. } if layers.len() == 1));
        }
    }

    #[test]
    fn parses_an_index_with_platforms() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1,
            "platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
        );
        let Manifest::Index(entries) =
            Manifest::parse(json.as_bytes(), Some(OCI_INDEX)).expect("parse")
        else {
            panic!("not an index")
        };
        let platform = entries[0].platform.clone().expect("platform");
        let arm = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert!(arm.accepts(&platform));
        assert!(!Platform::host().accepts(&platform) || std::env::consts::ARCH == "aarch64");
    }

    #[test]
    fn refuses_garbage_schema1_unknown_types_and_bad_digests() {
        let cases: [(&[u8], &str); 5] = [
            (b"<html>502 bad gateway</html>", "not valid"),
            (br#"{"schemaVersion":1,"fsLayers":[]}"#, "schemaVersion 1"),
            (
                br#"{"schemaVersion":2,"mediaType":"application/x-evil","layers":[]}"#,
                "unknown manifest media type",
            ),
            (br#"{"schemaVersion":2}"#, "neither"),
            (
                br#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:../../x","size":1}]}"#,
                "expected sha256",
            ),
        ];
        for (bytes, expected) in cases {
            let err = Manifest::parse(bytes, None)
                .expect_err("refused")
                .to_string();
            assert!(err.contains(expected), "{err}");
        }
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::parse(&huge, None),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn reads_the_run_config_of_an_image() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"],
            "Cmd":["-c","echo hi"],"Env":["PATH=/bin"],"WorkingDir":"/srv","User":"1000:1000"},
            "rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#;
        let config = ImageConfig::parse(json).expect("parse");
        let run = config.config.clone().expect("run config");
        assert_eq!(run.entrypoint, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(run.user.as_deref(), Some("1000:1000"));
        assert_eq!(config.diff_ids().len(), 1);
    }
}
