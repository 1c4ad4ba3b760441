//! A workload's own network: a persistent network namespace (a bind mount
//! of a namespace under a directory such as `/run/mecvisor/netns`) and a
//! veth pair. Inside: `eth0` with the workload's address, `lo` up, a
//! default route via the slice's gateway. Outside: the port `mvp<hash>`,
//! which the slicer attaches to the slice's bridge (a
//! [`crate::model::Port`]). A container joins the namespace by its path;
//! the namespace outlives container restarts, so the address stays.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::kernel::{Kernel, KernelError};

/// NSFS_MAGIC: the file system type of a bound network namespace.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Why a workload's network could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadNetError {
    /// Creating, mounting or removing the namespace file failed.
    #[error("network namespace {path}: {message}")]
    Namespace {
        /// The namespace file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A netlink request failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// What [`ensure`] made (or found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadNet {
    /// The namespace file to join.
    pub netns: PathBuf,
    /// The host end of the veth pair.
    pub port: String,
}

/// Host-side port name of a workload (`mvp` + 8 hex digits).
pub fn port_name(workload: &str) -> String {
    let digest = Sha256::digest(workload.as_bytes());
    format!("mvp{}", hex::encode(&digest[..4]))
}

/// Name of the port's peer while it is still on the host side.
fn peer_name(workload: &str) -> String {
    let digest = Sha256::digest(workload.as_bytes());
    format!("mvq{}", hex::encode(&digest[..4]))
}

fn is_netns_mount(path: &Path) -> bool {
    // The field's integer type differs between targets (and libcs).
    #[allow(clippy::unnecessary_cast)]
    let nsfs = |s: nix::sys::statfs::Statfs| s.filesystem_type().0 as i64 == NSFS_MAGIC;
    nix::sys::statfs::statfs(path).is_ok_and(nsfs)
}

/// Creates the namespace file `path` bound to a fresh network namespace
/// (made by a helper thread, which exits; the mount keeps it alive).
fn create_netns(path: &Path) -> Result<(), WorkloadNetError> {
    let fail = |message: String| WorkloadNetError::Namespace {
        path: path.to_path_buf(),
        message,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    std::fs::File::create(path).map_err(|e| fail(e.to_string()))?;
    let target = path.to_path_buf();
    std::thread::spawn(move || -> Result<(), String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare: {e}"))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind mount: {e}"))
    })
    .join()
    .map_err(|_| fail("helper thread panicked".into()))?
    .map_err(fail)
}

/// Makes the workload's namespace and port exist and be configured
/// (idempotent: what exists is kept, what is missing is made). `address`
/// is the workload's address and prefix; `gateway` its default route.
pub async fn ensure(
    host: &Kernel,
    dir: &Path,
    workload: &str,
    address: Option<(Ipv4Addr, u8)>,
    gateway: Option<Ipv4Addr>,
) -> Result<WorkloadNet, WorkloadNetError> {
    let netns = dir.join(workload);
    if !is_netns_mount(&netns) {
        create_netns(&netns)?;
    }
    let port = port_name(workload);
    let inside = Kernel::connect_in_netns(&netns)?;
    let has_eth0 = inside.links().await?.iter().any(|l| l.name == "eth0");
    let host_links = host.links().await?;
    let has_port = host_links.iter().any(|l| l.name == port);
    if !(has_eth0 && has_port) {
        // Half a pair is useless: start the pair afresh.
        if let Some(l) = host_links.iter().find(|l| l.name == port) {
            host.delete(l.index, &format!("delete stale port {port}"))
                .await?;
        }
        let peer = peer_name(workload);
        if let Some(l) = host_links.iter().find(|l| l.name == peer) {
            host.delete(l.index, &format!("delete stale peer {peer}"))
                .await?;
        }
        if let Some(l) = inside.links().await?.into_iter().find(|l| l.name == "eth0") {
            inside.delete(l.index, "delete stale eth0").await?;
        }
        host.create_veth(&port, &peer).await?;
        let peer_index = host.index_of(&peer).await?;
        let ns_file = std::fs::File::open(&netns).map_err(|e| WorkloadNetError::Namespace {
            path: netns.clone(),
            message: e.to_string(),
        })?;
        host.move_to_netns(
            peer_index,
            &ns_file,
            &format!("move {peer} into {}", netns.display()),
        )
        .await?;
        let index = inside.index_of(&peer).await?;
        inside
            .rename(index, "eth0", &format!("rename {peer} to eth0"))
            .await?;
    }
    for name in ["lo", "eth0"] {
        let index = inside.index_of(name).await?;
        inside
            .set_up(index, &format!("set {name} up in {}", netns.display()))
            .await?;
    }
    let port_index = host.index_of(&port).await?;
    host.set_up(port_index, &format!("set {port} up")).await?;
    // Exactly the wanted address on eth0: one left from an earlier spec
    // (the namespace outlives containers) would stay live in the slice.
    let eth0 = inside.index_of("eth0").await?;
    let mut present = false;
    for (index, ip, prefix) in inside.ipv4_addresses().await? {
        if index != eth0 {
            continue;
        }
        if Some((ip, prefix)) == address {
            present = true;
        } else {
            inside
                .remove_address(
                    eth0,
                    ip,
                    prefix,
                    &format!("remove old {ip}/{prefix} from eth0"),
                )
                .await?;
        }
    }
    if let Some((ip, prefix)) = address {
        if !present {
            inside
                .add_address(eth0, ip, prefix, &format!("add {ip}/{prefix} to eth0"))
                .await?;
        }
        if let Some(gateway) = gateway {
            inside.set_default_route(gateway).await?;
        }
    }
    Ok(WorkloadNet { netns, port })
}

/// Removes the workload's port and namespace; succeeds when already gone.
pub async fn remove(host: &Kernel, dir: &Path, workload: &str) -> Result<(), WorkloadNetError> {
    let port = port_name(workload);
    if let Some(l) = host.links().await?.into_iter().find(|l| l.name == port) {
        host.delete(l.index, &format!("delete port {port}")).await?;
    }
    let netns = dir.join(workload);
    let fail = |message: String| WorkloadNetError::Namespace {
        path: netns.clone(),
        message,
    };
    if is_netns_mount(&netns) {
        nix::mount::umount2(&netns, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| fail(e.to_string()))?;
    }
    match std::fs::remove_file(&netns) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(e.to_string())),
        _ => Ok(()),
    }
}
