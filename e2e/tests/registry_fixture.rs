//! The registry fixture and the OCI test images: push to a real
//! `docker-registry` (plain, basic auth, TLS), read back, and check the
//! air-gapped archive formats.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use mecvisor_e2e::oci::{
    self, sha256_digest, LayerCompression, TestImage, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
    REF_NAME_ANNOTATION,
};
use mecvisor_e2e::registry::{Registry, RegistryOptions};
use serde_json::{json, Value};

/// Pushes a gzip and a zstd busybox image and reads manifests and blobs back.
fn push_and_pull_back(registry: &Registry) {
    let gzip = TestImage::busybox(LayerCompression::Gzip);
    let zstd = TestImage::busybox(LayerCompression::Zstd);
    assert_eq!(
        oci::push(registry, "test/busybox", "gzip", &gzip),
        gzip.digest()
    );
    assert_eq!(
        oci::push(registry, "test/busybox", "zstd", &zstd),
        zstd.digest()
    );
    for (tag, image) in [("gzip", &gzip), ("zstd", &zstd)] {
        let manifest = get_ok(
            registry,
            &format!("/v2/test/busybox/manifests/{tag}"),
            MANIFEST_MEDIA_TYPE,
        );
        assert_eq!(sha256_digest(&manifest), image.digest(), "manifest {tag}");
        for blob in image.blobs() {
            let path = format!("/v2/test/busybox/blobs/{}", blob.digest);
            let bytes = get_ok(registry, &path, "*/*");
            assert_eq!(sha256_digest(&bytes), blob.digest, "{path}");
        }
    }
}

/// `GET path` with credentials; asserts 200 and returns the body.
fn get_ok(registry: &Registry, path: &str, accept: &str) -> Vec<u8> {
    let response = registry.get(path, Some(accept));
    assert_eq!(
        response.status(),
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(response.body())
    );
    response.into_body()
}

#[test]
fn plain_registry_round_trips_gzip_and_zstd_images() {
    let Some(registry) = Registry::start(RegistryOptions::default()) else {
        return;
    };
    assert!(registry.ca_pem().is_none());
    assert!(registry.host().starts_with("127.0.0.1:"));
    push_and_pull_back(&registry);
}

#[test]
fn plain_registry_serves_a_multi_platform_index() {
    let Some(registry) = Registry::start(RegistryOptions::default()) else {
        return;
    };
    let amd64 = TestImage::busybox(LayerCompression::Gzip);
    let arm64 = TestImage::busybox(LayerCompression::Gzip)
        .with_config(|c| c["architecture"] = json!("arm64"));
    let digest = oci::push_index(
        &registry,
        "test/multi",
        "latest",
        &[(&amd64, "amd64"), (&arm64, "arm64")],
    );
    let index = get_ok(
        &registry,
        "/v2/test/multi/manifests/latest",
        INDEX_MEDIA_TYPE,
    );
    assert_eq!(sha256_digest(&index), digest);
    let index: Value = serde_json::from_slice(&index).expect("index JSON");
    let platforms: Vec<(&str, &str)> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            (
                m["digest"].as_str().expect("digest"),
                m["platform"]["architecture"].as_str().expect("arch"),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        vec![(amd64.digest(), "amd64"), (arm64.digest(), "arm64")]
    );
}

#[test]
fn basic_auth_registry_refuses_anonymous_and_accepts_credentials() {
    let options = RegistryOptions {
        basic_auth: Some(("tester".into(), "s3cret pass".into())),
        tls: false,
    };
    let Some(registry) = Registry::start(options) else {
        return;
    };
    let anonymous = registry
        .agent()
        .get(registry.url("/v2/"))
        .call()
        .expect("GET /v2/");
    assert_eq!(anonymous.status(), 401);
    let wrong = registry
        .agent()
        .get(registry.url("/v2/"))
        .header("Authorization", "Basic dGVzdGVyOndyb25n")
        .call()
        .expect("GET /v2/");
    assert_eq!(wrong.status(), 401);
    assert_eq!(registry.get("/v2/", None).status(), 200);
    push_and_pull_back(&registry);
}

