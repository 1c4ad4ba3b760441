//! `cargo xtask demo`: a controller and one agent converging on the example
//! manifest on this host, saying which parts of it this host cannot run and
//! why; with `--in-box`, all of it in an emulated edge box
//! ([`crate::demo_in_box`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use crate::api::u64_field;
use crate::bins::{self, Bins};
use crate::cluster::{start_agent, AgentSpec, Controller};
use crate::procs::{wait_for, Lifetime, Proc};
use crate::shell;

/// The example manifest, embedded so the demo runs on defaults alone.
const EXAMPLE_MANIFEST: &str = include_str!("../../examples/fleet.yaml");

/// Device name of the demo agent.
const DEVICE: &str = "edge-1";

/// A second manifest with a container the demo can really run: busybox's
/// httpd from the image the demo imports, health-checked over TCP.
const DEMO_MANIFEST: &str = "\
name: edge-1-demo
devices: [edge-1]
workloads:
  - name: hello
    container:
      image: demo/busybox:latest
      command: [/bin/sh, -c, 'echo hello from a mecvisor container on $(hostname); exec httpd -f -p 8080 -h /var/www']
      health: {tcp_port: 8080, interval_s: 2}
    resources: {memory_mib: 32, cpu_millis: 250}
    restart: on-failure
";

/// Options of `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Use release binaries (slower first build, smaller and faster binaries).
    #[arg(long)]
    release: bool,
    /// Working directory for data, configs and logs (kept afterwards).
    /// Default: a fresh temporary directory, removed at the end.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Leave controller and agent running and print how to reach them.
    #[arg(long)]
    keep_running: bool,
    /// Apply this manifest instead of the embedded example.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Seconds to wait for the device to come online and to converge
    /// (with --in-box: for the box to boot, and for everything to run).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    timeout: u64,
    /// Run the example manifest whole (slices, containers, the VM) inside
    /// an emulated edge box from the lab (QEMU; needs root; builds the box
    /// and guest images the first time). For hosts that cannot make VLAN
    /// links or boot Linux guests themselves.
    #[arg(long)]
    in_box: bool,
    /// Architecture of the emulated box (with --in-box).
    #[arg(long, value_enum, default_value_t = crate::cross::Arch::X86_64, requires = "in_box")]
    arch: crate::cross::Arch,
}

/// The working directory: a temp dir removed on drop, or a directory we keep.
enum WorkDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl WorkDir {
    fn path(&self) -> &Path {
        match self {
            WorkDir::Temp(t) => t.path(),
            WorkDir::Kept(p) => p,
        }
    }
}

/// fleetctl bound to the demo controller.
struct Fleetctl<'a> {
    bin: &'a Path,
    server: String,
}

