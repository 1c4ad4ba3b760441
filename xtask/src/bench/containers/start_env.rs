//! What the start measurements share: the busybox image imported and
//! unpacked once, the bundles of the bare runtimes, the container manager
//! and podman's storage with the image loaded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use containers::rootfs::RootfsKind;
use containers::{ContainerConfig, LogLimits, Manager, ManagerConfig, MonitorCommand, OciRuntime};
use content_store::{ContentStore, StoreOptions};
use mecvisor_e2e::oci::{self, LayerCompression, TestImage};

use super::podman::Podman;
use super::start::SLEEP;
use super::tools::Tools;
use super::BUSYBOX_REF;

/// Longest wait for one container to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the start measurements share.
pub(super) struct StartEnv {
    pub(super) manager: Manager,
    pub(super) config: ContainerConfig,
    pub(super) image_root: PathBuf,
    /// Bundle running `/bin/sleep 300` on the image root.
    pub(super) bundle: PathBuf,
    /// Bundle running `/bin/true` on the image root.
    pub(super) true_bundle: PathBuf,
    pub(super) runc_root: PathBuf,
    pub(super) crun_root: PathBuf,
    pub(super) podman: Option<Podman>,
    /// Why podman is not used, when it is not.
    pub(super) podman_missing: Option<String>,
    /// Prefix of every container name (unique per run).
    pub(super) prefix: String,
    /// Where runtimes' stderr goes for error messages.
    pub(super) errors: PathBuf,
    pub(super) rootfs_kind: Option<RootfsKind>,
}

impl StartEnv {
    /// Sets everything up in `dir`; podman only when it is installed
    /// (`podman_missing` says why not otherwise).
    pub(super) fn prepare(monitor: &Path, dir: &Path, tools: &Tools) -> Result<StartEnv> {
        // The same image for everyone: an oci-archive that the content store
        // imports and podman loads.
        let archive = dir.join("busybox.oci.tar");
        oci::write_oci_archive(
            &archive,
            &TestImage::busybox(LayerCompression::Gzip),
            BUSYBOX_REF,
        );
        let store = ContentStore::open(StoreOptions::at(dir.join("content")))
            .context("opening the content store")?;
        let names = store
            .import(&archive, Some("mecvisor-bench/busybox"))
            .context("importing the busybox oci-archive")?;
        let name = &names
            .first()
            .context("the busybox archive held no image")?
            .0;
        let image = store
            .resolve_local(name)?
            .with_context(|| format!("{name} is not in the store after its import"))?;
        let image_root = store.rootfs(&image).context("unpacking busybox")?;

        let mut config = ContainerConfig::new(SLEEP.iter().map(|s| s.to_string()).collect());
        // sleep as PID 1 ignores SIGTERM: stop with SIGKILL at once.
        config.stop_signal = "KILL".into();
        config.stop_timeout_s = 2;

        let prefix = format!("mvbench{}", std::process::id());
        let bundle = dir.join("bundle");
        write_bundle(&bundle, &format!("{prefix}-bare"), &config, &image_root)?;
        let true_bundle = dir.join("bundle-true");
        let true_config = ContainerConfig::new(vec!["/bin/true".into()]);
        write_bundle(
            &true_bundle,
            &format!("{prefix}-true"),
            &true_config,
            &image_root,
        )?;

        let manager = Manager::new(ManagerConfig {
            state: dir.join("manager"),
            runtime: OciRuntime::new("runc", dir.join("manager-runc")),
            monitor: MonitorCommand {
                program: monitor.to_path_buf(),
                prefix: Vec::new(),
            },
            logs: LogLimits::default(),
            start_timeout: START_TIMEOUT,
        })
        .context("creating the container manager")?;

        let (podman, podman_missing) = match &tools.podman {
            Ok(_) => match Podman::new(&dir.join("podman"), "start").and_then(|p| {
                p.load(&archive)?;
                Ok(p)
            }) {
                Ok(p) => (Some(p), None),
                Err(err) => (None, Some(format!("{err:#}"))),
            },
            Err(why) => (None, Some(why.clone())),
        };

        Ok(StartEnv {
            manager,
            config,
            image_root,
            bundle,
            true_bundle,
            runc_root: dir.join("runc"),
            crun_root: dir.join("crun"),
            podman,
            podman_missing,
            prefix,
            errors: dir.join("runtime-stderr.log"),
            rootfs_kind: None,
        })
    }
}

/// Writes a bundle (config.json only; the root is `image_root`).
fn write_bundle(
    bundle: &Path,
    id: &str,
    config: &ContainerConfig,
    image_root: &Path,
) -> Result<()> {
    std::fs::create_dir_all(bundle).with_context(|| format!("creating {}", bundle.display()))?;
    let spec = containers::bundle::spec(id, config, image_root)
        .with_context(|| format!("generating the bundle for {id}"))?;
    containers::bundle::write(bundle, &spec)
        .with_context(|| format!("writing the bundle in {}", bundle.display()))
}
