//! `cargo xtask bench containers`: container start latency and image pull
//! throughput of mecvisor's own code paths against the real tools on this
//! host, measured in the same run on the same image.
//!
//! 1. Start latency of a busybox container running `/bin/sleep 300`, from
//!    the command until the container's process runs:
//!    - mecvisor: `containers::Manager::run` (overlayfs root over the
//!      unpacked image, bundle, monitor, `runc create` + `runc start`;
//!      returns once the monitor reports the process started), the agent's
//!      path;
//!    - the bare runtime on one bundle generated once with
//!      `containers::bundle` (root = the unpacked image): `runc create` +
//!      `runc start`, `runc run -d`, `crun run -d`;
//!    - `podman run -d` of the same image loaded from an oci-archive into
//!      throw-away storage;
//!    - and, for reference, full round trips of `/bin/true` (`podman run
//!      --rm`, `runc run` + `runc delete`).
//!
//!    The peers take turns within every round, after one unmeasured
//!    warm-up round; figures are medians.
//! 2. Pull throughput from a loopback registry (Debian's docker-registry):
//!    busybox plus a 64 MiB layer of random bytes (gzip), pulled into a
//!    fresh content store per round (then unpacked: `ContentStore::rootfs`),
//!    and `podman pull --tls-verify=false` into fresh storage per round.
//!    `podman pull` also stores the layers unpacked, so it compares with
//!    mecvisor's pull + unpack.
//!
//! Everything runs on loopback, and everything is removed afterwards
//! (containers, podman storage, mounts, the registry, temp dirs), also on
//! error. Needs root.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use containers::rootfs::RootfsKind;
use containers::{ContainerConfig, LogLimits, Manager, ManagerConfig, MonitorCommand, OciRuntime};
use content_store::{ContentStore, RegistryAccess, StoreOptions};
use mecvisor_e2e::oci::{self, LayerCompression, TestImage};
use mecvisor_e2e::registry::{Registry, RegistryOptions};

use super::table::Table;
use crate::timing::{ms, percentile};
use crate::{bins, shell};

/// Size of the random layer of the pull benchmark.
const BIG_LAYER_BYTES: usize = 64 << 20;

/// Longest wait for one container to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the containers run for the start measurements.
const SLEEP: [&str; 2] = ["/bin/sleep", "300"];

/// Name of the busybox image in podman and in the content store.
const BUSYBOX_REF: &str = "localhost/mecvisor-bench/busybox:latest";

/// Paths podman 4 writes outside its `--root`/`--runroot`/`--tmpdir`
/// (blob info cache, netavark's run dir, the shm lock file); removed at
/// the end when the benchmark created them.
const PODMAN_SYSTEM_PATHS: &[&str] = &[
    "/var/lib/containers",
    "/run/containers",
    "/run/libpod",
    "/dev/shm/libpod_lock",
];

/// Options of the containers benchmark.
#[derive(Debug, Args)]
pub struct ContainersArgs {
    /// Measured rounds per figure (after one unmeasured warm-up round).
    #[arg(long, default_value_t = 10, value_name = "N")]
    rounds: usize,
    /// Internal: measure in this process and write the figures to FILE
    /// (how a debug xtask runs the measurement in a release build).
    #[arg(long, value_name = "FILE", hide = true)]
    containers_results: Option<PathBuf>,
}

/// Runs the benchmark and returns its table. Fails when not root.
///
/// mecvisor's code runs in this process, so its figures must come from an
/// optimized build (a debug build unpacks layers ~7x slower): a debug
/// xtask (`cargo xtask` is one) builds xtask with the release profile, the
/// one edge-agent ships with, and runs the measurement there.
pub fn run(args: &ContainersArgs) -> Result<Table> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "bench containers needs root (runc, cgroups, overlay mounts, podman storage): \
             run it as root, e.g. `sudo -E cargo xtask bench containers`"
        );
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let title = format!(
        "bench containers (release build; median of {} rounds after 1 warm-up)",
        args.rounds
    );
    if let Some(file) = &args.containers_results {
        let report = measure(args.rounds)?;
        std::fs::write(file, report.to_json())
            .with_context(|| format!("writing {}", file.display()))?;
        // The parent process prints the table.
        std::process::exit(0);
    }
    build_monitor()?;
    let report = if cfg!(debug_assertions) {
        measure_in_release_build(args.rounds)?
    } else {
        measure(args.rounds)?
    };
    Ok(report.into_table(&title))
}

