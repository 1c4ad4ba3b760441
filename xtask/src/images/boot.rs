//! The two bootable images: the edge box (busybox init, the cross-built agent,
//! the modules slices/containers/VMs need) and the microVMM test guest (with
//! the cross-built guest agent). Both pair Debian's cloud kernel with an
//! initramfs assembled here.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use super::cas::{Cas, KeyBuilder};
use super::kernel::{parse_module_list, UnpackedKernel};
use super::tree::{to_cpio_newc, FileTree};
use super::{Artifact, Inputs};
use crate::cross::{Arch, GUEST_BINARY};
use crate::workspace_root;

/// Which bootable image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootImage {
    /// The emulated edge box (`images/edge-box/`).
    EdgeBox,
    /// The microVMM test guest (`images/guest/`).
    Guest,
}

impl BootImage {
    /// Recipe name, also its directory under `images/`.
    pub fn name(self) -> &'static str {
        match self {
            BootImage::EdgeBox => "edge-box",
            BootImage::Guest => "guest",
        }
    }
}

/// Builds (or finds in the cache) one bootable image for `arch`.
pub fn build(image: BootImage, arch: Arch, inputs: &Inputs, cas: &Cas) -> Result<Artifact> {
    let recipe_dir = workspace_root().join("images").join(image.name());
    let recipe_files = read_recipe(&recipe_dir)?;
    let kernel_deb = &inputs.kernel(arch)?.sha256;
    let busybox_deb = &inputs.busybox(arch)?.sha256;

    let mut key = KeyBuilder::new(image.name());
    key.part("arch", arch.name().as_bytes())
        .part("kernel", kernel_deb.as_bytes())
        .part("busybox", busybox_deb.as_bytes());
    for (name, bytes) in &recipe_files {
        key.part(name, bytes);
    }
    let oci_runtime = match image {
        BootImage::EdgeBox => inputs.oci_runtime(arch)?,
        BootImage::Guest => &[],
    };
    for package in oci_runtime {
        key.part(
            &format!("package {}", package.name),
            package.sha256.as_bytes(),
        );
    }
    // Read once: the bytes hashed into the key are the bytes shipped.
    let (agent_name, agent_path) = match image {
        BootImage::EdgeBox => ("edge-agent", "usr/bin/edge-agent"),
        BootImage::Guest => (GUEST_BINARY, "sbin/mecvisor-guest"),
    };
    let agent = {
        let path = crate::cross::out_dir(arch).join(agent_name);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading {} (run `cargo xtask cross`)", path.display()))?;
        key.part(agent_name, bytes.as_slice());
        bytes
    };
    let key = key.finish();
    if let Some(outputs) = cas.lookup(&key)? {
        return Ok(Artifact::new(image.name(), Some(arch), key, outputs, true));
    }

    println!("images: building {} for {}", image.name(), arch.name());
    let kernel = UnpackedKernel::unpack(&cas.blob_path(kernel_deb))?;
    let modules = parse_module_list(&text(&recipe_files, "modules")?)
        .with_context(|| format!("{}/modules", recipe_dir.display()))?;
    let selection = kernel.select(&modules, arch)?;
    if !selection.builtin.is_empty() {
        println!(
            "images: built into {}: {}",
            kernel.release,
            selection.builtin.join(", ")
        );
    }

    let mut tree = FileTree::new();
    for dir in ["proc", "sys", "dev", "tmp", "run", "root", "etc", "var/lib"] {
        tree.dir(dir)?;
    }
    tree.char_device("dev/console", 5, 1)?;
    tree.char_device("dev/null", 1, 3)?;
    add_busybox(&mut tree, &cas.blob_path(busybox_deb))?;
    kernel.add_modules(&mut tree, &selection)?;
    match image {
        BootImage::EdgeBox => {
            tree.file("init", 0o755, bytes(&recipe_files, "init")?)?;
            tree.file("etc/inittab", 0o644, bytes(&recipe_files, "inittab")?)?;
            tree.file("etc/init.d/rcS", 0o755, bytes(&recipe_files, "rcS")?)?;
            tree.file(
                "usr/sbin/agent-run",
                0o755,
                bytes(&recipe_files, "agent-run")?,
            )?;
            tree.file(
                "usr/sbin/shell-server",
                0o755,
                bytes(&recipe_files, "shell-server")?,
            )?;
            tree.dir("var/lib/mecvisor")?;
            tree.dir("etc/mecvisor")?;
            for package in oci_runtime {
                add_package(&mut tree, &cas.blob_path(&package.sha256))?;
            }
        }
        BootImage::Guest => {
            tree.file("init", 0o755, bytes(&recipe_files, "init")?)?;
        }
    }
    tree.file(agent_path, 0o755, agent.clone())?;

    let initramfs = cas.put_bytes(&to_cpio_newc(&tree))?;
    let vmlinuz = std::fs::read(kernel.vmlinuz()).context("reading the kernel image")?;
    let kernel_digest = cas.put_bytes(&vmlinuz)?;
    let release = cas.put_bytes(kernel.release.as_bytes())?;
    let mut outputs = BTreeMap::from([
        ("kernel".to_string(), kernel_digest),
        ("initramfs".to_string(), initramfs),
        ("kernel-release".to_string(), release),
    ]);
    // Recorded so the hil harness can tell an image older than the agent.
    outputs.insert(agent_name.to_string(), cas.put_bytes(&agent)?);
    cas.record(&key, &outputs)?;
    Ok(Artifact::new(image.name(), Some(arch), key, outputs, false))
}

/// Adds busybox (from the busybox-static .deb) as /bin/busybox with /bin/sh;
/// the init installs the other applet links at boot.
pub fn add_busybox(tree: &mut FileTree, deb: &Path) -> Result<()> {
    let dir = super::apt::unpack(deb)?;
    let binary = super::apt::unpacked_path(dir.path(), "bin/busybox")
        .with_context(|| format!("{} holds no busybox binary", deb.display()))?;
    tree.file_from("bin/busybox", 0o755, &binary)?;
    tree.symlink("bin/sh", "busybox")
}

/// Adds what a Debian package installs (as `dpkg-deb -x` unpacks it) to the
/// tree, without documentation and the C library's charset converters
/// (gconv modules, several MB nothing in the box uses).
fn add_package(tree: &mut FileTree, deb: &Path) -> Result<()> {
    let dir = super::apt::unpack(deb)?;
    let skip = |path: &str| {
        path == "usr/share" || (path.starts_with("usr/lib/") && path.ends_with("/gconv"))
    };
    tree.add_host_tree(dir.path(), &skip)
        .with_context(|| format!("adding {} to the image", deb.display()))
}

/// Every file of a recipe directory, by name.
fn read_recipe(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.insert(name, std::fs::read(entry.path())?);
        }
    }
    Ok(files)
}

fn bytes(files: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<Vec<u8>> {
    files
        .get(name)
        .cloned()
        .with_context(|| format!("recipe file {name} is missing"))
}

fn text(files: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<String> {
    String::from_utf8(bytes(files, name)?)
        .with_context(|| format!("recipe file {name} is not UTF-8"))
}
