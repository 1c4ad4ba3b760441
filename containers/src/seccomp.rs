//! The default seccomp profile: every system call is allowed except the
//! ones a container has no business making — kernel modules, kexec,
//! reboot, swap, clock and key management, BPF and perf, mounting and
//! namespace games, tracing other processes. A denied call fails with
//! EPERM (programs see "operation not permitted" rather than dying), the
//! same answer Docker's profile gives.
//!
//! A deny list, unlike Docker's allow list, keeps working when a guest
//! program uses a system call newer than this list; the price is that a
//! new dangerous call is allowed until it is added here.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder,
};

/// System calls the default profile refuses.
pub const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
];

/// EPERM, returned for denied calls.
const EPERM: u32 = 1;

/// The profile for the architecture this agent runs on.
pub fn default_profile() -> LinuxSeccomp {
    let arch = if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    };
    let deny = LinuxSyscallBuilder::default()
        .names(DENIED.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .build();
    let mut builder = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(arch);
    if let Ok(deny) = deny {
        builder = builder.syscalls(vec![deny]);
    }
    // The builder only fails on missing required fields, all set above.
    builder.build().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_the_listed_calls_with_eperm_and_allows_the_rest() {
        let profile = default_profile();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
        let syscalls = profile.syscalls().clone().expect("rules");
        assert_eq!(syscalls.len(), 1);
        assert_eq!(syscalls[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(syscalls[0].errno_ret(), Some(EPERM));
        assert_eq!(syscalls[0].names().len(), DENIED.len());
        assert!(syscalls[0].names().iter().any(|n| n == "kexec_load"));
    }
}
