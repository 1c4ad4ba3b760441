//! `edge-agent logs <workload>`: a container's stdout and stderr as its
//! monitor wrote them, or a VM's serial console as its VMM wrote it
//! (rotated files included, oldest first).

use std::path::Path;

/// The last `tail` lines (all when `None`) of workload `name`'s logs: a
/// container's under `containers_dir`, else a VM's under `data_dir`.
pub fn read(
    containers_dir: &Path,
    data_dir: &Path,
    name: &str,
    tail: Option<usize>,
) -> Result<Vec<String>, String> {
    mecvisor_protocol::validate::check_name(name).map_err(|e| format!("workload {e}"))?;
    let container = containers::layout::ContainerDir::new(containers_dir, name).logs();
    let vm = crate::runtimes::vms::process::VmDir::new(&data_dir.join("vms"), name).console();
    let Some(dir) = [container, vm].into_iter().find(|d| d.is_dir()) else {
        return Err(format!(
            "no logs for {name:?} on this box (no such container or VM here, or not started yet)"
        ));
    };
    containers::logs::read(&dir, tail).map_err(|e| format!("reading {}: {e}", dir.display()))
}
