//! The OCI test image: busybox-static (Debian's) in a single-layer image per
//! architecture, stored as an OCI image layout in `target/images/oci/busybox/`
//! with the tags `latest` (an image index of both platforms), `amd64` and
//! `arm64` (the platform manifests).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::boot::add_busybox;
use super::cas::{Cas, KeyBuilder};
use super::tree::{to_ustar, FileTree};
use super::{images_dir, Artifact, Inputs};
use crate::cross::Arch;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Applets linked in /bin of the image (busybox-static has them all).
const APPLETS: &[&str] = &[
    "[",
    "awk",
    "base64",
    "basename",
    "cat",
    "chmod",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "du",
    "echo",
    "env",
    "false",
    "free",
    "grep",
    "head",
    "hostname",
    "httpd",
    "id",
    "ifconfig",
    "ip",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mount",
    "mv",
    "nc",
    "nslookup",
    "ping",
    "printf",
    "ps",
    "pwd",
    "rm",
    "route",
    "sed",
    "seq",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "tail",
    "tee",
    "test",
    "timeout",
    "top",
    "touch",
    "tr",
    "true",
    "uname",
    "uniq",
    "wc",
    "wget",
    "yes",
];

/// Builds (or finds in the cache) the busybox image layout for `arches`.
pub fn build(arches: &[Arch], inputs: &Inputs, cas: &Cas) -> Result<Artifact> {
    let mut key = KeyBuilder::new("oci-busybox");
    for &arch in arches {
        key.part(arch.name(), inputs.busybox(arch)?.sha256.as_bytes());
    }
    let key = key.finish();
    let (outputs, cached) = match cas.lookup(&key)? {
        Some(outputs) => (outputs, true),
        None => {
            println!("images: building the busybox OCI image");
            let outputs = build_blobs(arches, inputs, cas)?;
            cas.record(&key, &outputs)?;
            (outputs, false)
        }
    };
    let layout = images_dir().join("oci/busybox");
    write_layout(&layout, arches, &outputs, cas)?;
    let mut artifact = Artifact::new("oci", None, key, outputs, cached);
    artifact.extra.insert("layout".to_string(), layout);
    Ok(artifact)
}

/// Stores layers, configs, manifests and the platform index; returns their
/// digests by name (`layer-amd64`, `manifest-amd64`, ..., `index`).
fn build_blobs(arches: &[Arch], inputs: &Inputs, cas: &Cas) -> Result<BTreeMap<String, String>> {
    let mut outputs = BTreeMap::new();
    let mut platforms = Vec::new();
    for &arch in arches {
        let mut tree = FileTree::new();
        add_busybox(&mut tree, &cas.blob_path(&inputs.busybox(arch)?.sha256))?;
        for applet in APPLETS.iter().filter(|a| **a != "sh") {
            tree.symlink(&format!("bin/{applet}"), "busybox")?;
        }
        for dir in ["proc", "sys", "dev", "etc", "root", "var", "run"] {
            tree.dir(dir)?;
        }
        tree.dir_with_mode("tmp", 0o1777)?;
        tree.file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
        )?;
        tree.file(
            "etc/group",
            0o644,
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        )?;
        let layer_bytes = to_ustar(&tree)?;
        let layer = cas.put_bytes(&layer_bytes)?;
        let config = json!({
            "architecture": arch.debian(),
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["sh"],
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer}")] },
            "history": [{ "created_by": "mecvisor images/oci recipe: Debian busybox-static" }],
        });
        let (config_digest, config_size) = put_json(cas, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": { "mediaType": CONFIG, "digest": format!("sha256:{config_digest}"), "size": config_size },
            "layers": [{ "mediaType": LAYER, "digest": format!("sha256:{layer}"), "size": layer_bytes.len() }],
        });
        let (manifest_digest, manifest_size) = put_json(cas, &manifest)?;
        platforms.push(json!({
            "mediaType": MANIFEST,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_size,
            "platform": { "architecture": arch.debian(), "os": "linux" },
        }));
        outputs.insert(format!("layer-{}", arch.debian()), layer);
        outputs.insert(format!("config-{}", arch.debian()), config_digest);
        outputs.insert(format!("manifest-{}", arch.debian()), manifest_digest);
    }
    let index = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": platforms });
    let (index_digest, _) = put_json(cas, &index)?;
    outputs.insert("index".to_string(), index_digest);
    Ok(outputs)
}

/// Writes the layout directory: `oci-layout`, `index.json` and the blobs
/// (hard links into the store when possible).
fn write_layout(
    layout: &Path,
    arches: &[Arch],
    outputs: &BTreeMap<String, String>,
    cas: &Cas,
) -> Result<()> {
    if layout.exists() {
        std::fs::remove_dir_all(layout)
            .with_context(|| format!("clearing {}", layout.display()))?;
    }
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    for digest in outputs.values() {
        let to = blobs.join(digest);
        if std::fs::hard_link(cas.blob_path(digest), &to).is_err() {
            std::fs::copy(cas.blob_path(digest), &to)
                .with_context(|| format!("copying blob {digest}"))?;
        }
    }
    let descriptor = |name: &str, media_type: &str| -> Result<Value> {
        let digest = outputs
            .get(name)
            .with_context(|| format!("no {name} blob recorded"))?;
        let size = std::fs::metadata(cas.blob_path(digest))?.len();
        Ok(json!({ "mediaType": media_type, "digest": format!("sha256:{digest}"), "size": size }))
    };
    let mut manifests = Vec::new();
    let mut latest = descriptor("index", INDEX)?;
    latest["annotations"] = json!({ REF_NAME: "latest" });
    manifests.push(latest);
    for &arch in arches {
        let mut one = descriptor(&format!("manifest-{}", arch.debian()), MANIFEST)?;
        one["platform"] = json!({ "architecture": arch.debian(), "os": "linux" });
        one["annotations"] = json!({ REF_NAME: arch.debian() });
        manifests.push(one);
    }
    let index = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": manifests });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec_pretty(&index)?,
    )?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(())
}

fn put_json(cas: &Cas, value: &Value) -> Result<(String, usize)> {
    let bytes = serde_json::to_vec(value)?;
    Ok((cas.put_bytes(&bytes)?, bytes.len()))
}
