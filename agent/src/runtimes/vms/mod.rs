//! The VM runtime of the agent: each VM workload runs in its own VMM
//! process (`edge-agent vmm`, see [`process`]), started with the kernel,
//! initramfs and disks the content store holds for the spec's digests.
//! VMM processes outlive the agent: a restarted agent finds them by their
//! pid records and adopts them. A watcher notices within a quarter second
//! when a VMM exits and wakes the reconciler, which restarts the VM by its
//! policy with backoff. A VM with a health check (`guest_agent: true`) is
//! asked through its vsock device, on the check's interval, whether its
//! guest agent answers ([`health`]); an unhealthy VM counts as failed and
//! is restarted by the same policy.

pub mod cgroup;
pub mod health;
pub mod process;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use content_store::ContentStore;
use mecvisor_protocol::{VmSpec, WorkloadKind, WorkloadSpec};
use network_slicing::Port;
use nix::sys::signal::Signal;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::{ObjectKind, ObjectSpec, Observed, Runtime, RuntimeError, RuntimeFuture};
use crate::health::{HealthSettings, HealthState};
use crate::slice_net::SharedSliceNet;
use cgroup::{Hierarchy, VmCgroup};
use process::{Launch, Liveness, VmDir, VmmProcess};

/// How often the watcher looks for exited VMMs.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How long a VMM may take to stop its guest after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a guest agent may take to acknowledge POWEROFF.
const POWEROFF_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a guest may take to power off once its agent acknowledged.
const GUEST_POWEROFF_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a VMM whose POWEROFF request failed may take to exit anyway
/// (the guest powered off before its answer got out).
const POWEROFF_RACE_GRACE: Duration = Duration::from_secs(1);
/// How long a new VMM may take to create its tap.
const TAP_WAIT: Duration = Duration::from_secs(10);

/// A VMM this agent process started (its child, to be reaped) or adopted.
struct Running {
    process: VmmProcess,
    child: Option<Child>,
    exit_noticed: bool,
    /// The tally of its health checks, when the spec has one.
    health: Option<HealthState>,
    /// Whether the guest agent has answered since the VMM started.
    answered: bool,
}

impl Running {
    fn new(process: VmmProcess, child: Option<Child>, health: Option<HealthSettings>) -> Running {
        Running {
            process,
            child,
            exit_noticed: false,
            health: health.map(|s| HealthState::new(s, std::time::Instant::now())),
            answered: false,
        }
    }

    fn unhealthy(&self) -> bool {
        self.health.as_ref().is_some_and(HealthState::unhealthy)
    }
}

struct Inner {
    store: Arc<ContentStore>,
    root: PathBuf,
    program: PathBuf,
    wake: Rc<Notify>,
    running: RefCell<BTreeMap<String, Running>>,
    /// The health checks of the desired VMs, by name.
    desired_health: RefCell<BTreeMap<String, HealthSettings>>,
    /// Slices and ports, when network slicing is on.
    slice_net: Option<SharedSliceNet>,
    /// Where each VMM's cgroup goes; none when no cgroup hierarchy with a
    /// memory controller is mounted.
    cgroups: Option<Hierarchy>,
}

impl Inner {
    fn cgroup(&self, name: &str) -> Option<VmCgroup> {
        self.cgroups.as_ref().map(|h| VmCgroup::of(h, name))
    }
}

/// Runs VM workloads.
pub struct VmRuntime {
    inner: Rc<Inner>,
}

impl VmRuntime {
    /// Checks /dev/kvm can be opened, prepares `<data_dir>/vms` and starts
    /// the watcher (on the current `LocalSet`). A VM in a slice gets a tap
    /// (its port) in `slice_net`.
    pub fn start(
        data_dir: &Path,
        store: Arc<ContentStore>,
        slice_net: Option<SharedSliceNet>,
        wake: Rc<Notify>,
    ) -> Result<VmRuntime, String> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
        let program = std::env::current_exe()
            .map_err(|e| format!("cannot find the agent's own executable: {e}"))?;
        let root = data_dir.join("vms");
        std::fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        // Absolute: each VM's directory is its VMM's jail.
        let root = root
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", root.display()))?;
        let cgroups = Hierarchy::detect(Path::new("/sys/fs/cgroup"));
        match &cgroups {
            Some(hierarchy) => info!(state = %root.display(), ?hierarchy, "VM runtime ready"),
            None => warn!(
                state = %root.display(),
                "VM runtime ready; no cgroup memory controller mounted: VMMs run without memory limits"
            ),
        }
        let inner = Rc::new(Inner {
            store,
            root,
            program,
            wake,
            running: RefCell::new(BTreeMap::new()),
            desired_health: RefCell::new(BTreeMap::new()),
            slice_net,
            cgroups,
        });
        tokio::task::spawn_local(watch(Rc::downgrade(&inner)));
        Ok(VmRuntime { inner })
    }
}