/// Builds xtask with the release profile and runs the measurement in it.
fn measure_in_release_build(rounds: usize) -> Result<Report> {
    // Unwinding instead of the profile's abort, so a panic in the child
    // still runs its cleanup (containers, mounts, registry, temp dirs).
    shell::run(
        Command::new(bins::cargo())
            .current_dir(crate::workspace_root())
            .env("CARGO_PROFILE_RELEASE_PANIC", "unwind")
            .args(["build", "--release", "--package", "xtask"]),
    )?;
    let exe = bins::target_dir().join("release").join("xtask");
    let results = tempfile::Builder::new()
        .prefix("mecvisor-bench-containers-")
        .suffix(".json")
        .tempfile()
        .context("creating a results file")?;
    let mut cmd = Command::new(&exe);
    cmd.args(["bench", "containers", "--rounds", &rounds.to_string()])
        .arg("--containers-results")
        .arg(results.path());
    let line = shell::describe(&cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    let text = std::fs::read_to_string(results.path())
        .with_context(|| format!("reading {}", results.path().display()))?;
    Report::from_json(&text)
}

/// Measures everything in this process.
fn measure(rounds: usize) -> Result<Report> {
    let monitor = monitor_path()?;
    if !Path::new(oci::BUSYBOX).is_file() {
        bail!(
            "{} is missing: the test images are built from it (apt-get install busybox-static)",
            oci::BUSYBOX
        );
    }
    let scratch = Scratch::new()?;
    let _podman_paths = SystemPaths::snapshot(PODMAN_SYSTEM_PATHS);
    let _podman_cgroups = PodmanCgroups::snapshot();
    content_store::install_crypto_provider();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    let mut report = Report::default();
    let tools = Tools::find();
    if let Err(err) = start_latency(rounds, &monitor, scratch.path(), &tools, &mut report) {
        report.error("container start latency", &err);
    }
    if let Err(err) = pull_throughput(rounds, scratch.path(), &tools, &tokio, &mut report) {
        report.error("image pull throughput", &err);
    }
    Ok(report)
}

/// Builds the container monitor (release, as edge-agent ships).
fn build_monitor() -> Result<()> {
    shell::run(
        Command::new(bins::cargo())
            .current_dir(crate::workspace_root())
            .args(["build", "--release", "--package", "containers", "--bins"]),
    )
}

/// The release container monitor built by [`build_monitor`].
fn monitor_path() -> Result<PathBuf> {
    let path = bins::target_dir()
        .join("release")
        .join("mecvisor-container-monitor");
    if !path.is_file() {
        bail!("the build did not produce {}", path.display());
    }
    Ok(path)
}

// ---------------------------------------------------------------- report

/// The figures, built like a [`Table`] and passed from the release child
/// to the parent as JSON.
#[derive(Debug, Default, PartialEq)]
struct Report {
    entries: Vec<Entry>,
}

#[derive(Debug, PartialEq)]
enum Entry {
    Info { metric: String, value: String },
    Error { metric: String, reason: String },
    Note(String),
}

impl Report {
    fn info(&mut self, metric: &str, value: String) {
        self.entries.push(Entry::Info {
            metric: metric.to_string(),
            value,
        });
    }

    fn error(&mut self, metric: &str, reason: &anyhow::Error) {
        self.entries.push(Entry::Error {
            metric: metric.to_string(),
            reason: format!("{reason:#}"),
        });
    }

    fn note(&mut self, text: String) {
        self.entries.push(Entry::Note(text));
    }

    fn to_json(&self) -> String {
        let entries: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|e| match e {
                Entry::Info { metric, value } => {
                    serde_json::json!({"info": metric, "value": value})
                }
                Entry::Error { metric, reason } => {
                    serde_json::json!({"error": metric, "reason": reason})
                }
                Entry::Note(text) => serde_json::json!({ "note": text }),
            })
            .collect();
        serde_json::Value::Array(entries).to_string()
    }

    fn from_json(text: &str) -> Result<Report> {
        let value: serde_json::Value =
            serde_json::from_str(text).context("parsing the benchmark's results")?;
        let field = |e: &serde_json::Value, name: &str| {
            e[name]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("results entry without {name}: {e}"))
        };
        let mut report = Report::default();
        for e in value.as_array().context("results are not a JSON array")? {
            report.entries.push(if e.get("info").is_some() {
                Entry::Info {
                    metric: field(e, "info")?,
                    value: field(e, "value")?,
                }
            } else if e.get("error").is_some() {
                Entry::Error {
                    metric: field(e, "error")?,
                    reason: field(e, "reason")?,
                }
            } else {
                Entry::Note(field(e, "note")?)
            });
        }
        Ok(report)
    }

    fn into_table(self, title: &str) -> Table {
        let mut table = Table::new(title);
        for e in self.entries {
            match e {
                Entry::Info { metric, value } => table.info(&metric, value),
                Entry::Error { metric, reason } => table.error(&metric, "", &anyhow!(reason)),
                Entry::Note(text) => table.note(text),
            }
        }
        table
    }
}

