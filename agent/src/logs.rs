//! `edge-agent logs <workload>`: a container's stdout and stderr as its
//! monitor wrote them (rotated files included, oldest first).

use std::path::Path;

/// The last `tail` lines (all when `None`) of workload `name`'s logs under
/// the agent's data directory.
pub fn read(data_dir: &Path, name: &str, tail: Option<usize>) -> Result<Vec<String>, String> {
    mecvisor_protocol::validate::check_name(name).map_err(|e| format!("workload {e}"))?;
    let dir = containers::layout::ContainerDir::new(data_dir, name).logs();
    if !dir.is_dir() {
        return Err(format!(
            "no logs for {name:?} on this box (not a container here, or not started yet)"
        ));
    }
    containers::logs::read(&dir, tail).map_err(|e| format!("reading {}: {e}", dir.display()))
}
