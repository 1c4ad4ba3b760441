//! Each VMM runs in a cgroup of its own, `mecvisor-vms/<vm>`, limited to
//! the guest's RAM plus [`VMM_OVERHEAD_MIB`] (what the VMM process and the
//! kernel objects it owns need besides guest RAM: its heap and stacks, page
//! tables, KVM's structures, socket buffers), and to a few tasks more than
//! its vCPU threads. A guest cannot then make its VMM take more of the box
//! than its spec says: at the limit the kernel reclaims the VMM's page cache
//! first, then OOM-kills the VMM, which the agent reports.
//!
//! Cgroup v2 (the edge boxes, any current distribution) is used where it
//! is mounted; otherwise the v1 memory and pids hierarchies (this build
//! host). Without either, VMMs run unconfined and the runtime says so.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Memory a VMM may use besides guest RAM, in MiB. Measured in the edge
/// boxes with a Linux guest booted, reading its disk and answering pings
/// (hil `vm_workload_in_box`): see docs/design.md, "VMM".
pub const VMM_OVERHEAD_MIB: u32 = 32;
/// Tasks allowed besides one per vCPU: the event loop, KVM's own workers
/// that run in the VMM's cgroup (e.g. kvm-nx-lpage-recovery), slack.
const EXTRA_TASKS: u32 = 8;
/// The directory under each hierarchy's root holding one cgroup per VM.
const PARENT: &str = "mecvisor-vms";

/// Where VMM cgroups live on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Cgroup v2, mounted at this path.
    Unified(PathBuf),
    /// Cgroup v1: the memory hierarchy's root and, when mounted, the pids
    /// hierarchy's.
    Legacy {
        /// e.g. /sys/fs/cgroup/memory.
        memory: PathBuf,
        /// e.g. /sys/fs/cgroup/pids.
        pids: Option<PathBuf>,
    },
}

impl Hierarchy {
    /// Finds the hierarchy under `root` (normally /sys/fs/cgroup).
    pub fn detect(root: &Path) -> Option<Hierarchy> {
        if root.join("cgroup.controllers").is_file() {
            return Some(Hierarchy::Unified(root.to_path_buf()));
        }
        let memory = root.join("memory");
        if memory.join("memory.limit_in_bytes").is_file() {
            let pids = Some(root.join("pids")).filter(|p| p.join("cgroup.procs").is_file());
            return Some(Hierarchy::Legacy { memory, pids });
        }
        None
    }
}

/// The cgroup of one VMM.
#[derive(Debug, Clone)]
pub struct VmCgroup {
    /// The memory cgroup (v2: the only one).
    memory: PathBuf,
    /// v1 only: the pids cgroup.
    pids: Option<PathBuf>,
    unified: bool,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

fn make_dir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))
}

impl VmCgroup {
    /// The cgroup of VM `name` in `hierarchy` (not created yet).
    pub fn of(hierarchy: &Hierarchy, name: &str) -> VmCgroup {
        match hierarchy {
            Hierarchy::Unified(root) => VmCgroup {
                memory: root.join(PARENT).join(name),
                pids: None,
                unified: true,
            },
            Hierarchy::Legacy { memory, pids } => VmCgroup {
                memory: memory.join(PARENT).join(name),
                pids: pids.as_ref().map(|p| p.join(PARENT).join(name)),
                unified: false,
            },
        }
    }

    /// Creates the cgroup (or keeps the one a VMM of this VM had) and sets
    /// its limits for a guest of `memory_mib` MiB and `vcpus` vCPUs.
    pub fn prepare(&self, memory_mib: u32, vcpus: u8) -> Result<(), String> {
        let bytes = (u64::from(memory_mib) + u64::from(VMM_OVERHEAD_MIB)) << 20;
        let tasks = (u32::from(vcpus) + EXTRA_TASKS).to_string();
        if self.unified {
            // Controllers reach a cgroup only when every ancestor hands
            // them down; the root and the parent hold no processes of ours.
            let parent = self.memory.parent().ok_or("a VM cgroup has a parent")?;
            let root = parent.parent().ok_or("the parent lies under the root")?;
            make_dir(&self.memory)?;
            for dir in [root, parent] {
                write(&dir.join("cgroup.subtree_control"), "+memory +pids")?;
            }
            write(&self.memory.join("memory.max"), &bytes.to_string())?;
            let swap = self.memory.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
            write(&self.memory.join("pids.max"), &tasks)?;
        } else {
            make_dir(&self.memory)?;
            write(
                &self.memory.join("memory.limit_in_bytes"),
                &bytes.to_string(),
            )?;
            if let Some(pids) = &self.pids {
                make_dir(pids)?;
                write(&pids.join("pids.max"), &tasks)?;
            }
        }
        Ok(())
    }