// ---------------------------------------------------------------- tools

/// The peers found on this host; `Err` holds why one is missing.
struct Tools {
    runc: Result<String, String>,
    crun: Result<String, String>,
    podman: Result<String, String>,
    skopeo: Result<String, String>,
}

impl Tools {
    fn find() -> Tools {
        Tools {
            runc: version("runc", "runc"),
            crun: version("crun", "crun"),
            podman: version("podman", "podman"),
            skopeo: version("skopeo", "skopeo"),
        }
    }
}

/// First line of `<program> --version`, or why it cannot be run.
fn version(program: &str, package: &str) -> Result<String, String> {
    match Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or(program)
            .trim()
            .to_string()),
        Ok(out) => Err(format!(
            "`{program} --version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(err) => Err(format!(
            "{program} is not installed ({err}; apt-get install {package})"
        )),
    }
}

// ---------------------------------------------------------------- start latency

/// One way of starting the busybox container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Starter {
    /// `containers::Manager::run`.
    Mecvisor,
    /// `runc create` + `runc start` on the shared bundle.
    RuncCreateStart,
    /// `runc run -d` on the shared bundle.
    RuncRun,
    /// `crun run -d` on the shared bundle.
    CrunRun,
    /// `podman run -d`.
    PodmanRun,
    /// `podman run --rm ... /bin/true`, to its exit and removal.
    PodmanRoundTrip,
    /// `runc run` of `/bin/true` in the foreground, then `runc delete`.
    RuncRoundTrip,
}

impl Starter {
    fn label(self) -> &'static str {
        match self {
            Starter::Mecvisor => {
                "start: mecvisor Manager::run (overlay root, bundle, monitor, runc create+start)"
            }
            Starter::RuncCreateStart => "start: runc create + runc start (same bundle, image root)",
            Starter::RuncRun => "start: runc run -d (same bundle)",
            Starter::CrunRun => "start: crun run -d (same bundle)",
            Starter::PodmanRun => "start: podman run -d (same image, runc, overlay storage)",
            Starter::PodmanRoundTrip => "round trip /bin/true: podman run --rm",
            Starter::RuncRoundTrip => "round trip /bin/true: runc run + runc delete",
        }
    }
}

/// What the start measurements share.
struct StartEnv {
    manager: Manager,
    config: ContainerConfig,
    image_root: PathBuf,
    /// Bundle running `/bin/sleep 300` on the image root.
    bundle: PathBuf,
    /// Bundle running `/bin/true` on the image root.
    true_bundle: PathBuf,
    runc_root: PathBuf,
    crun_root: PathBuf,
    podman: Option<Podman>,
    /// Why podman is not used, when it is not.
    podman_missing: Option<String>,
    /// Prefix of every container name (unique per run).
    prefix: String,
    /// Where runtimes' stderr goes for error messages.
    errors: PathBuf,
    rootfs_kind: Option<RootfsKind>,
}

/// A series of measurements of one starter.
struct Series {
    starter: Starter,
    samples: Vec<Duration>,
    /// Why it stopped being measured.
    failed: Option<String>,
}

fn start_latency(
    rounds: usize,
    monitor: &Path,
    dir: &Path,
    tools: &Tools,
    report: &mut Report,
) -> Result<()> {
    let dir = dir.join("start");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Err(why) = &tools.runc {
        bail!("{why}: mecvisor and every bare-runtime figure need runc");
    }

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

    let mut env = StartEnv {
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
    };

    let mut series: Vec<Series> = [
        Starter::Mecvisor,
        Starter::RuncCreateStart,
        Starter::RuncRun,
        Starter::CrunRun,
        Starter::PodmanRun,
        Starter::PodmanRoundTrip,
        Starter::RuncRoundTrip,
    ]
    .into_iter()
    .map(|starter| {
        let failed = match starter {
            Starter::CrunRun => tools.crun.clone().err(),
            Starter::PodmanRun | Starter::PodmanRoundTrip => env.podman_missing.clone(),
            _ => None,
        };
        Series {
            starter,
            samples: Vec::with_capacity(rounds),
            failed,
        }
    })
    .collect();

    println!("\n==> container start: 1 warm-up + {rounds} rounds");
    for round in 0..=rounds {
        for s in series.iter_mut().filter(|s| s.failed.is_none()) {
            let id = format!("{}-{}-{round}", env.prefix, short_name(s.starter));
            match start_once(&mut env, s.starter, &id) {
                Ok(took) if round > 0 => s.samples.push(took),
                Ok(_) => {}
                Err(err) => s.failed = Some(format!("{err:#}")),
            }
        }
    }

    report_start(report, &series, &env, tools);
    Ok(())
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

fn short_name(starter: Starter) -> &'static str {
    match starter {
        Starter::Mecvisor => "mecvisor",
        Starter::RuncCreateStart => "runc-cs",
        Starter::RuncRun => "runc-run",
        Starter::CrunRun => "crun-run",
        Starter::PodmanRun => "podman",
        Starter::PodmanRoundTrip => "podman-rt",
        Starter::RuncRoundTrip => "runc-rt",
    }
}

