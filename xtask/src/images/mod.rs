//! `cargo xtask images`: the lab's images, built from Debian's own packages
//! by the recipes in `images/` (see images/README.md):
//! - `edge-box` per architecture: Debian's cloud kernel + an initramfs with
//!   busybox, crun with its libraries, the modules the agent needs and the
//!   cross-built agent;
//! - `guest` per architecture: the same kernel + a marker-printing initramfs
//!   with the cross-built guest agent (`mecvisor-guest`) for the microVMM's
//!   tests;
//! - `oci`: a busybox OCI image layout (amd64 + arm64) for container tests.
//!
//! Everything is content-addressed in `target/images/` (see [`cas`]); a
//! second run with nothing changed only re-reads the package index and the
//! recipe files. Each artifact gets a manifest,
//! `target/images/<arch>/<recipe>.json` (`target/images/oci.json`), naming
//! its files; the hil harness boots from those.

mod apt;
mod boot;
pub mod cas;
mod kernel;
mod oci;
pub mod tools;
pub mod tree;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::bins::target_dir;
use crate::cross::{self, Arch};
use apt::{AptRoot, PackageInfo};
use boot::BootImage;
use cas::{Cas, Digest256};

/// Host tools the recipes run: apt-get/dpkg-deb (Debian's own), depmod.
const HOST_PACKAGES: &[&str] = &["apt", "dpkg", "kmod", "debian-archive-keyring"];

/// Options of `cargo xtask images`.
#[derive(Debug, Default, Args)]
pub struct ImagesArgs {
    /// Architecture of the edge box and guest images; both when omitted
    /// (the OCI layout always holds both).
    #[arg(long, value_enum)]
    pub target: Option<Arch>,
    /// Build only this image.
    #[arg(long, value_enum)]
    pub only: Option<Which>,
    /// Fetch fresh Debian package lists even when the cached ones are recent.
    #[arg(long)]
    pub refresh: bool,
    /// Do not install missing host tools; fail naming them instead.
    #[arg(long)]
    pub no_install: bool,
}

/// The images `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The emulated edge box.
    EdgeBox,
    /// The microVMM test guest.
    Guest,
    /// The busybox OCI image layout.
    Oci,
}

/// One built (or cached) artifact and where its files are.
pub struct Artifact {
    /// Recipe name.
    pub name: &'static str,
    /// Architecture, for per-architecture recipes.
    pub arch: Option<Arch>,
    /// The recipe key the outputs are recorded under.
    pub key: Digest256,
    /// Output name -> blob digest.
    pub outputs: BTreeMap<String, Digest256>,
    /// Extra files outside the store (e.g. an OCI layout directory).
    pub extra: BTreeMap<String, PathBuf>,
    /// True when nothing had to be built.
    pub cached: bool,
}

impl Artifact {
    fn new(
        name: &'static str,
        arch: Option<Arch>,
        key: Digest256,
        outputs: BTreeMap<String, Digest256>,
        cached: bool,
    ) -> Self {
        Artifact {
            name,
            arch,
            key,
            outputs,
            extra: BTreeMap::new(),
            cached,
        }
    }