/// Notices VMM exits (reaping its own children) until the runtime is
/// dropped.
async fn watch(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut wake = false;
        for (name, running) in inner.running.borrow_mut().iter_mut() {
            if let Some(child) = running.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    debug!(vm = %name, %status, "VMM process reaped");
                    running.child = None;
                }
            }
            if !running.exit_noticed && running.process.liveness() == Liveness::Exited {
                running.exit_noticed = true;
                info!(vm = %name, pid = running.process.pid, "VMM exited");
                wake = true;
            }
        }
        if check_health(&inner).await {
            wake = true;
        }
        if wake {
            inner.wake.notify_one();
        }
    }
}

/// Runs the health checks that are due; returns whether a VM turned
/// unhealthy.
async fn check_health(inner: &Inner) -> bool {
    let now = std::time::Instant::now();
    let due: Vec<(String, Duration)> = inner
        .running
        .borrow()
        .iter()
        .filter(|(_, r)| !r.exit_noticed)
        .filter_map(|(name, r)| {
            let h = r.health.as_ref()?;
            (h.next_due <= now).then(|| (name.clone(), h.settings.timeout))
        })
        .collect();
    let mut turned = false;
    for (name, timeout) in due {
        let dir = VmDir::new(&inner.root, &name);
        let result = health::check(dir.path(), timeout).await;
        let mut running = inner.running.borrow_mut();
        let Some(vm) = running.get_mut(&name) else {
            continue;
        };
        match &result {
            Ok(uptime) if !vm.answered => {
                vm.answered = true;
                info!(vm = %name, uptime_s = uptime.as_secs(), "guest agent answers: healthy");
            }
            Ok(_) => {}
            Err(reason) => debug!(vm = %name, %reason, "health check failed"),
        }
        let Some(h) = vm.health.as_mut() else {
            continue;
        };
        if h.record(result.map(|_| ()), std::time::Instant::now()) {
            warn!(vm = %name, status = %h.describe(), "VM unhealthy");
            turned = true;
        }
    }
    turned
}

fn vm_of(spec: &ObjectSpec) -> Result<(&WorkloadSpec, &VmSpec), RuntimeError> {
    match spec {
        ObjectSpec::Workload(w) => match &w.kind {
            WorkloadKind::Vm(vm) => Ok((w, vm)),
            WorkloadKind::Container(_) => Err(RuntimeError::wrong_kind(spec, ObjectKind::Vm)),
        },
        ObjectSpec::Slice(_) => Err(RuntimeError::wrong_kind(spec, ObjectKind::Vm)),
    }
}

/// The local file of an artifact the reconciler made sure of.
fn artifact_path(store: &ContentStore, reference: &str) -> Result<PathBuf, RuntimeError> {
    let image = store
        .resolve_local(reference)
        .map_err(RuntimeError::failed)?
        .ok_or_else(|| RuntimeError::Failed(format!("{reference} is not in the content store")))?;
    store.artifact_file(&image).map_err(RuntimeError::failed)
}