/// Starts one container, returns how long the start took, and removes it
/// (also when anything fails).
fn start_once(env: &mut StartEnv, starter: Starter, id: &str) -> Result<Duration> {
    match starter {
        Starter::Mecvisor => {
            let _remove = ManagedContainer {
                manager: &env.manager,
                id,
            };
            let started = Instant::now();
            let result = env.manager.run(id, &env.config, &env.image_root);
            let took = started.elapsed();
            match result.with_context(|| format!("Manager::run {id}"))? {
                containers::Started::Created { pid, rootfs } => {
                    ensure_alive(pid, id)?;
                    env.rootfs_kind = Some(rootfs);
                }
                containers::Started::Adopted { .. } => {
                    bail!("Manager::run adopted {id} instead of creating it")
                }
            }
            Ok(took)
        }
        Starter::RuncCreateStart => {
            let runtime = RuntimeContainer::new("runc", &env.runc_root, id);
            let started = Instant::now();
            runtime.run(&["create", "--bundle"], Some(&env.bundle), &env.errors)?;
            runtime.run(&["start"], None, &env.errors)?;
            let took = started.elapsed();
            runtime.ensure_running()?;
            Ok(took)
        }
        Starter::RuncRun | Starter::CrunRun => {
            let program = if starter == Starter::RuncRun {
                "runc"
            } else {
                "crun"
            };
            let root = if starter == Starter::RuncRun {
                &env.runc_root
            } else {
                &env.crun_root
            };
            let runtime = RuntimeContainer::new(program, root, id);
            let started = Instant::now();
            runtime.run(&["run", "-d", "--bundle"], Some(&env.bundle), &env.errors)?;
            let took = started.elapsed();
            runtime.ensure_running()?;
            Ok(took)
        }
        Starter::RuncRoundTrip => {
            let runtime = RuntimeContainer::new("runc", &env.runc_root, id);
            let started = Instant::now();
            runtime.run(&["run", "--bundle"], Some(&env.true_bundle), &env.errors)?;
            runtime.delete();
            Ok(started.elapsed())
        }
        Starter::PodmanRun | Starter::PodmanRoundTrip => {
            let podman = env
                .podman
                .as_ref()
                .context("podman storage is not set up")?;
            let _remove = PodmanContainer { podman, name: id };
            let mut cmd = podman.command();
            cmd.arg("run");
            if starter == Starter::PodmanRun {
                cmd.arg("-d");
            } else {
                cmd.arg("--rm");
            }
            cmd.args(["--name", id]).args(podman.run_flags());
            cmd.arg(BUSYBOX_REF);
            if starter == Starter::PodmanRun {
                cmd.args(SLEEP);
            } else {
                cmd.arg("/bin/true");
            }
            let started = Instant::now();
            let out = quiet(&mut cmd)?;
            let took = started.elapsed();
            if starter == Starter::PodmanRun {
                let running = podman_output(podman.command().args([
                    "inspect",
                    "--format",
                    "{{.State.Running}}",
                    id,
                ]))?;
                if running.trim() != "true" {
                    bail!(
                        "podman run -d returned ({}) but the container does not run",
                        String::from_utf8_lossy(&out.stdout).trim()
                    );
                }
            }
            Ok(took)
        }
    }
}

fn ensure_alive(pid: i32, id: &str) -> Result<()> {
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("{id}: its process (pid {pid}) is not running after the start returned");
    }
    Ok(())
}

