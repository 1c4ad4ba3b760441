//! OCI test images built by the tests themselves from real layers (Debian's
//! static busybox), pushed to a [`Registry`] over the distribution API or
//! written in the air-gapped formats (OCI layout, oci-archive,
//! docker-archive).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::registry::{Authorizer, Registry};

/// Debian's busybox-static binary (static x86_64).
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked to `/bin/busybox` in the busybox root layer (`/bin/<name>`).
pub const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "id", "mkdir", "rm", "true", "false", "head", "dd", "wc",
    "nc", "wget", "env", "kill", "ps",
];

/// `PATH` in the busybox image's config.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// OCI image manifest media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Annotation naming an image in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// How a layer tar is compressed (decides its media type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// `application/vnd.oci.image.layer.v1.tar`
    None,
    /// `application/vnd.oci.image.layer.v1.tar+gzip`
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar+zstd`
    Zstd,
}

impl LayerCompression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            LayerCompression::None => "application/vnd.oci.image.layer.v1.tar",
            LayerCompression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            LayerCompression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Compresses a layer tar.
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            LayerCompression::None => tar.to_vec(),
            LayerCompression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(tar).expect("gzip into memory");
                encoder.finish().expect("gzip into memory")
            }
            LayerCompression::Zstd => {
                ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest)
            }
        }
    }
}

/// A content-addressed blob: a config, a layer, a manifest or an index.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// The content.
    pub bytes: Vec<u8>,
}

impl Blob {
    /// A blob of `bytes`, digest computed.
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    /// A JSON blob (compact serialization).
    fn json(media_type: &str, value: &Value) -> Blob {
        Blob::new(
            media_type,
            serde_json::to_vec(value).expect("serialize JSON"),
        )
    }

    /// The OCI descriptor `{mediaType, digest, size}` of this blob.
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }

    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        digest_hex(&self.digest)
    }
}

/// An image: config, layers and the OCI image manifest naming them.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The image config (`application/vnd.oci.image.config.v1+json`).
    pub config: Blob,
    /// Layers, bottom first.
    pub layers: Vec<Blob>,
    /// The OCI image manifest JSON.
    pub manifest: Blob,
}

impl TestImage {
    /// A busybox image: one root layer with `/bin/busybox`, its applets
    /// ([`APPLETS`]), `/etc/passwd` and `/etc/group` (root and `app` 1000),
    /// `/tmp` (1777), `/proc`, `/sys`, `/dev`. Config: linux/amd64,
    /// `Cmd ["/bin/sh"]`, `Env [PATH=…]`, `rootfs.diff_ids`.
    pub fn busybox(compression: LayerCompression) -> TestImage {
        let tar = busybox_layer_tar();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": [DEFAULT_PATH],
                "Cmd": ["/bin/sh"],
            },
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&tar)]},
        });
        let layer = Blob::new(compression.media_type(), compression.compress(&tar));
        TestImage::assemble(config, vec![layer])
    }

    /// Adds a layer with `files` (path without leading `/`, content, mode;
    /// a path ending in `/` is a directory and its content is ignored).
    /// No parent directories are added: list them if the lower layers
    /// lack them.
    pub fn with_layer(
        self,
        files: &[(&str, &[u8], u32)],
        compression: LayerCompression,
    ) -> TestImage {
        let tar = layer_tar(files);
        let diff_id = sha256_digest(&tar);
        let layer = Blob::new(compression.media_type(), compression.compress(&tar));
        self.push_layer(layer, &diff_id)
    }

    /// Edits the config document (the whole JSON: the runtime settings are
    /// under `"config"`, e.g. `c["config"]["Entrypoint"] = json!([...])`,
    /// `Cmd`, `Env`, `WorkingDir`, `User`); recomputes the digests.
    pub fn with_config(self, edit: impl FnOnce(&mut Value)) -> TestImage {
        let mut config = self.config_json();
        edit(&mut config);
        TestImage::assemble(config, self.layers)
    }

    /// Adds a layer of arbitrary bytes with an arbitrary media type and
    /// `diff_id` (`sha256:<hex>`), for garbage or malicious layers.
    pub fn with_raw_layer(self, media_type: &str, bytes: Vec<u8>, diff_id: &str) -> TestImage {
        self.push_layer(Blob::new(media_type, bytes), diff_id)
    }

    /// The manifest digest (`sha256:<hex>`).
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// The config document as JSON.
    pub fn config_json(&self) -> Value {
        serde_json::from_slice(&self.config.bytes).expect("the image config is JSON")
    }

    /// The config's `rootfs.diff_ids`.
    pub fn diff_ids(&self) -> Vec<String> {
        self.config_json()["rootfs"]["diff_ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .map(|id| id.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every blob the manifest references: config first, then the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    fn push_layer(mut self, layer: Blob, diff_id: &str) -> TestImage {
        let mut config = self.config_json();
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .expect("rootfs.diff_ids is an array")
            .push(json!(diff_id));
        self.layers.push(layer);
        TestImage::assemble(config, self.layers)
    }

    /// Serializes `config` and builds the manifest over it and `layers`.
    fn assemble(config: Value, layers: Vec<Blob>) -> TestImage {
        let config = Blob::json(CONFIG_MEDIA_TYPE, &config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        TestImage {
            manifest: Blob::json(MANIFEST_MEDIA_TYPE, &manifest),
            config,
            layers,
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of `sha256:<hex>` (the whole string if it has no algorithm).
pub fn digest_hex(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, hex)| hex)
}

// ---------------------------------------------------------------- layers

/// A tar being built in memory with fixed owners and times (reproducible).
struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
}

impl LayerTar {
    fn new() -> LayerTar {
        LayerTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header
    }

    fn dir(&mut self, path: &str, mode: u32) {
        let mut header = Self::header(tar::EntryType::Directory, mode, 0);
        self.builder
            .append_data(&mut header, path, std::io::empty())
            .unwrap_or_else(|e| panic!("tar directory {path}: {e}"));
    }

    fn file(&mut self, path: &str, content: &[u8], mode: u32) {
        let mut header = Self::header(tar::EntryType::Regular, mode, content.len() as u64);
        self.builder
            .append_data(&mut header, path, content)
            .unwrap_or_else(|e| panic!("tar file {path}: {e}"));
    }

    fn symlink(&mut self, path: &str, target: &str) {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.builder
            .append_link(&mut header, path, target)
            .unwrap_or_else(|e| panic!("tar symlink {path}: {e}"));
    }

    fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish a tar in memory")
    }
}

/// The uncompressed busybox root layer.
fn busybox_layer_tar() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("read {BUSYBOX} (apt-get install busybox-static): {e}"));
    let mut tar = LayerTar::new();
    for (dir, mode) in [
        ("bin/", 0o755),
        ("etc/", 0o755),
        ("tmp/", 0o1777),
        ("proc/", 0o555),
        ("sys/", 0o555),
        ("dev/", 0o755),
    ] {
        tar.dir(dir, mode);
    }
    tar.file("bin/busybox", &busybox, 0o755);
    for applet in APPLETS {
        tar.symlink(&format!("bin/{applet}"), BUSYBOX);
    }
    tar.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/tmp:/bin/sh\n",
        0o644,
    );
    tar.file("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644);
    tar.finish()
}

/// An uncompressed layer with `files` (a path ending in `/` is a directory).
fn layer_tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut tar = LayerTar::new();
    for (path, content, mode) in files {
        let path = path.trim_start_matches('/');
        if path.ends_with('/') {
            tar.dir(path, *mode);
        } else {
            tar.file(path, content, *mode);
        }
    }
    tar.finish()
}

/// Decompresses a layer by its media type; unknown media types (raw test
/// layers) are returned as they are.
pub fn uncompressed_layer(layer: &Blob) -> Vec<u8> {
    let mut out = Vec::new();
    let result = if layer.media_type.ends_with("+gzip") {
        flate2::read::GzDecoder::new(layer.bytes.as_slice()).read_to_end(&mut out)
    } else if layer.media_type.ends_with("+zstd") {
        match ruzstd::decoding::StreamingDecoder::new(layer.bytes.as_slice()) {
            Ok(mut decoder) => decoder.read_to_end(&mut out),
            Err(_) => return layer.bytes.clone(),
        }
    } else {
        return layer.bytes.clone();
    };
    match result {
        Ok(_) => out,
        // Garbage under a compressed media type: keep it as it is.
        Err(_) => layer.bytes.clone(),
    }
}

// ---------------------------------------------------------------- push

/// Pushes every blob and the manifest under `repo:tag` over the OCI
/// distribution API (monolithic `POST` + `PUT ?digest=` uploads, blobs the
/// registry already has are skipped), over HTTP or HTTPS with the
/// registry's CA, with basic auth if the registry has it, or, on a 401 with
/// a `Bearer` challenge (token auth), with a token fetched from the
/// challenge's realm with the registry's credentials. Returns the manifest
/// digest.
pub fn push(registry: &Registry, repo: &str, tag: &str, image: &TestImage) -> String {
    let mut auth = Authorizer::new(registry);
    push_image(&mut auth, registry, repo, tag, image)
}

fn push_image(
    auth: &mut Authorizer,
    registry: &Registry,
    repo: &str,
    tag: &str,
    image: &TestImage,
) -> String {
    for blob in image.blobs() {
        push_blob(auth, registry, repo, blob);
    }
    put_manifest(auth, registry, repo, tag, &image.manifest)
}

/// Pushes each image (by digest) and an OCI image index pointing at their
/// manifests with platform `linux/<arch>`, tagged `tag`. Returns the index
/// digest.
pub fn push_index(
    registry: &Registry,
    repo: &str,
    tag: &str,
    images: &[(&TestImage, &str)],
) -> String {
    let mut auth = Authorizer::new(registry);
    for (image, _) in images {
        push_image(&mut auth, registry, repo, image.digest(), image);
    }
    put_manifest(&mut auth, registry, repo, tag, &image_index(images))
}

/// An OCI image index over `images` with platform `linux/<arch>`.
pub fn image_index(images: &[(&TestImage, &str)]) -> Blob {
    let manifests: Vec<Value> = images
        .iter()
        .map(|(image, arch)| {
            let mut descriptor = image.manifest.descriptor();
            descriptor["platform"] = json!({"architecture": arch, "os": "linux"});
            descriptor
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": manifests,
    });
    Blob::json(INDEX_MEDIA_TYPE, &index)
}

/// Uploads one blob unless the registry has it already.
fn push_blob(auth: &mut Authorizer, registry: &Registry, repo: &str, blob: &Blob) {
    let path = format!("/v2/{repo}/blobs/{}", blob.digest);
    let url = registry.url(&path);
    let head = auth.send(&format!("HEAD {path}"), |authorization| {
        with_auth(authorization, registry.agent().head(&url)).call()
    });
    if head.status() == 200 {
        return;
    }
    let location = start_upload(auth, registry, repo);
    let separator = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{separator}digest={}", blob.digest);
    let what = format!("PUT blob {} to {repo}", blob.digest);
    let response = auth.send(&what, |authorization| {
        with_auth(authorization, registry.agent().put(&url))
            .header("Content-Type", "application/octet-stream")
            .send(blob.bytes.as_slice())
    });
    expect_status(response, 201, &what);
}

/// `POST /v2/<repo>/blobs/uploads/`; returns the absolute upload URL.
fn start_upload(auth: &mut Authorizer, registry: &Registry, repo: &str) -> String {
    let path = format!("/v2/{repo}/blobs/uploads/");
    let url = registry.url(&path);
    let what = format!("POST {path}");
    let response = auth.send(&what, |authorization| {
        with_auth(authorization, registry.agent().post(&url)).send_empty()
    });
    let response = expect_status(response, 202, &what);
    let location =
        header(&response, "Location").unwrap_or_else(|| panic!("POST {path}: no Location header"));
    if location.starts_with('/') {
        registry.url(&location)
    } else {
        location
    }
}

/// `PUT /v2/<repo>/manifests/<reference>`; returns the digest the registry
/// reports (checked against ours).
fn put_manifest(
    auth: &mut Authorizer,
    registry: &Registry,
    repo: &str,
    reference: &str,
    manifest: &Blob,
) -> String {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let url = registry.url(&path);
    let what = format!("PUT {path}");
    let response = auth.send(&what, |authorization| {
        with_auth(authorization, registry.agent().put(&url))
            .header("Content-Type", &manifest.media_type)
            .send(manifest.bytes.as_slice())
    });
    let response = expect_status(response, 201, &what);
    if let Some(digest) = header(&response, "Docker-Content-Digest") {
        assert_eq!(
            digest, manifest.digest,
            "PUT {path}: registry digest differs"
        );
    }
    manifest.digest.clone()
}

/// Adds an `Authorization` header, if any.
fn with_auth<B>(
    authorization: Option<&str>,
    request: ureq::RequestBuilder<B>,
) -> ureq::RequestBuilder<B> {
    match authorization {
        Some(auth) => request.header("Authorization", auth),
        None => request,
    }
}

/// Panics with the body when the status is not `expected`.
fn expect_status(
    response: ureq::http::Response<Vec<u8>>,
    expected: u16,
    what: &str,
) -> ureq::http::Response<Vec<u8>> {
    assert_eq!(
        response.status().as_u16(),
        expected,
        "{what}: {}",
        String::from_utf8_lossy(response.body())
    );
    response
}

/// A response header as a string.
fn header<B>(response: &ureq::http::Response<B>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

// ---------------------------------------------------------------- archives

/// Writes an OCI image layout directory: `oci-layout`, `index.json` (one
/// manifest annotated `org.opencontainers.image.ref.name = tag`) and
/// `blobs/sha256/<hex>` for the manifest, config and layers.
pub fn write_oci_layout(dir: &Path, image: &TestImage, tag: &str) {
    for (path, bytes) in oci_layout_files(image, tag) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// Writes an oci-archive: the OCI image layout of [`write_oci_layout`] as a
/// tar file.
pub fn write_oci_archive(path: &Path, image: &TestImage, tag: &str) {
    let mut tar = LayerTar::new();
    tar.dir("blobs/", 0o755);
    tar.dir("blobs/sha256/", 0o755);
    for (name, bytes) in oci_layout_files(image, tag) {
        tar.file(&name, &bytes, 0o644);
    }
    write_file(path, &tar.finish());
}

/// Writes a docker-archive (`docker save` format): `manifest.json`
/// (`[{Config, RepoTags, Layers}]`), `<config hex>.json` and
/// `<diff_id hex>/layer.tar` with each layer uncompressed.
pub fn write_docker_archive(path: &Path, image: &TestImage, repo_tag: &str) {
    let config_name = format!("{}.json", image.config.hex());
    let mut tar = LayerTar::new();
    tar.file(&config_name, &image.config.bytes, 0o644);
    let mut layer_names = Vec::new();
    let mut written = BTreeSet::new();
    for (layer, diff_id) in image.layers.iter().zip(image.diff_ids()) {
        let dir = digest_hex(&diff_id).to_string();
        let name = format!("{dir}/layer.tar");
        if written.insert(dir.clone()) {
            tar.dir(&format!("{dir}/"), 0o755);
            tar.file(&name, &uncompressed_layer(layer), 0o644);
        }
        layer_names.push(name);
    }
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": layer_names,
    }]);
    tar.file(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("serialize manifest.json"),
        0o644,
    );
    write_file(path, &tar.finish());
}

/// The files of an OCI image layout, relative paths, blobs deduplicated.
fn oci_layout_files(image: &TestImage, tag: &str) -> Vec<(String, Vec<u8>)> {
    let mut descriptor = image.manifest.descriptor();
    descriptor["annotations"] = json!({ REF_NAME_ANNOTATION: tag });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [descriptor],
    });
    let mut files = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (
            "index.json".to_string(),
            serde_json::to_vec(&index).expect("serialize index.json"),
        ),
    ];
    let mut seen = BTreeSet::new();
    for blob in image.blobs().chain([&image.manifest]) {
        if seen.insert(blob.digest.clone()) {
            files.push((format!("blobs/sha256/{}", blob.hex()), blob.bytes.clone()));
        }
    }
    files
}

fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