    /// Writes `target/images/[<arch>/]<name>.json`.
    fn write_manifest(&self, cas: &Cas) -> Result<PathBuf> {
        let dir = match self.arch {
            Some(arch) => images_dir().join(arch.name()),
            None => images_dir(),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut files = serde_json::Map::new();
        for (name, digest) in &self.outputs {
            files.insert(
                name.clone(),
                cas.blob_path(digest).display().to_string().into(),
            );
        }
        for (name, path) in &self.extra {
            files.insert(name.clone(), path.display().to_string().into());
        }
        let manifest = serde_json::json!({
            "recipe": self.name,
            "arch": self.arch.map(|a| a.name()),
            "key": self.key,
            "digests": self.outputs,
            "files": files,
        });
        let path = dir.join(format!("{}.json", self.name));
        std::fs::write(&path, serde_json::to_string_pretty(&manifest)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// The Debian packages the recipes start from, per architecture.
pub struct Inputs {
    packages: BTreeMap<&'static str, ArchInputs>,
}

/// One architecture's packages.
struct ArchInputs {
    kernel: PackageInfo,
    busybox: PackageInfo,
    /// The edge box's OCI runtime with its shared libraries, runtime first.
    oci_runtime: Vec<PackageInfo>,
}

/// The OCI runtime the edge box ships: crun suits the box's pure cgroup v2
/// layout (runc stays the default elsewhere).
pub const BOX_OCI_RUNTIME: &str = "crun";

impl Inputs {
    /// Fetches (or finds in the store) the cloud kernel, busybox-static and
    /// the box's OCI runtime (with its libraries) for each architecture.
    fn resolve(cas: &Cas, arches: &[Arch], refresh: bool) -> Result<Self> {
        let archives = crate::debian::host_archives()?;
        let mut packages = BTreeMap::new();
        for &arch in arches {
            let root = apt_root(arch, &archives, refresh)?;
            let meta = root.show(&format!("linux-image-cloud-{}", arch.debian()))?;
            let kernel_name = meta
                .depends
                .split([',', ' '])
                .find(|w| w.starts_with("linux-image-"))
                .with_context(|| format!("{} depends on no kernel image", meta.name))?;
            let kernel = root.fetch(cas, kernel_name)?;
            let busybox = root.fetch(cas, "busybox-static")?;
            let oci_runtime = tools::fetch_with_libraries(&root, cas, BOX_OCI_RUNTIME)?;
            packages.insert(
                arch.name(),
                ArchInputs {
                    kernel,
                    busybox,
                    oci_runtime,
                },
            );
        }
        Ok(Inputs { packages })
    }

    fn of(&self, arch: Arch) -> Result<&ArchInputs> {
        self.packages
            .get(arch.name())
            .with_context(|| format!("no packages resolved for {}", arch.name()))
    }

    /// The kernel image package of `arch`.
    fn kernel(&self, arch: Arch) -> Result<&PackageInfo> {
        Ok(&self.of(arch)?.kernel)
    }

    /// The busybox-static package of `arch`.
    fn busybox(&self, arch: Arch) -> Result<&PackageInfo> {
        Ok(&self.of(arch)?.busybox)
    }

    /// The edge box's OCI runtime package of `arch` and its libraries.
    fn oci_runtime(&self, arch: Arch) -> Result<&[PackageInfo]> {
        Ok(&self.of(arch)?.oci_runtime)
    }
}

/// `target/images`.
pub fn images_dir() -> PathBuf {
    target_dir().join("images")
}

/// The private apt root of `arch` under [`images_dir`] (see
/// [`AptRoot::open`] for `archives` and `refresh`).
pub fn apt_root(arch: Arch, archives: &[crate::debian::Archive], refresh: bool) -> Result<AptRoot> {
    AptRoot::open(
        &images_dir().join("apt").join(arch.debian()),
        arch.debian(),
        archives,
        refresh,
    )
}

/// Builds the requested images and prints what was built and what was cached.
pub fn run(args: &ImagesArgs) -> Result<()> {
    build(args).map(|_| ())
}

/// Builds the requested images, prints a table of them and returns them.
pub fn build(args: &ImagesArgs) -> Result<Vec<Artifact>> {
    let started = Instant::now();
    let arches = match args.target {
        Some(arch) => vec![arch],
        None => vec![Arch::Aarch64, Arch::X86_64],
    };
    let wants = |which: Which| args.only.is_none_or(|only| only == which);
    for &arch in &arches {
        if wants(Which::EdgeBox) {
            cross::build_checked(arch)?;
        } else if wants(Which::Guest) {
            cross::build_guest_checked(arch)?;
        }
    }
    if args.no_install {
        crate::forbid_installs();
    }
    crate::debian::ensure_packages(HOST_PACKAGES, false)?;
    let cas = Cas::open(&images_dir())?;
    let all = [Arch::Aarch64, Arch::X86_64];
    let package_arches: &[Arch] = if wants(Which::Oci) { &all } else { &arches };
    let inputs = Inputs::resolve(&cas, package_arches, args.refresh)?;

    let mut artifacts = Vec::new();
    for &arch in &arches {
        if wants(Which::EdgeBox) {
            artifacts.push(boot::build(BootImage::EdgeBox, arch, &inputs, &cas)?);
        }
        if wants(Which::Guest) {
            artifacts.push(boot::build(BootImage::Guest, arch, &inputs, &cas)?);
        }
    }
    if wants(Which::Oci) {
        artifacts.push(oci::build(&all, &inputs, &cas)?);
    }

    println!(
        "\n{:<10} {:<8} {:<7} {:>10}  manifest",
        "image", "arch", "state", "size"
    );
    for artifact in &artifacts {
        let manifest = artifact.write_manifest(&cas)?;
        let size: u64 = artifact
            .outputs
            .values()
            .filter_map(|d| std::fs::metadata(cas.blob_path(d)).ok())
            .map(|m| m.len())
            .sum();
        println!(
            "{:<10} {:<8} {:<7} {:>8.1} MB  {}",
            artifact.name,
            artifact.arch.map_or("all", |a| a.name()),
            if artifact.cached { "cached" } else { "built" },
            size as f64 / 1e6,
            manifest.display()
        );
    }
    println!("images: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(artifacts)
}
