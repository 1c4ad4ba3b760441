//! OCI image layouts of single-layer artifacts (a kernel, an initramfs, a
//! disk) for the boxes' agents to import, as an air-gapped site would.

use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` as a blob of the layout at `dir`; returns its descriptor.
fn blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Result<Value, String> {
    let hex = sha256_hex(bytes);
    let path = dir.join("blobs/sha256").join(&hex);
    std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(json!({ "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len() }))
}

/// Writes an OCI image layout at `dir` holding one single-layer artifact
/// per `(tag, file)`, tagged as given.
pub fn write_layout(dir: &Path, files: &[(&str, &Path)]) -> Result<(), String> {
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(io(dir))?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(dir))?;
    let config = blob(dir, "application/vnd.oci.empty.v1+json", b"{}")?;
    let mut manifests = Vec::new();
    for (tag, file) in files {
        let bytes = std::fs::read(file).map_err(io(file))?;
        let layer = blob(dir, "application/octet-stream", &bytes)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": format!("application/vnd.mecvisor.{tag}"),
            "config": config,
            "layers": [layer],
        });
        let mut descriptor = blob(
            dir,
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        )?;
        descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        manifests.push(descriptor);
    }
    let index = json!({ "schemaVersion": 2, "manifests": manifests });
    std::fs::write(dir.join("index.json"), index.to_string()).map_err(io(dir))
}

/// The pinned reference (`repository@sha256:...`) of the image tagged
/// `tag`, from what `edge-agent import` printed (`<name>:<tag>\t<digest>`
/// per line).
pub fn imported_reference(printed: &str, tag: &str) -> Option<String> {
    printed.lines().find_map(|line| {
        let (name, digest) = line.split_once('\t')?;
        let repository = name.strip_suffix(&format!(":{tag}"))?;
        Some(format!("{repository}@{}", digest.trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_holds_each_file_under_its_tag() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"kernel bytes").unwrap();
        let layout = dir.path().join("layout");
        write_layout(&layout, &[("kernel", &kernel)]).unwrap();
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let descriptor = &index["manifests"][0];
        assert_eq!(
            descriptor["annotations"]["org.opencontainers.image.ref.name"],
            "kernel"
        );
        let digest = descriptor["digest"].as_str().unwrap();
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap(),
        )
        .unwrap();
        let layer = manifest["layers"][0]["digest"].as_str().unwrap();
        assert_eq!(
            std::fs::read(layout.join("blobs/sha256").join(&layer[7..])).unwrap(),
            b"kernel bytes"
        );
    }

    #[test]
    fn references_come_from_the_import_output() {
        let printed =
            "docker.io/library/guest:kernel\tsha256:aa\ndocker.io/library/guest:disk\tsha256:bb\n";
        assert_eq!(
            imported_reference(printed, "disk").as_deref(),
            Some("docker.io/library/guest@sha256:bb")
        );
        assert_eq!(imported_reference(printed, "initrd"), None);
    }
}