impl Fleetctl<'_> {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new(self.bin);
        cmd.args(["--server", &self.server]);
        cmd
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let out = shell::output(self.cmd().args(args).args(["-o", "json"]))?;
        serde_json::from_str(&out)
            .with_context(|| format!("`fleetctl {}` printed no JSON: {out:?}", args.join(" ")))
    }

    fn print(&self, args: &[&str]) -> Result<()> {
        shell::run(self.cmd().args(args))
    }

    fn command_line(&self) -> String {
        format!("{} --server {}", self.bin.display(), self.server)
    }
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    if args.in_box {
        // TCG boots a box and a nested guest in minutes, not seconds.
        let timeout = Duration::from_secs(args.timeout.max(300));
        return crate::demo_in_box::run(args.arch, timeout, args.keep_running);
    }
    let bins = bins::build(args.release)?;
    let work = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            WorkDir::Kept(
                dir.canonicalize()
                    .with_context(|| format!("resolving {}", dir.display()))?,
            )
        }
        None => WorkDir::Temp(
            tempfile::Builder::new()
                .prefix("mecvisor-demo-")
                .tempdir()
                .context("creating a temporary directory")?,
        ),
    };
    let dir = work.path().to_path_buf();
    println!("demo directory: {}", dir.display());
    let lifetime = if args.keep_running {
        Lifetime::Detachable
    } else {
        Lifetime::TiedToXtask
    };
    let timeout = Duration::from_secs(args.timeout);

    println!("\n==> starting fleet-controller (embedded broker)");
    let mut controller = Controller::start(&bins, &dir, lifetime)?;
    println!(
        "controller up: api http://{} broker mqtt://{} public key {}",
        controller.api_addr, controller.mqtt_addr, controller.pubkey
    );

    println!("\n==> starting edge-agent {DEVICE}");
    let spec = AgentSpec {
        device: DEVICE,
        mqtt_url: format!("mqtt://{}", controller.mqtt_addr),
        tls: None,
        controller_key: &controller.pubkey,
        labels: &[("site", "lab")],
        extra_config: "",
        log_json: false,
    };
    let mut agent = start_agent(&bins, &dir, &spec, lifetime)?;
    let fleetctl = Fleetctl {
        bin: &bins.fleetctl,
        server: format!("http://{}", controller.api_addr),
    };
    let procs = [&mut controller.proc, &mut agent.proc];
    wait_device_online(&fleetctl, procs, timeout)?;
    println!("{DEVICE} is online");

    println!("\n==> fleetctl apply");
    let manifest_path = dir.join("fleet.yaml");
    let manifest = match &args.manifest {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading manifest {}", path.display()))?,
        None => EXAMPLE_MANIFEST.to_string(),
    };
    std::fs::write(&manifest_path, manifest)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    fleetctl.print(&["apply", "-f", &manifest_path.to_string_lossy()])?;

    println!("\n==> a container from an imported image");
    let containers = import_demo_image(&bins, &dir, &agent.config);
    if containers {
        let demo_path = dir.join("demo.yaml");
        std::fs::write(&demo_path, DEMO_MANIFEST)
            .with_context(|| format!("writing {}", demo_path.display()))?;
        fleetctl.print(&["apply", "-f", &demo_path.to_string_lossy()])?;
    }

    let generation = wait_converged(&fleetctl, [&mut controller.proc, &mut agent.proc], timeout)?;
    println!("{DEVICE} acked generation {generation}");
    if containers {
        wait_phase(
            &fleetctl,
            "hello",
            Some("running"),
            [&mut controller.proc, &mut agent.proc],
            timeout,
        )?;
        println!("container hello is running");
    }

    println!("\n==> fleetctl describe device {DEVICE}");
    fleetctl.print(&["describe", "device", DEVICE])?;
    print_outcome(&fleetctl)?;
    println!("\n==> edge-agent status");
    shell::run(
        Command::new(&bins.agent)
            .arg("status")
            .arg("--config")
            .arg(&agent.config),
    )?;
    if containers {
        println!("\n==> edge-agent logs hello");
        shell::run(
            Command::new(&bins.agent)
                .args(["logs", "hello", "--config"])
                .arg(&agent.config),
        )?;
    }

    if args.keep_running {
        print_keep_running(
            &bins,
            &controller,
            &agent.proc,
            &agent.config,
            &fleetctl,
            &dir,
        );
        controller.proc.detach();
        agent.proc.detach();
        if let WorkDir::Temp(t) = work {
            let _kept = t.keep();
        }
    } else {
        if containers {
            // Containers outlive agent restarts by design: remove the demo's
            // before stopping the agent.
            println!(
                "\n==> fleetctl delete manifest edge-1-demo (the agent removes the container)"
            );
            fleetctl.print(&["delete", "manifest", "edge-1-demo"])?;
            wait_phase(
                &fleetctl,
                "hello",
                None,
                [&mut controller.proc, &mut agent.proc],
                timeout,
            )?;
        }
        println!("\n==> stopping edge-agent and fleet-controller");
        agent.proc.stop();
        controller.proc.stop();
        println!("demo finished");
    }
    Ok(())
}

/// Installs runc and busybox-static when missing (as root), writes the demo
/// image and imports it with `edge-agent import`. False, with the reason
/// printed, when containers cannot run here (the demo goes on without).
fn import_demo_image(bins: &Bins, dir: &Path, agent_config: &Path) -> bool {
    let prepared =
        crate::debian::ensure_packages(&["runc", "busybox-static"], false).and_then(|()| {
            let layout = dir.join("demo-image");
            crate::demo_image::write_layout(&layout)?;
            shell::run(
                Command::new(&bins.agent)
                    .arg("import")
                    .arg(&layout)
                    .args(["--name", "demo/busybox", "--config"])
                    .arg(agent_config),
            )
        });
    match prepared {
        Ok(()) => true,
        Err(e) => {
            println!("skipping the container part of the demo: {e:#}");
            false
        }
    }
}

/// What ran and what this host skipped, per object, with the agent's own
/// reason, and where the rest can be seen.
fn print_outcome(fleetctl: &Fleetctl) -> Result<()> {
    let device = fleetctl.json(&["describe", "device", DEVICE])?;
    let objects = device
        .get("objects")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    println!("\n==> what ran on this host, and what it skipped");
    for o in &objects {
        let field = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        let (name, kind, phase) = (field("name"), field("kind"), field("phase"));
        if phase == "running" {
            println!("  {kind:<9} {name:<16} running");
        } else {
            println!(
                "  {kind:<9} {name:<16} skipped here ({phase}): {}",
                field("message")
            );
        }
    }
    let vlan = std::path::Path::new("/sys/module/8021q").exists();
    println!(
        "  why: the demo agent leaves this host's network alone ([slicing] off), so the \
         example's slices, and the workloads that join them, do not run; this kernel {} \
         VLAN links (8021q); the example's images are in a registry this demo does not reach",
        if vlan { "has" } else { "has no" }
    );
    println!(
        "  all of it runs with `cargo xtask demo --in-box`: an emulated edge box with the \
         example's slices, containers and VM (needs root; builds the box images the first time)"
    );
    Ok(())
}