/// The `edge-agent vmm` arguments for `workload`: artifacts resolved to
/// files, writable disks as private copies in the VM's directory (the
/// store's blobs are never written).
fn launch_args(
    inner: &Inner,
    dir: &VmDir,
    workload: &WorkloadSpec,
    vm: &VmSpec,
) -> Result<Vec<String>, RuntimeError> {
    let store = &inner.store;
    let mut args = vec![
        "--kernel".to_string(),
        artifact_path(store, &vm.kernel)?.display().to_string(),
    ];
    if let Some(initrd) = &vm.initrd {
        args.push("--initrd".into());
        args.push(artifact_path(store, initrd)?.display().to_string());
    }
    for (index, disk) in vm.disks.iter().enumerate() {
        let blob = artifact_path(store, &disk.image)?;
        let path = if disk.read_only {
            format!("{},ro", blob.display())
        } else {
            let copy = dir.path().join(format!("disk{index}.img"));
            if !copy.exists() {
                let tmp = copy.with_extension("tmp");
                std::fs::copy(&blob, &tmp)
                    .and_then(|_| std::fs::rename(&tmp, &copy))
                    .map_err(|e| {
                        RuntimeError::Failed(format!(
                            "copying disk {} for {}: {e}",
                            disk.image, workload.name
                        ))
                    })?;
            }
            copy.display().to_string()
        };
        args.push("--disk".into());
        args.push(path);
    }
    if let Some(port) = Port::of_workload(workload) {
        args.push("--net".into());
        args.push(port.name);
    }
    if !vm.cmdline.is_empty() {
        args.push("--cmdline".into());
        args.push(vm.cmdline.clone());
    }
    let memory = memory_mib(workload);
    args.extend([
        "--memory-mib".to_string(),
        memory.to_string(),
        "--vcpus".to_string(),
        vm.vcpus.to_string(),
        "--console-log".to_string(),
        dir.console().display().to_string(),
        "--exit-record".to_string(),
        dir.exit_file().display().to_string(),
        "--jail".to_string(),
        dir.path().display().to_string(),
        "--vsock".to_string(),
        dir.vsock_socket().display().to_string(),
    ]);
    Ok(args)
}

/// Refuses what this box's VMM cannot run (memory, vCPUs, disk count),
/// before any process starts, so a bad spec fails once with the reason
/// instead of starting VMMs that exit at once.
fn check_limits(workload: &WorkloadSpec, vm: &VmSpec) -> Result<(), RuntimeError> {
    use mecvisor_vmm::machine::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
    let memory = memory_mib(workload);
    let mut problems = Vec::new();
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory) {
        problems.push(format!(
            "memory of {memory} MiB is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB on this box"
        ));
    }
    if !(1..=MAX_VCPUS).contains(&vm.vcpus) {
        problems.push(format!(
            "{} vCPUs: this box's VMM runs 1..={MAX_VCPUS}",
            vm.vcpus
        ));
    }
    if !vm.disks.is_empty() && mecvisor_vmm::arch::virtio_mmio_slot(vm.disks.len() - 1).is_none() {
        problems.push(format!(
            "{} disks: more than this box's VMM has slots for",
            vm.disks.len()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RuntimeError::Failed(format!(
            "VM {} cannot run here: {}",
            workload.name,
            problems.join("; ")
        )))
    }
}

/// A fresh cgroup for the VM's next VMM (the previous one's, with its OOM
/// count, goes: that VMM is gone), limited for `vm`; returns the files the
/// new process joins it through.
fn prepare_cgroup(
    cgroup: &VmCgroup,
    workload: &WorkloadSpec,
    vm: &VmSpec,
) -> Result<Vec<std::fs::File>, RuntimeError> {
    let refused = |e: String| RuntimeError::Failed(format!("cgroup of VM {}: {e}", workload.name));
    cgroup.remove().map_err(refused)?;
    cgroup
        .prepare(memory_mib(workload), vm.vcpus)
        .map_err(refused)?;
    cgroup.join_files().map_err(refused)
}

/// The guest memory of `workload`, the default when the spec gives none.
fn memory_mib(workload: &WorkloadSpec) -> u32 {
    match workload.resources.memory_mib {
        0 => mecvisor_vmm::DEFAULT_MEMORY_MIB,
        mib => mib,
    }
}