fn report_start(report: &mut Report, series: &[Series], env: &StartEnv, tools: &Tools) {
    let median = |starter: Starter| {
        series
            .iter()
            .find(|s| s.starter == starter && s.failed.is_none())
            .and_then(|s| percentile(&s.samples, 50.0))
    };
    for s in series {
        let label = s.starter.label();
        match (&s.failed, percentile(&s.samples, 50.0)) {
            (None, Some(p50)) => {
                let spread = match (percentile(&s.samples, 0.0), percentile(&s.samples, 100.0)) {
                    (Some(lo), Some(hi)) => format!(
                        " (min {:.2}, max {:.2})",
                        lo.as_secs_f64() * 1e3,
                        hi.as_secs_f64() * 1e3
                    ),
                    _ => String::new(),
                };
                report.info(label, format!("{}{spread}", ms(p50)));
            }
            (Some(why), _) if s.starter == Starter::Mecvisor => {
                report.error(label, &anyhow!("{why}"));
            }
            (Some(why), _) => {
                report.info(label, "skipped".into());
                report.note(format!("{label}: skipped: {why}"));
            }
            (None, None) => report.info(label, "no samples".into()),
        }
    }
    if let Some(ours) = median(Starter::Mecvisor) {
        for (peer, what) in [
            (Starter::RuncCreateStart, "runc create + start"),
            (Starter::RuncRun, "runc run -d"),
            (Starter::CrunRun, "crun run -d"),
            (Starter::PodmanRun, "podman run -d"),
        ] {
            if let Some(theirs) = median(peer) {
                report.info(
                    &format!("ratio start: mecvisor / {what}"),
                    format!("{:.2}x", ours.as_secs_f64() / theirs.as_secs_f64()),
                );
            }
        }
    }
    if let Some(kind) = env.rootfs_kind {
        report.note(format!(
            "mecvisor made each container's root as {kind:?} over the unpacked image; the bare \
             runtimes use the unpacked image itself as root (no per-container layer)"
        ));
    }
    report.note(format!(
        "start = from the command until the container's /bin/sleep runs (Manager::run returns \
         after the monitor saw `runc start` succeed; `runc start`/`run -d`/`podman run -d` \
         return once the process was exec'd); round trips end when the runtime returned after \
         /bin/true exited and the container was deleted. Containers are removed between \
         rounds, untimed. Versions: {}; {}; {}",
        tools.runc.as_deref().unwrap_or("runc missing"),
        tools.crun.as_deref().unwrap_or("crun missing"),
        tools.podman.as_deref().unwrap_or("podman missing"),
    ));
    if let Some(podman) = &env.podman {
        report.note(format!(
            "podman flags: {} run {} (explicit --ulimit: podman's defaults, e.g. nofile \
             1048576, fail without CAP_SYS_RESOURCE above the host's hard limits; \
             containers.conf sets lock_type = \"file\")",
            podman.global_flags().join(" "),
            podman.run_flags().join(" ")
        ));
    }
}

// ---------------------------------------------------------------- pull