/// The phase of object `name` in `fleetctl describe device`, if listed.
fn object_phase(fleetctl: &Fleetctl, name: &str) -> Result<Option<String>> {
    let device = fleetctl.json(&["describe", "device", DEVICE])?;
    Ok(device
        .get("objects")
        .and_then(Value::as_array)
        .and_then(|objects| {
            objects
                .iter()
                .find(|o| o.get("name").and_then(Value::as_str) == Some(name))
        })
        .and_then(|o| o.get("phase").and_then(Value::as_str))
        .map(str::to_string))
}

/// Polls until object `name` is in `phase` (`None`: no longer listed).
fn wait_phase(
    fleetctl: &Fleetctl,
    name: &str,
    phase: Option<&str>,
    mut procs: [&mut Proc; 2],
    timeout: Duration,
) -> Result<()> {
    let what = match phase {
        Some(p) => format!("{name} to be {p}"),
        None => format!("{name} to be removed"),
    };
    wait_for(&what, timeout, Duration::from_millis(200), |note| {
        for p in procs.iter_mut() {
            p.ensure_running()?;
        }
        let now = object_phase(fleetctl, name)?;
        *note = format!("phase {now:?}");
        Ok((now.as_deref() == phase).then_some(()))
    })
}

/// Polls `fleetctl get devices -o json` until the demo device is online.
fn wait_device_online(
    fleetctl: &Fleetctl,
    mut procs: [&mut Proc; 2],
    timeout: Duration,
) -> Result<()> {
    wait_for(
        &format!("`fleetctl get devices` to list {DEVICE} online"),
        timeout,
        Duration::from_millis(200),
        |note| {
            for p in procs.iter_mut() {
                p.ensure_running()?;
            }
            let list = match fleetctl.json(&["get", "devices"]) {
                Ok(list) => list,
                Err(err) => {
                    *note = format!("{err:#}");
                    return Ok(None);
                }
            };
            *note = format!("devices: {list}");
            let online = list.as_array().is_some_and(|devices| {
                devices.iter().any(|d| {
                    d.get("name").and_then(Value::as_str) == Some(DEVICE)
                        && d.get("online").and_then(Value::as_bool) == Some(true)
                })
            });
            Ok(online.then_some(()))
        },
    )
}

/// Polls `fleetctl describe device -o json` until acked == desired (> 0).
fn wait_converged(
    fleetctl: &Fleetctl,
    mut procs: [&mut Proc; 2],
    timeout: Duration,
) -> Result<u64> {
    wait_for(
        &format!("{DEVICE} to ack its desired generation"),
        timeout,
        Duration::from_millis(100),
        |note| {
            for p in procs.iter_mut() {
                p.ensure_running()?;
            }
            let device = match fleetctl.json(&["describe", "device", DEVICE]) {
                Ok(device) => device,
                Err(err) => {
                    *note = format!("{err:#}");
                    return Ok(None);
                }
            };
            let desired = u64_field(&device, "desired_generation");
            let acked = u64_field(&device, "acked_generation");
            *note = format!("desired generation {desired}, acked {acked}");
            Ok((desired > 0 && acked == desired).then_some(desired))
        },
    )
}

fn print_keep_running(
    bins: &Bins,
    controller: &Controller,
    agent: &Proc,
    agent_config: &Path,
    fleetctl: &Fleetctl,
    dir: &Path,
) {
    println!("\n==> left running (--keep-running)");
    println!(
        "fleet-controller pid {}  api {}  broker mqtt://{}  data {}  log {}",
        controller.proc.pid(),
        fleetctl.server,
        controller.mqtt_addr,
        controller.data_dir.display(),
        controller.proc.log().display()
    );
    println!(
        "edge-agent {DEVICE}  pid {}  config {}  log {}",
        agent.pid(),
        agent_config.display(),
        agent.log().display()
    );
    println!("try:");
    println!("  {} get devices", fleetctl.command_line());
    println!("  {} describe device {DEVICE}", fleetctl.command_line());
    println!(
        "  {} status --config {}",
        bins.agent.display(),
        agent_config.display()
    );
    println!("  curl {}/v1/devices/{DEVICE}", fleetctl.server);
    println!("stop with: kill {} {}", agent.pid(), controller.proc.pid());
    println!("files (not removed): {}", dir.display());
}