#[test]
fn tls_registry_round_trips_images_with_its_ca() {
    let options = RegistryOptions {
        basic_auth: Some(("tester".into(), "tls-pass".into())),
        tls: true,
    };
    let Some(registry) = Registry::start(options) else {
        return;
    };
    let ca = registry.ca_pem().expect("a TLS registry has a CA");
    assert!(ca.exists());
    assert!(registry.url("/v2/").starts_with("https://127.0.0.1:"));
    push_and_pull_back(&registry);
}

#[test]
fn restarted_registry_keeps_port_and_storage() {
    let Some(mut registry) = Registry::start(RegistryOptions::default()) else {
        return;
    };
    let image = TestImage::busybox(LayerCompression::None).with_layer(
        &[("app/", b"", 0o755), ("app/hello.txt", b"hello\n", 0o644)],
        LayerCompression::Zstd,
    );
    oci::push(&registry, "test/restart", "v1", &image);
    let host = registry.host();
    registry.stop();
    assert!(registry.agent().get(registry.url("/v2/")).call().is_err());
    registry.restart();
    assert_eq!(registry.host(), host);
    let manifest = get_ok(
        &registry,
        "/v2/test/restart/manifests/v1",
        MANIFEST_MEDIA_TYPE,
    );
    assert_eq!(sha256_digest(&manifest), image.digest());
}

// ---------------------------------------------------------------- images

#[test]
fn busybox_image_config_and_layers_agree() {
    let image = TestImage::busybox(LayerCompression::Zstd)
        .with_layer(&[("etc/motd", b"hi\n", 0o644)], LayerCompression::Gzip)
        .with_config(|c| {
            c["config"]["Entrypoint"] = json!(["/bin/echo"]);
            c["config"]["User"] = json!("1000");
        })
        .with_raw_layer(
            "application/vnd.oci.image.layer.v1.tar",
            b"not a tar".to_vec(),
            &sha256_digest(b"not a tar"),
        );
    let config = image.config_json();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["config"]["Cmd"], json!(["/bin/sh"]));
    assert_eq!(config["config"]["Entrypoint"], json!(["/bin/echo"]));
    let diff_ids = image.diff_ids();
    assert_eq!(diff_ids.len(), 3);
    for (layer, diff_id) in image.layers.iter().zip(&diff_ids) {
        assert_eq!(sha256_digest(&oci::uncompressed_layer(layer)), *diff_id);
        assert_eq!(sha256_digest(&layer.bytes), layer.digest);
    }
    let manifest: Value = serde_json::from_slice(&image.manifest.bytes).expect("manifest JSON");
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["config"]["digest"], image.config.digest.as_str());
    assert_eq!(image.digest(), sha256_digest(&image.manifest.bytes));
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let root = tar_entries(&oci::uncompressed_layer(&image.layers[0]));
    assert_eq!(root["bin/sh"].link.as_deref(), Some("/bin/busybox"));
    assert_eq!(root["tmp/"].mode & 0o7777, 0o1777);
    assert!(root["etc/passwd"].data.starts_with(b"root:x:0:0:"));
    assert!(String::from_utf8_lossy(&root["etc/passwd"].data).contains("app:x:1000:1000:"));
    assert!(root["bin/busybox"].data.starts_with(b"\x7fELF"));
}

// ---------------------------------------------------------------- archives