fn pull_throughput(
    rounds: usize,
    dir: &Path,
    tools: &Tools,
    tokio: &tokio::runtime::Runtime,
    report: &mut Report,
) -> Result<()> {
    let dir = dir.join("pull");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "\n==> pull: building an image with a {} MiB random layer",
        BIG_LAYER_BYTES >> 20
    );
    let mut random = Vec::with_capacity(BIG_LAYER_BYTES);
    std::fs::File::open("/dev/urandom")
        .context("opening /dev/urandom")?
        .take(BIG_LAYER_BYTES as u64)
        .read_to_end(&mut random)
        .context("reading /dev/urandom")?;
    let image = TestImage::busybox(LayerCompression::Gzip).with_layer(
        &[
            ("data/", b"", 0o755),
            ("data/random.bin", random.as_slice(), 0o644),
        ],
        LayerCompression::Gzip,
    );
    drop(random);
    let image_bytes: u64 = image.blobs().map(|b| b.bytes.len() as u64).sum();
    let unpacked_bytes: u64 = image
        .layers
        .iter()
        .map(|l| oci::uncompressed_layer(l).len() as u64)
        .sum();

    let Some(registry) = Registry::start(RegistryOptions::default()) else {
        bail!("docker-registry is not installed (apt-get install docker-registry)");
    };
    oci::push(&registry, "mecvisor-bench/random", "latest", &image);
    drop(image);
    let reference = format!("{}/mecvisor-bench/random:latest", registry.host());

    let mut ours_pull = Vec::new();
    let mut ours_unpack = Vec::new();
    let mut ours_total = Vec::new();
    let mut podman_pull = Vec::new();
    let mut podman_failed = tools.podman.clone().err();
    let mut downloaded = 0;
    println!("\n==> pull {reference}: 1 warm-up + {rounds} rounds");
    for round in 0..=rounds {
        let store_dir = dir.join(format!("store-{round}"));
        let result = pull_once(tokio, &registry.host(), &reference, &store_dir);
        let removed = remove_tree(&store_dir);
        let (pull, unpack, bytes) = result?;
        removed?;
        downloaded = bytes;
        if round > 0 {
            ours_pull.push(pull);
            ours_unpack.push(unpack);
            ours_total.push(pull + unpack);
        }
        if podman_failed.is_none() {
            match podman_pull_once(&dir.join(format!("podman-{round}")), round, &reference) {
                Ok(took) if round > 0 => podman_pull.push(took),
                Ok(_) => {}
                Err(err) => podman_failed = Some(format!("{err:#}")),
            }
        }
    }
    drop(registry);

    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let rate = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    let (Some(pull), Some(unpack), Some(total)) = (
        percentile(&ours_pull, 50.0),
        percentile(&ours_unpack, 50.0),
        percentile(&ours_total, 50.0),
    ) else {
        bail!("no pull samples");
    };
    report.info(
        "pull: mecvisor ContentStore::ensure (fresh store)",
        format!("{:.1} MB/s ({})", rate(image_bytes, pull), ms(pull)),
    );
    report.info(
        "unpack after the pull: mecvisor ContentStore::rootfs",
        format!("{:.1} MB/s ({})", rate(unpacked_bytes, unpack), ms(unpack)),
    );
    report.info(
        "pull + unpack: mecvisor",
        format!("{:.1} MB/s ({})", rate(image_bytes, total), ms(total)),
    );
    match (&podman_failed, percentile(&podman_pull, 50.0)) {
        (None, Some(theirs)) => {
            report.info(
                "pull: podman pull --tls-verify=false (fresh storage; stores layers unpacked)",
                format!("{:.1} MB/s ({})", rate(image_bytes, theirs), ms(theirs)),
            );
            report.info(
                "ratio pull time: mecvisor pull / podman pull",
                format!("{:.2}x", pull.as_secs_f64() / theirs.as_secs_f64()),
            );
            report.info(
                "ratio pull time: mecvisor pull + unpack / podman pull",
                format!("{:.2}x", total.as_secs_f64() / theirs.as_secs_f64()),
            );
        }
        (Some(why), _) => {
            report.info("pull: podman pull --tls-verify=false", "skipped".into());
            report.note(format!("podman pull: skipped: {why}"));
        }
        (None, None) => report.info("pull: podman pull --tls-verify=false", "no samples".into()),
    }
    match &tools.skopeo {
        Ok(_) => report.note(
            "skopeo is installed but not measured: podman pull covers the same \
             containers/image code path"
                .into(),
        ),
        Err(why) => {
            report.info("pull: skopeo copy", "skipped".into());
            report.note(format!("skopeo copy: skipped: {why}"));
        }
    }
    report.note(format!(
        "pull image: busybox + {} MiB of random bytes, gzip; {:.1} MiB of blobs ({:.1} MiB \
         received by the store), {:.1} MiB of layer tar; registry on 127.0.0.1 over plain HTTP; \
         MB/s = blob bytes / time (unpack: tar bytes / time)",
        BIG_LAYER_BYTES >> 20,
        mib(image_bytes),
        mib(downloaded),
        mib(unpacked_bytes),
    ));
    Ok(())
}

/// Pulls `reference` into a fresh store at `dir`, then unpacks it; returns
/// both durations and the bytes received.
fn pull_once(
    tokio: &tokio::runtime::Runtime,
    host: &str,
    reference: &str,
    dir: &Path,
) -> Result<(Duration, Duration, u64)> {
    let mut options = StoreOptions::at(dir);
    options.registries.registries.insert(
        host.to_string(),
        RegistryAccess {
            plain_http: true,
            ..Default::default()
        },
    );
    let store = ContentStore::open(options).context("opening a fresh content store")?;
    let started = Instant::now();
    let image = tokio
        .block_on(store.ensure(reference))
        .with_context(|| format!("pulling {reference}"))?;
    let pull = started.elapsed();
    let started = Instant::now();
    store
        .rootfs(&image)
        .with_context(|| format!("unpacking {reference}"))?;
    let unpack = started.elapsed();
    Ok((pull, unpack, store.bytes_downloaded()))
}

/// `podman pull` into fresh storage at `dir` (removed afterwards).
fn podman_pull_once(dir: &Path, round: usize, reference: &str) -> Result<Duration> {
    let podman = Podman::new(dir, &format!("pull{round}"))?;
    let mut cmd = podman.command();
    cmd.args(["pull", "--quiet", "--tls-verify=false", reference]);
    let started = Instant::now();
    quiet(&mut cmd)?;
    Ok(started.elapsed())
}

// ---------------------------------------------------------------- podman

/// podman with throw-away storage and state under one directory; every
/// container and the directory are removed on drop.
struct Podman {
    /// Storage (`--root`) and containers.conf.
    dir: PathBuf,
    /// `--runroot` and `--tmpdir` (on /run: podman refuses a runroot path
    /// longer than 50 characters, conmon's socket paths must fit).
    run_dir: PathBuf,
    /// `--ulimit` values podman can set here.
    nofile: (u64, u64),
    nproc: u64,
}