/// Waits up to `timeout` for the VMM to exit (reaping it when it is our
/// child); returns whether it did.
async fn exited_within(process: VmmProcess, child: &mut Option<Child>, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(child) = child.as_mut() {
            let _ = child.try_wait();
        }
        if process.liveness() == Liveness::Exited {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops VM `name`'s VMM. First the guest is asked to power off through
/// its guest agent (its OS then syncs and unmounts its disks) and given
/// [`GUEST_POWEROFF_TIMEOUT`]; without a guest agent answering, or when the
/// guest takes longer, SIGTERM (the VMM stops the guest and exits), and
/// SIGKILL after [`STOP_TIMEOUT`].
async fn stop(name: &str, dir: &VmDir, process: VmmProcess, mut child: Option<Child>) {
    // A guest may power off before its agent's answer leaves it (the
    // guest's vsock driver sends from a worker a power-off need not wait
    // for), so a failed request still gets a short grace, and the exit
    // record tells whether the guest powered off.
    let acknowledged = match health::request_poweroff(dir.path(), POWEROFF_REQUEST_TIMEOUT).await {
        Ok(()) => {
            info!(vm = name, "asked the guest agent to power the guest off");
            true
        }
        Err(reason) => {
            debug!(vm = name, %reason, "no clean power-off through a guest agent");
            false
        }
    };
    let grace = if acknowledged {
        GUEST_POWEROFF_TIMEOUT
    } else {
        POWEROFF_RACE_GRACE
    };
    if exited_within(process, &mut child, grace).await {
        if let Observed::Stopped { success: true, .. } = ended(dir, None) {
            info!(vm = name, "guest powered off cleanly");
        }
    } else {
        if acknowledged {
            warn!(
                vm = name,
                "guest still up {}s after POWEROFF; stopping its VMM",
                GUEST_POWEROFF_TIMEOUT.as_secs()
            );
        }
        process.signal(Signal::SIGTERM);
        if !exited_within(process, &mut child, STOP_TIMEOUT).await {
            warn!(pid = process.pid, "VMM did not stop on SIGTERM; killing it");
            process.signal(Signal::SIGKILL);
            exited_within(process, &mut child, STOP_TIMEOUT).await;
        }
    }
    if let Some(mut child) = child {
        let _ = child.wait();
    }
}

/// How a VMM that is gone ended, from its exit record (or, without one,
/// from its cgroup's OOM count).
fn ended(dir: &VmDir, cgroup: Option<&VmCgroup>) -> Observed {
    let record = std::fs::read(dir.exit_file())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    match record {
        Some(record) => {
            let how = record["ended"].as_str().unwrap_or("unknown").to_string();
            Observed::Stopped {
                success: how == "power-off",
                message: match how.as_str() {
                    "power-off" => "the guest powered off".to_string(),
                    "reset" => "the guest rebooted".to_string(),
                    other => format!(
                        "the VMM ended: {other}{}",
                        record["error"]
                            .as_str()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                },
            }
        }
        None => match cgroup.filter(|c| c.oom_kills() > 0) {
            Some(cgroup) => Observed::Stopped {
                success: false,
                message: format!(
                    "the VMM was OOM-killed at its memory limit of {} MiB (guest memory + {} MiB)",
                    cgroup.memory_limit().unwrap_or(0) >> 20,
                    cgroup::VMM_OVERHEAD_MIB
                ),
            },
            None => Observed::Stopped {
                success: false,
                message: "the VMM process died without an exit record (killed?)".into(),
            },
        },
    }
}

/// A VM in `slice` needs network slicing on and the slice desired here.
async fn check_slice(inner: &Inner, name: &str, slice: &str) -> Result<(), RuntimeError> {
    let Some(shared) = &inner.slice_net else {
        return Err(RuntimeError::Failed(format!(
            "VM {name} joins slice {slice}, but network slicing is off on this agent"
        )));
    };
    if shared.lock().await.slice(slice).is_none() {
        return Err(RuntimeError::Failed(format!(
            "slice {slice} is not desired on this box"
        )));
    }
    Ok(())
}

/// Waits for the new VMM's tap, then puts it in its slice as the VM's port
/// (address, allow rules and shaping as for a container's veth).
async fn join_slice(
    inner: &Inner,
    name: &str,
    process: VmmProcess,
    port: Port,
) -> Result<(), RuntimeError> {
    let Some(shared) = &inner.slice_net else {
        return Ok(());
    };
    let link = Path::new("/sys/class/net").join(&port.name);
    let deadline = tokio::time::Instant::now() + TAP_WAIT;
    while !link.exists() {
        if process.liveness() == Liveness::Exited || tokio::time::Instant::now() >= deadline {
            return Err(RuntimeError::Failed(format!(
                "the VMM of {name} did not create its tap {} (see {})",
                port.name,
                VmDir::new(&inner.root, name).vmm_log().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tap = port.name.clone();
    let slice = port.slice.clone();
    let mut net = shared.lock().await;
    // A new tap is down; the slicer enslaves ports but leaves their state.
    let index = net
        .kernel()
        .index_of(&tap)
        .await
        .map_err(RuntimeError::failed)?;
    net.kernel()
        .set_up(index, &format!("set tap {tap} up"))
        .await
        .map_err(RuntimeError::failed)?;
    net.set_port(ObjectKind::Vm, name, Some(port));
    net.converge().await?;
    info!(vm = name, %slice, %tap, "VM port in its slice");
    Ok(())
}

impl Runtime for VmRuntime {
    fn desired_set(&mut self, specs: &[ObjectSpec]) {
        *self.inner.desired_health.borrow_mut() = specs
            .iter()
            .filter_map(|spec| {
                let (workload, vm) = vm_of(spec).ok()?;
                let health = HealthSettings::from_spec(vm.health.as_ref()?)?;
                Some((workload.name.clone(), health))
            })
            .collect();
        // The taps of desired VMs that run already (e.g. since before an
        // agent restart): every slice apply must keep them in their bridges.
        let Some(shared) = &self.inner.slice_net else {
            return;
        };
        let ports = specs
            .iter()
            .filter_map(|spec| match spec {
                ObjectSpec::Workload(w) => Some((w.name.clone(), Port::of_workload(w)?)),
                ObjectSpec::Slice(_) => None,
            })
            .filter(|(_, p)| Path::new("/sys/class/net").join(&p.name).exists())
            .collect();
        match shared.try_lock() {
            Ok(mut net) => net.set_ports(ObjectKind::Vm, ports),
            Err(_) => warn!("slice state busy; VM ports are updated on the next pass"),
        }
    }

    fn apply<'a>(&'a mut self, spec: &'a ObjectSpec) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            let (workload, vm) = vm_of(spec)?;
            let name = workload.name.as_str();
            if let Some(slice) = &workload.slice {
                check_slice(inner, name, slice).await?;
            }
            let dir = VmDir::new(&inner.root, name);
            std::fs::create_dir_all(dir.path()).map_err(|e| {
                RuntimeError::Failed(format!("creating {}: {e}", dir.path().display()))
            })?;
            let fingerprint = hex_of(&spec.fingerprint());
            let recorded =
                VmmProcess::load(&dir.pid_file()).filter(|p| p.liveness() == Liveness::Alive);
            let same_spec =
                std::fs::read_to_string(dir.spec_file()).is_ok_and(|f| f.trim() == fingerprint);
            if let Some(process) = recorded {
                let unhealthy = inner
                    .running
                    .borrow()
                    .get(name)
                    .is_some_and(Running::unhealthy);
                if same_spec && !unhealthy {
                    debug!(vm = name, pid = process.pid, "VMM already runs this spec");
                    return Ok(());
                }
                info!(
                    vm = name,
                    pid = process.pid,
                    "{}; stopping the old VMM",
                    if unhealthy {
                        "unhealthy"
                    } else {
                        "spec changed"
                    }
                );
                let child = inner
                    .running
                    .borrow_mut()
                    .remove(name)
                    .and_then(|r| r.child);
                stop(name, &dir, process, child).await;
            }
            check_limits(workload, vm)?;
            let launch = Launch {
                program: inner.program.clone(),
                args: launch_args(inner, &dir, workload, vm)?,
            };
            let _ = std::fs::remove_file(dir.exit_file());
            let join = match inner.cgroup(name) {
                Some(cgroup) => prepare_cgroup(&cgroup, workload, vm)?,
                None => Vec::new(),
            };
            let (child, process) = process::spawn(&dir, &launch, join).map_err(|e| {
                RuntimeError::Failed(format!("cannot start the VMM for {name}: {e}"))
            })?;
            process
                .save(&dir.pid_file())
                .and_then(|()| process::write_atomically(&dir.spec_file(), fingerprint.as_bytes()))
                .map_err(|e| RuntimeError::Failed(format!("recording the VMM of {name}: {e}")))?;
            info!(
                vm = name,
                pid = process.pid,
                vcpus = vm.vcpus,
                "VMM started"
            );
            let health = vm.health.as_ref().and_then(HealthSettings::from_spec);
            inner
                .running
                .borrow_mut()
                .insert(name.to_string(), Running::new(process, Some(child), health));
            if let Some(port) = Port::of_workload(workload) {
                join_slice(inner, name, process, port).await?;
            }
            Ok(())
        })
    }

    fn remove<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            let dir = VmDir::new(&inner.root, name);
            let child = inner
                .running
                .borrow_mut()
                .remove(name)
                .and_then(|r| r.child);
            if let Some(process) = VmmProcess::load(&dir.pid_file()) {
                stop(name, &dir, process, child).await;
            }
            if let Some(shared) = &inner.slice_net {
                let mut net = shared.lock().await;
                if net.set_port(ObjectKind::Vm, name, None) {
                    net.converge().await?;
                }
            }
            if let Some(cgroup) = inner.cgroup(name) {
                cgroup.remove().map_err(RuntimeError::Failed)?;
            }
            match std::fs::remove_dir_all(dir.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::Failed(
                    format!("removing {}: {e}", dir.path().display()),
                )),
                _ => {
                    info!(vm = name, "VM removed");
                    Ok(())
                }
            }
        })
    }

    fn observe<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, Observed> {
        Box::pin(async move {
            let inner = &self.inner;
            let dir = VmDir::new(&inner.root, name);
            let Some(process) = VmmProcess::load(&dir.pid_file()) else {
                return Ok(Observed::Missing);
            };
            if process.liveness() == Liveness::Alive {
                let health = inner.desired_health.borrow().get(name).cloned();
                let mut running = inner.running.borrow_mut();
                let vm = running.entry(name.to_string()).or_insert_with(|| {
                    // Started by an earlier agent process: adopt it.
                    info!(vm = name, pid = process.pid, "VM adopted as it runs");
                    Running::new(process, None, health)
                });
                if let Some(h) = vm.health.as_ref().filter(|h| h.unhealthy()) {
                    return Ok(Observed::Stopped {
                        success: false,
                        message: h.describe(),
                    });
                }
                return Ok(Observed::Running);
            }
            if let Some(mut running) = inner.running.borrow_mut().remove(name) {
                if let Some(child) = running.child.as_mut() {
                    let _ = child.wait();
                }
            }
            Ok(ended(&dir, inner.cgroup(name).as_ref()))
        })
    }

    fn present(&mut self) -> RuntimeFuture<'_, Vec<String>> {
        Box::pin(async move {
            let names = std::fs::read_dir(&self.inner.root)
                .map_err(|e| {
                    RuntimeError::Failed(format!("listing {}: {e}", self.inner.root.display()))
                })?
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.path().is_dir())
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect();
            Ok(names)
        })
    }
}