#[test]
fn oci_layout_and_archive_point_at_the_manifest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = TestImage::busybox(LayerCompression::Gzip);
    let layout = dir.path().join("layout");
    oci::write_oci_layout(&layout, &image, "v1");
    let mut files = BTreeMap::new();
    collect_files(&layout, &layout, &mut files);
    check_oci_layout(&files, &image, "v1");

    let archive = dir.path().join("image.oci.tar");
    oci::write_oci_archive(&archive, &image, "v1");
    let entries = tar_entries(&std::fs::read(&archive).expect("read oci-archive"));
    let files: BTreeMap<String, Vec<u8>> = entries
        .into_iter()
        .filter(|(path, _)| !path.ends_with('/'))
        .map(|(path, entry)| (path, entry.data))
        .collect();
    check_oci_layout(&files, &image, "v1");
}

#[test]
fn docker_archive_names_uncompressed_layers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = TestImage::busybox(LayerCompression::Zstd)
        .with_layer(&[("hello.txt", b"hello\n", 0o644)], LayerCompression::Gzip);
    let archive = dir.path().join("image.docker.tar");
    oci::write_docker_archive(&archive, &image, "test/busybox:v1");
    let entries = tar_entries(&std::fs::read(&archive).expect("read docker-archive"));
    let manifest: Value =
        serde_json::from_slice(&entries["manifest.json"].data).expect("manifest.json");
    let entry = &manifest[0];
    assert_eq!(entry["RepoTags"], json!(["test/busybox:v1"]));
    let config_name = entry["Config"].as_str().expect("Config");
    let config = &entries[config_name].data;
    assert_eq!(
        config_name,
        format!("{}.json", oci::digest_hex(&sha256_digest(config)))
    );
    assert_eq!(*config, image.config.bytes);
    let layers = entry["Layers"].as_array().expect("Layers");
    assert_eq!(layers.len(), 2);
    for (name, diff_id) in layers.iter().zip(image.diff_ids()) {
        let name = name.as_str().expect("layer name");
        let layer = &entries[name].data;
        assert_eq!(sha256_digest(layer), diff_id, "{name}");
        assert_eq!(name, format!("{}/layer.tar", oci::digest_hex(&diff_id)));
    }
}

/// index.json names the manifest with the tag; every blob hashes to its name.
fn check_oci_layout(files: &BTreeMap<String, Vec<u8>>, image: &TestImage, tag: &str) {
    let layout: Value = serde_json::from_slice(&files["oci-layout"]).expect("oci-layout");
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: Value = serde_json::from_slice(&files["index.json"]).expect("index.json");
    let manifest = &index["manifests"][0];
    assert_eq!(manifest["digest"], image.digest());
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["annotations"][REF_NAME_ANNOTATION], tag);
    let blobs: Vec<_> = files
        .iter()
        .filter_map(|(path, bytes)| Some((path.strip_prefix("blobs/sha256/")?, bytes)))
        .collect();
    assert_eq!(blobs.len(), 2 + image.layers.len());
    for (hex, bytes) in blobs {
        assert_eq!(sha256_digest(bytes), format!("sha256:{hex}"));
    }
    let manifest_hex = oci::digest_hex(image.digest());
    assert_eq!(
        files[&format!("blobs/sha256/{manifest_hex}")],
        image.manifest.bytes
    );
}

/// Every file under `dir`, by path relative to `root`.
fn collect_files(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect_files(root, &path, files);
        } else {
            let relative = path.strip_prefix(root).expect("under root");
            let bytes = std::fs::read(&path).expect("read file");
            files.insert(relative.to_string_lossy().into_owned(), bytes);
        }
    }
}

/// One tar entry's mode, link target and content.
struct TarEntry {
    mode: u32,
    link: Option<String>,
    data: Vec<u8>,
}

/// The entries of a tar by path.
fn tar_entries(bytes: &[u8]) -> BTreeMap<String, TarEntry> {
    let mut archive = tar::Archive::new(bytes);
    let mut entries = BTreeMap::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let path = entry
            .path()
            .expect("entry path")
            .to_string_lossy()
            .into_owned();
        let mode = entry.header().mode().expect("entry mode");
        let link = entry
            .link_name()
            .expect("link name")
            .map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("entry data");
        entries.insert(path, TarEntry { mode, link, data });
    }
    entries
}