impl Podman {
    /// Podman with storage in `dir`; `tag` names its short run directory.
    fn new(dir: &Path, tag: &str) -> Result<Podman> {
        let run_dir = PathBuf::from(format!("/run/mvbench{}-{tag}", std::process::id()));
        for d in [dir, run_dir.as_path()] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // File locks in its tmpdir instead of the host-wide /dev/shm/libpod_lock.
        std::fs::write(
            dir.join("containers.conf"),
            "# written by cargo xtask bench containers\n[engine]\nlock_type = \"file\"\n",
        )
        .context("writing podman's containers.conf")?;
        let nofile = own_limit("Max open files").unwrap_or((1024, 1024));
        // podman caps its own RLIMIT_NPROC at kernel.pid_max; asking for
        // more than it has fails without CAP_SYS_RESOURCE.
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(32768);
        let nproc = own_limit("Max processes").map_or(pid_max, |(_, hard)| hard.min(pid_max));
        Ok(Podman {
            dir: dir.to_path_buf(),
            run_dir,
            nofile,
            nproc,
        })
    }

    fn global_flags(&self) -> Vec<String> {
        let path = |dir: &Path, name: &str| dir.join(name).display().to_string();
        vec![
            "--root".into(),
            path(&self.dir, "root"),
            "--runroot".into(),
            path(&self.run_dir, "runroot"),
            "--tmpdir".into(),
            path(&self.run_dir, "tmp"),
            "--storage-driver".into(),
            "overlay".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--runtime".into(),
            "runc".into(),
            "--events-backend".into(),
            "none".into(),
        ]
    }

    fn run_flags(&self) -> Vec<String> {
        vec![
            "--network".into(),
            "none".into(),
            "--ulimit".into(),
            format!("nofile={}:{}", self.nofile.0, self.nofile.1),
            "--ulimit".into(),
            format!("nproc={}:{}", self.nproc, self.nproc),
        ]
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .args(self.global_flags());
        cmd
    }

    /// `podman load` of an archive.
    fn load(&self, archive: &Path) -> Result<()> {
        let out = podman_output(self.command().arg("load").arg("--input").arg(archive))?;
        if !out.contains(BUSYBOX_REF) {
            bail!(
                "podman load did not name the image {BUSYBOX_REF}: {}",
                out.trim()
            );
        }
        Ok(())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["rm", "--all", "--force", "--time", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for dir in [&self.run_dir, &self.dir] {
            if let Err(err) = remove_tree(dir) {
                eprintln!("xtask: warning: podman storage: {err:#}");
            }
        }
    }
}

/// A podman container removed on drop.
struct PodmanContainer<'a> {
    podman: &'a Podman,
    name: &'a str,
}

impl Drop for PodmanContainer<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .command()
            .args(["rm", "--force", "--ignore", "--time", "0", self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Soft and hard value of a line of /proc/self/limits.
fn own_limit(name: &str) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with(name))?;
    let mut words = line[name.len()..].split_whitespace();
    let soft = words.next()?.parse().ok()?;
    let hard = words.next()?.parse().ok()?;
    Some((soft, hard))
}