/// The spec's CBOR as hex: what `spec` holds, compared whole.
fn hex_of(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut hex = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use mecvisor_protocol::{DiskSpec, Resources, RestartPolicy};

    fn workload(memory_mib: u32, vcpus: u8, disks: usize) -> (WorkloadSpec, VmSpec) {
        let vm = VmSpec {
            kernel: format!("guest@sha256:{}", "a".repeat(64)),
            initrd: None,
            disks: vec![
                DiskSpec {
                    image: format!("guest@sha256:{}", "b".repeat(64)),
                    read_only: true,
                };
                disks
            ],
            cmdline: String::new(),
            vcpus,
            health: None,
        };
        let workload = WorkloadSpec {
            name: "guest1".into(),
            kind: WorkloadKind::Vm(vm.clone()),
            slice: None,
            resources: Resources {
                cpu_millis: 0,
                memory_mib,
            },
            restart: RestartPolicy::OnFailure,
            allow: Vec::new(),
            port_qos: None,
            address: None,
        };
        (workload, vm)
    }

    #[test]
    fn limits_of_this_boxs_vmm_are_checked_before_anything_starts() {
        let (w, vm) = workload(0, 1, 1);
        assert!(check_limits(&w, &vm).is_ok(), "default memory, one disk");
        for (memory, vcpus, disks, needle) in [
            (32, 1, 0, "memory of 32 MiB"),
            (1 << 20, 1, 0, "memory of"),
            (128, 0, 0, "0 vCPUs"),
            (128, 200, 0, "200 vCPUs"),
            (128, 1, 40, "40 disks"),
        ] {
            let (w, vm) = workload(memory, vcpus, disks);
            let refused = check_limits(&w, &vm).expect_err(needle);
            assert!(refused.to_string().contains(needle), "{refused}");
        }
    }

    #[test]
    fn an_exit_record_decides_the_restart_policy() {
        let root = tempfile::tempdir().unwrap();
        let dir = VmDir::new(root.path(), "guest1");
        std::fs::create_dir_all(dir.path()).unwrap();
        assert!(matches!(
            ended(&dir, None),
            Observed::Stopped { success: false, ref message } if message.contains("without an exit record")
        ));
        for (record, success, needle) in [
            (r#"{"ended":"power-off"}"#, true, "powered off"),
            (r#"{"ended":"reset"}"#, false, "rebooted"),
            (
                r#"{"ended":"failed","error":"vCPU 0: KVM internal error"}"#,
                false,
                "KVM internal error",
            ),
        ] {
            std::fs::write(dir.exit_file(), record).unwrap();
            match ended(&dir, None) {
                Observed::Stopped {
                    success: s,
                    message,
                } => {
                    assert_eq!(s, success, "{record}");
                    assert!(message.contains(needle), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
