//! The demo's container image: one layer with the host's busybox-static
//! (`/bin/busybox`, Debian package busybox-static) and its applets, written
//! as an OCI image layout the agent imports (`edge-agent import`), so the
//! demo runs a real container without any registry.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::images::tree::{to_ustar, FileTree};

/// Where Debian's busybox-static puts the binary.
const BUSYBOX: &str = "/bin/busybox";
/// Applets the demo's container uses.
const APPLETS: &[&str] = &[
    "sh", "echo", "httpd", "sleep", "cat", "ls", "hostname", "id", "wget",
];

fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn put(blobs: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let hex = digest(bytes);
    std::fs::write(blobs.join(&hex), bytes).with_context(|| format!("writing blob {hex}"))?;
    Ok((format!("sha256:{hex}"), bytes.len()))
}

/// Writes the layout into `dir` (tag `latest`).
pub fn write_layout(dir: &Path) -> Result<()> {
    let mut tree = FileTree::new();
    tree.dir("bin")?;
    tree.file_from("bin/busybox", 0o755, Path::new(BUSYBOX))
        .with_context(|| format!("{BUSYBOX} (apt-get install busybox-static)"))?;
    for applet in APPLETS {
        tree.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    for d in ["etc", "proc", "sys", "dev", "var/www"] {
        tree.dir(d)?;
    }
    tree.dir_with_mode("tmp", 0o1777)?;
    tree.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    )?;
    tree.file("etc/group", 0o644, b"root:x:0:\n".to_vec())?;
    tree.file(
        "var/www/index.html",
        0o644,
        b"hello from a mecvisor container\n".to_vec(),
    )?;
    let layer = to_ustar(&tree)?;

    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let (layer_digest, layer_size) = put(&blobs, &layer)?;
    let architecture = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let config = json!({
        "architecture": architecture,
        "os": "linux",
        "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let (config_digest, config_size) = put(&blobs, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size }],
    });
    let (manifest_digest, manifest_size) = put(&blobs, &serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}