fn podman_output(cmd: &mut Command) -> Result<String> {
    let out = quiet(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------- runtimes

/// A container of a bare OCI runtime, deleted (`delete --force`) on drop.
struct RuntimeContainer<'a> {
    program: &'static str,
    root: &'a Path,
    id: &'a str,
}

impl<'a> RuntimeContainer<'a> {
    fn new(program: &'static str, root: &'a Path, id: &'a str) -> RuntimeContainer<'a> {
        RuntimeContainer { program, root, id }
    }

    fn base(&self) -> Command {
        let mut cmd = Command::new(self.program);
        cmd.arg("--root").arg(self.root);
        cmd
    }

    /// `<program> --root R <args...> [bundle] <id>`, stdio to /dev/null
    /// except stderr (kept in `errors` for the message when it fails).
    fn run(&self, args: &[&str], bundle: Option<&Path>, errors: &Path) -> Result<()> {
        let mut cmd = self.base();
        cmd.args(args);
        if let Some(bundle) = bundle {
            cmd.arg(bundle);
        }
        cmd.arg(self.id);
        let stderr = std::fs::File::create(errors)
            .with_context(|| format!("creating {}", errors.display()))?;
        let line = shell::describe(&cmd);
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .with_context(|| format!("could not start `{line}`"))?;
        if !status.success() {
            let message = std::fs::read_to_string(errors).unwrap_or_default();
            bail!("`{line}` failed ({status}): {}", message.trim());
        }
        Ok(())
    }

    fn ensure_running(&self) -> Result<()> {
        let out = quiet(self.base().args(["state", self.id]))?;
        let state: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing the runtime's state")?;
        if state["status"] != "running" {
            bail!(
                "{} {}: status {} after the start returned",
                self.program,
                self.id,
                state["status"]
            );
        }
        Ok(())
    }

    fn delete(&self) {
        let _ = self
            .base()
            .args(["delete", "--force", self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for RuntimeContainer<'_> {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A container of the manager, removed on drop.
struct ManagedContainer<'a> {
    manager: &'a Manager,
    id: &'a str,
}

impl Drop for ManagedContainer<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.manager.remove(self.id) {
            eprintln!("xtask: warning: removing container {}: {err}", self.id);
        }
    }
}

/// Runs `cmd` with output captured; fails with its stderr unless it exits 0.
fn quiet(cmd: &mut Command) -> Result<Output> {
    let line = shell::describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------- cleanup

/// The benchmark's temp dir (under /var/tmp: overlayfs needs a real file
/// system); anything still mounted under it is unmounted before removal.
struct Scratch {
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix("mecvisor-bench-containers-")
            .tempdir_in("/var/tmp")
            .context("creating a temporary directory in /var/tmp")?;
        Ok(Scratch { dir: Some(dir) })
    }

    fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            unmount_under(dir.path());
            if let Err(err) = dir.close() {
                eprintln!("xtask: warning: removing the benchmark's temp dir: {err}");
            }
        }
    }
}

/// Removes a directory tree after unmounting anything under it.
fn remove_tree(dir: &Path) -> Result<()> {
    unmount_under(dir);
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow!(err).context(format!("removing {}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// Lazily unmounts every mount point at or under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        if let Err(err) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("xtask: warning: unmounting {}: {err}", point.display());
        }
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let code = digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(code).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Host paths a peer may create outside the benchmark's directories:
/// whichever did not exist before are removed on drop.
struct SystemPaths {
    absent: Vec<&'static str>,
}

impl SystemPaths {
    fn snapshot(paths: &[&'static str]) -> SystemPaths {
        SystemPaths {
            absent: paths
                .iter()
                .copied()
                .filter(|p| std::fs::symlink_metadata(p).is_err())
                .collect(),
        }
    }
}

impl Drop for SystemPaths {
    fn drop(&mut self) {
        for path in &self.absent {
            let path = Path::new(path);
            let result = match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
                Ok(_) => std::fs::remove_file(path),
                Err(_) => Ok(()),
            };
            if let Err(err) = result {
                eprintln!("xtask: warning: removing {}: {err}", path.display());
            }
        }
    }
}

/// Name of the cgroup podman (cgroupfs manager) puts its containers and
/// conmon under.
const PODMAN_CGROUP_PARENT: &str = "libpod_parent";

/// podman's parent cgroup in every hierarchy where it did not exist
/// before; removed (with the empty cgroups left in it) on drop.
struct PodmanCgroups {
    absent: Vec<PathBuf>,
}

impl PodmanCgroups {
    fn snapshot() -> PodmanCgroups {
        let root = Path::new("/sys/fs/cgroup");
        let hierarchies = std::fs::read_dir(root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        PodmanCgroups {
            absent: std::iter::once(root.to_path_buf())
                .chain(hierarchies)
                .map(|h| h.join(PODMAN_CGROUP_PARENT))
                .filter(|p| !p.exists())
                .collect(),
        }
    }
}

impl Drop for PodmanCgroups {
    fn drop(&mut self) {
        for cgroup in self.absent.iter().filter(|p| p.exists()) {
            if let Err(err) = remove_cgroup(cgroup) {
                eprintln!(
                    "xtask: warning: removing cgroup {}: {err}",
                    cgroup.display()
                );
            }
        }
    }
}

/// Removes a cgroup directory and its child cgroups (rmdir, deepest
/// first; a cgroup that still has processes stays and is reported).
fn remove_cgroup(cgroup: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(cgroup)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_cgroup(&path)?;
        }
    }
    std::fs::remove_dir(cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_survives_json() {
        let mut report = Report::default();
        report.info("start: x", "1.00 ms".into());
        report.error("pull", &anyhow!("registry \"gone\""));
        report.note("a note".into());
        let back = Report::from_json(&report.to_json()).expect("parse");
        assert_eq!(back, report);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount_path("/var/tmp/a\\040b"), "/var/tmp/a b");
        assert_eq!(unescape_mount_path("/plain/path"), "/plain/path");
        assert_eq!(unescape_mount_path("/end\\"), "/end\\");
    }
}
