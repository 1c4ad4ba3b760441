//! `cargo xtask deb`: a Debian package of the agent per architecture, built
//! from the static cross binaries (`cargo xtask cross`).
//!
//! The package holds `/usr/bin/edge-agent`, the systemd unit
//! `mecvisor-agent.service` and `/usr/share/doc/mecvisor-agent/agent.toml.example`
//! (sources in cross/debian/). The unit is enabled on install and starts once
//! `/etc/mecvisor/agent.toml` exists.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;

use crate::cross::{self, Arch};
use crate::{shell, workspace_root};

/// Options of `cargo xtask deb`.
#[derive(Debug, Args)]
pub struct DebArgs {
    /// Architecture to package; both when omitted.
    #[arg(long, value_enum)]
    target: Option<Arch>,
    /// Also install the package of this host's architecture into a fresh
    /// Debian root (debootstrap, minbase + systemd, cached in
    /// target/cross/debian-root), check its unit with `systemd-analyze
    /// verify`, run the agent there, and purge it again.
    #[arg(long)]
    verify_install: bool,
}

/// Builds the cross binaries and packages the agent for each architecture.
pub fn run(args: &DebArgs) -> Result<()> {
    let arches = match args.target {
        Some(arch) => vec![arch],
        None => vec![Arch::Aarch64, Arch::X86_64],
    };
    for arch in arches {
        cross::build_checked(arch)?;
        let deb = package(arch)?;
        println!("{}: {}", arch.name(), deb.display());
        if args.verify_install && arch.name() == std::env::consts::ARCH {
            verify_install(&deb)?;
        }
    }
    Ok(())
}

/// Installs `deb` into a fresh Debian root and checks what it left there.
pub fn verify_install(deb: &Path) -> Result<()> {
    let root = crate::bins::target_dir().join("cross").join("debian-root");
    if !root.join("usr/bin/systemctl").exists() {
        if !shell::succeeds(Command::new("debootstrap").arg("--version")) {
            shell::run(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y", "-qq", "debootstrap"]),
            )?;
        }
        println!("\n==> a fresh Debian root (debootstrap, about a minute)");
        shell::run(
            Command::new("debootstrap")
                .args(["--variant=minbase", "--include=systemd", "bookworm"])
                .arg(&root)
                .arg(crate::debian::host_debian_mirror()?),
        )?;
    }
    println!("\n==> install, verify, run, purge in {}", root.display());
    std::fs::copy(deb, root.join("tmp/mecvisor-agent.deb")).context("copying the package")?;
    shell::run(
        Command::new("chroot")
            .arg(&root)
            .args(["dpkg", "-i", "/tmp/mecvisor-agent.deb"]),
    )?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants/mecvisor-agent.service");
    // A symlink to /lib/..., which resolves only inside the root.
    if std::fs::symlink_metadata(&wants).is_err() {
        anyhow::bail!("the package did not enable mecvisor-agent.service");
    }
    shell::run(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg("/lib/systemd/system/mecvisor-agent.service"),
    )?;
    let version = shell::output(
        Command::new("chroot")
            .arg(&root)
            .args(["edge-agent", "--version"]),
    )?;
    print!("installed: {version}");
    shell::run(
        Command::new("chroot")
            .arg(&root)
            .args(["dpkg", "--purge", "mecvisor-agent"]),
    )?;
    if root.join("usr/bin/edge-agent").exists() || std::fs::symlink_metadata(&wants).is_ok() {
        anyhow::bail!("purging mecvisor-agent left its binary or its enablement behind");
    }
    let _ = std::fs::remove_file(root.join("tmp/mecvisor-agent.deb"));
    println!("package installs, verifies, runs and purges cleanly");
    Ok(())
}

/// Assembles the package tree next to the cross binaries and builds the .deb.
pub fn package(arch: Arch) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let out = cross::out_dir(arch);
    let root = out.join("deb-root");
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let sources = workspace_root().join("cross").join("debian");
    install(
        &out.join("edge-agent"),
        &root.join("usr/bin/edge-agent"),
        0o755,
    )?;
    install(
        &sources.join("mecvisor-agent.service"),
        &root.join("lib/systemd/system/mecvisor-agent.service"),
        0o644,
    )?;
    install(
        &sources.join("agent.toml.example"),
        &root.join("usr/share/doc/mecvisor-agent/agent.toml.example"),
        0o644,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        install(
            &sources.join(script),
            &root.join("DEBIAN").join(script),
            0o755,
        )?;
    }
    let control = format!(
        "Package: mecvisor-agent\n\
         Version: {version}\n\
         Architecture: {}\n\
         Maintainer: mecvisor developers <dev@mecvisor.invalid>\n\
         Section: admin\n\
         Priority: optional\n\
         Description: mecvisor edge agent\n \
         Keeps an edge box converged on the desired state its fleet controller\n \
         publishes over MQTT: network slices, OCI containers and KVM guests.\n \
         One static binary; no runtime dependencies.\n",
        arch.debian()
    );
    write(&root.join("DEBIAN/control"), &control)?;
    let deb = out.join(format!("mecvisor-agent_{version}_{}.deb", arch.debian()));
    shell::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    Ok(deb)
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
