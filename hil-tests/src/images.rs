//! The images the boxes boot, as recorded by `cargo xtask images` in
//! `target/images/<arch>/<recipe>.json`.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Arch;

/// The busybox OCI image layout (amd64 + arm64) recorded by `cargo xtask
/// images` in `oci.json`.
pub fn busybox_layout() -> Result<PathBuf, String> {
    let manifest = images_dir().join("oci.json");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("{}: {e}; run `cargo xtask images`", manifest.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    value["files"]["layout"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "oci.json names no layout".to_string())
}

/// A kernel and initramfs to boot.
#[derive(Debug, Clone)]
pub struct BootImage {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs (cpio).
    pub initramfs: PathBuf,
}

/// Where the image manifests are: `$MECVISOR_IMAGES_DIR`, else
/// `$CARGO_TARGET_DIR/images`, else `<workspace>/target/images`.
pub fn images_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MECVISOR_IMAGES_DIR") {
        return PathBuf::from(dir);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir).join("images"),
        None => workspace.join("target/images"),
    }
}

impl BootImage {
    /// Loads the manifest of `recipe` (`edge-box` or `guest`) for `arch`,
    /// checking each file against its recorded sha256: a corrupt or missing
    /// file is refused with its name, never booted.
    pub fn load(arch: Arch, recipe: &str) -> Result<Self, String> {
        Self::load_from(&images_dir(), arch, recipe)
    }

    /// [`BootImage::load`] from another images directory.
    pub fn load_from(dir: &Path, arch: Arch, recipe: &str) -> Result<Self, String> {
        let path = dir.join(arch.name()).join(format!("{recipe}.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "no {recipe} image for {} ({}: {e}); run `cargo xtask images`",
                arch.name(),
                path.display()
            )
        })?;
        let manifest: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = |name: &str| -> Result<PathBuf, String> {
            let path = manifest["files"][name]
                .as_str()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{recipe} manifest names no {name}"))?;
            let expected = manifest["digests"][name]
                .as_str()
                .ok_or_else(|| format!("{recipe} manifest records no digest for {name}"))?;
            match sha256_file(&path) {
                Ok(actual) if actual == expected => Ok(path),
                Ok(actual) => Err(format!(
                    "{recipe} {name} {} is corrupt (sha256 {actual}, expected {expected}); \
                     run `cargo xtask images` to rebuild it",
                    path.display()
                )),
                Err(e) => Err(format!(
                    "{recipe} {name} {}: {e}; run `cargo xtask images`",
                    path.display()
                )),
            }
        };
        let image = BootImage {
            kernel: file("kernel")?,
            initramfs: file("initramfs")?,
        };
        // An edge box image must hold the agent `cargo xtask cross` built
        // last (a guest image, the guest agent), or a test would exercise
        // yesterday's agent.
        for agent in ["edge-agent", "mecvisor-guest"] {
            let Some(recorded) = manifest["digests"][agent].as_str() else {
                continue;
            };
            let built = dir
                .parent()
                .map(|target| target.join("cross").join(arch.name()).join(agent));
            if let Some(built) = built.filter(|p| p.is_file()) {
                match sha256_file(&built) {
                    Ok(digest) if digest == recorded => {}
                    _ => {
                        return Err(format!(
                            "the {recipe} image for {} holds an older {agent} than {}; \
                             run `cargo xtask images`",
                            arch.name(),
                            built.display()
                        ))
                    }
                }
            }
        }
        Ok(image)
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path, kernel: &[u8], recorded: &[u8]) {
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(dir.join("x86_64")).unwrap();
        std::fs::create_dir_all(&blobs).unwrap();
        let digest = |b: &[u8]| -> String {
            Sha256::digest(b)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect()
        };
        let (k, i) = (blobs.join("k"), blobs.join("i"));
        std::fs::write(&k, kernel).unwrap();
        std::fs::write(&i, b"initramfs").unwrap();
        let json = serde_json::json!({
            "files": { "kernel": k, "initramfs": i },
            "digests": { "kernel": digest(recorded), "initramfs": digest(b"initramfs") },
        });
        std::fs::write(dir.join("x86_64/edge-box.json"), json.to_string()).unwrap();
    }

    #[test]
    fn intact_images_load_and_corrupt_ones_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        manifest(dir.path(), b"kernel", b"kernel");
        let image = BootImage::load_from(dir.path(), Arch::X86_64, "edge-box").unwrap();
        assert!(image.kernel.ends_with("blobs/k"));

        // An image built from another agent than the one cross built last.
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("x86_64")).unwrap();
        std::fs::rename(
            dir.path().join("x86_64/edge-box.json"),
            images.join("x86_64/edge-box.json"),
        )
        .unwrap();
        let path = images.join("x86_64/edge-box.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json["digests"]["edge-agent"] = "0".repeat(64).into();
        std::fs::write(&path, json.to_string()).unwrap();
        assert!(
            BootImage::load_from(&images, Arch::X86_64, "edge-box").is_ok(),
            "no agent built: fine"
        );
        std::fs::create_dir_all(dir.path().join("cross/x86_64")).unwrap();
        std::fs::write(dir.path().join("cross/x86_64/edge-agent"), b"newer agent").unwrap();
        let err = BootImage::load_from(&images, Arch::X86_64, "edge-box").unwrap_err();
        assert!(err.contains("older edge-agent"), "{err}");
        std::fs::rename(path, dir.path().join("x86_64/edge-box.json")).unwrap();

        manifest(dir.path(), b"kernel, flipped", b"kernel");
        let err = BootImage::load_from(dir.path(), Arch::X86_64, "edge-box").unwrap_err();
        assert!(
            err.contains("edge-box kernel") && err.contains("corrupt"),
            "{err}"
        );

        std::fs::remove_file(dir.path().join("blobs/k")).unwrap();
        let err = BootImage::load_from(dir.path(), Arch::X86_64, "edge-box").unwrap_err();
        assert!(err.contains("edge-box kernel"), "{err}");
    }
}