    /// Opens the files a new process writes "0" to, from its pre-exec
    /// hook, to join the cgroup before it runs anything.
    pub fn join_files(&self) -> Result<Vec<File>, String> {
        std::iter::once(&self.memory)
            .chain(self.pids.iter())
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("opening {}: {e}", path.display()))
            })
            .collect()
    }

    /// How often the kernel's OOM killer struck in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.unified {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.memory.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The memory limit in bytes, as the kernel holds it.
    pub fn memory_limit(&self) -> Option<u64> {
        let file = if self.unified {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::read_to_string(self.memory.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Removes the cgroup once no process is left in it (a VM removed).
    pub fn remove(&self) -> Result<(), String> {
        for dir in std::iter::once(&self.memory).chain(self.pids.iter()) {
            match std::fs::remove_dir(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("removing cgroup {}: {e}", dir.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Writes "0" (the writing process) to each of `files`: the pre-exec hook
/// of a VMM joining its cgroup. Only write(2): async-signal-safe.
pub fn join_self(files: &[File]) -> std::io::Result<()> {
    for mut file in files {
        file.write_all(b"0")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    /// A cgroup made in this machine's real hierarchy, removed (with its
    /// processes killed) when dropped, also when the test fails.
    struct Scratch {
        cgroup: VmCgroup,
        child: Option<Child>,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = self.cgroup.remove();
        }
    }

    fn real_hierarchy() -> Option<Hierarchy> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: cgroups need root");
            return None;
        }
        let found = Hierarchy::detect(Path::new("/sys/fs/cgroup"));
        if found.is_none() {
            eprintln!("SKIPPED: no cgroup memory controller mounted");
        }
        found
    }

    /// Starts `program args` inside `scratch`'s cgroup, as the runtime
    /// starts a VMM.
    fn start_in(scratch: &mut Scratch, program: &str, args: &[&str]) -> i32 {
        let files = scratch.cgroup.join_files().expect("cgroup.procs");
        let mut command = Command::new(program);
        command.args(args);
        // SAFETY: only write(2) on files opened before the fork.
        unsafe {
            command.pre_exec(move || join_self(&files));
        }
        let child = command.spawn().expect("spawn");
        let pid = child.id() as i32;
        scratch.child = Some(child);
        pid
    }

    #[test]
    fn a_vmm_joins_a_cgroup_limited_to_guest_memory_plus_overhead() {
        let Some(hierarchy) = real_hierarchy() else {
            return;
        };
        let name = format!("unit-test-join-{}", std::process::id());
        let mut scratch = Scratch {
            cgroup: VmCgroup::of(&hierarchy, &name),
            child: None,
        };
        scratch.cgroup.prepare(64, 2).expect("prepare");
        assert_eq!(
            scratch.cgroup.memory_limit(),
            Some(u64::from(64 + VMM_OVERHEAD_MIB) << 20)
        );
        let pid = start_in(&mut scratch, "sleep", &["30"]);
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        assert!(
            membership.contains(&format!("/{PARENT}/{name}")),
            "{membership}"
        );
        assert_eq!(scratch.cgroup.oom_kills(), 0);
    }

    #[test]
    fn a_process_past_the_limit_is_oom_killed_and_counted() {
        let Some(hierarchy) = real_hierarchy() else {
            return;
        };
        let name = format!("unit-test-oom-{}", std::process::id());
        let mut scratch = Scratch {
            cgroup: VmCgroup::of(&hierarchy, &name),
            child: None,
        };
        scratch.cgroup.prepare(64, 1).expect("prepare");
        // dd touches its whole 256 MiB block buffer: past 64 + overhead.
        start_in(
            &mut scratch,
            "dd",
            &["if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
        );
        let status = scratch.child.as_mut().expect("child").wait().expect("wait");
        scratch.child = None;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(nix::sys::signal::Signal::SIGKILL as i32),
            "{status}"
        );
        assert!(scratch.cgroup.oom_kills() >= 1);
    }

    #[test]
    fn no_hierarchy_without_a_memory_controller() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Hierarchy::detect(dir.path()), None);
    }
}
