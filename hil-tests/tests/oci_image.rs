//! The busybox OCI test image (`cargo xtask images`) is a valid OCI image
//! layout: every descriptor's blob has the recorded digest and size, `latest`
//! is an index of an amd64 and an arm64 manifest, each layer holds a static
//! busybox of its architecture, and the host's one runs as a root filesystem.

use std::path::Path;
use std::process::Command;

use mecvisor_hil::images::busybox_layout;
use mecvisor_hil::skip_if;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Reads the blob a descriptor points at, checking digest and size.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().expect("descriptor digest");
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob present");
    let actual: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(actual, hex, "blob content does not match its digest");
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(bytes.len() as u64),
        "size of {digest}"
    );
    bytes
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON blob")
}

#[test]
fn busybox_layout_is_valid_multi_platform_and_runs() {
    let layout = match busybox_layout() {
        Ok(path) => path,
        Err(why) => {
            skip_if("busybox OCI layout", Some(why));
            return;
        }
    };
    let oci_layout = json(&std::fs::read(layout.join("oci-layout")).expect("oci-layout"));
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    let index = json(&std::fs::read(layout.join("index.json")).expect("index.json"));
    let refs = index["manifests"].as_array().expect("manifests");
    let by_ref = |name: &str| {
        refs.iter()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == name)
            .unwrap_or_else(|| panic!("no {name} tag in {index}"))
    };
    let latest = by_ref("latest");
    assert_eq!(
        latest["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms = json(&blob(&layout, latest));

    let dir = tempfile::tempdir().expect("temp dir");
    for (arch, elf_machine) in [("amd64", 62u16), ("arm64", 183u16)] {
        let descriptor = platforms["manifests"]
            .as_array()
            .and_then(|m| m.iter().find(|d| d["platform"]["architecture"] == arch))
            .unwrap_or_else(|| panic!("no {arch} in {platforms}"));
        assert_eq!(descriptor["digest"], by_ref(arch)["digest"], "{arch} tag");
        let manifest = json(&blob(&layout, descriptor));
        let config = json(&blob(&layout, &manifest["config"]));
        assert_eq!(config["architecture"], arch);
        let layer = blob(&layout, &manifest["layers"][0]);
        let layer_digest: String = Sha256::digest(&layer)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{layer_digest}")
        );

        let rootfs = dir.path().join(arch);
        std::fs::create_dir_all(&rootfs).expect("rootfs dir");
        let tar = dir.path().join(format!("{arch}.tar"));
        std::fs::write(&tar, &layer).expect("layer file");
        let out = Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&rootfs)
            .output()
            .expect("tar");
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let busybox = std::fs::read(rootfs.join("bin/busybox")).expect("bin/busybox in the layer");
        assert_eq!(&busybox[..4], b"\x7fELF");
        assert_eq!(
            u16::from_le_bytes([busybox[18], busybox[19]]),
            elf_machine,
            "{arch} busybox"
        );
        assert_eq!(
            std::fs::read_link(rootfs.join("bin/sh")).expect("bin/sh"),
            Path::new("busybox")
        );
    }

    // Run the host architecture's image as a root filesystem, as a container
    // runtime would (chroot needs root).
    let host = if cfg!(target_arch = "x86_64") {
        "amd64"
    } else {
        "arm64"
    };
    if !nix::unistd::Uid::effective().is_root() {
        mecvisor_e2e::skip("running the OCI rootfs", "chroot needs root");
        return;
    }
    let out = Command::new("chroot")
        .arg(dir.path().join(host))
        .args([
            "/bin/sh",
            "-c",
            "echo MECVISOR-OCI-OK $(uname -m); ls /bin | wc -l",
        ])
        .output()
        .expect("chroot");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("MECVISOR-OCI-OK "), "{stdout}");
}
