//! The allow-lists. Each names the system calls a thread makes once the
//! guest runs, with both C libraries the VMM is built against (glibc for
//! host builds, musl for the static edge-box binary); anything missing
//! shows up as a trap naming the call (see `trap.rs`).

use std::collections::BTreeMap;

use kvm_bindings::KVMIO;
use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// Rules keyed by system call number; an empty list allows every call.
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
#[cfg(target_arch = "x86_64")]
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
#[cfg(target_arch = "aarch64")]
vmm_sys_util::ioctl_iow_nr!(KVM_GET_ONE_REG, KVMIO, 0xab, kvm_bindings::kvm_one_reg);

/// FIONBIO (asm-generic, so x86_64 and aarch64 alike); spelled out because
/// glibc and musl give libc's constant different integer types.
const FIONBIO: u64 = 0x5421;

/// What every thread needs: memory, locks, signals, time, its own end,
/// writing logs, and the files it already has open.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Rotating the console log, writing the exit record: inside the jail,
    // which holds only the VM's directory.
    libc::SYS_openat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    // The vsock device's host side: Unix sockets in the VM's directory
    // (socket(2) itself is allowed for AF_UNIX only, see `unix_sockets`).
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_shutdown,
    libc::SYS_timerfd_settime,
];

/// The older x86_64 names of the calls above that a C library may use.
#[cfg(target_arch = "x86_64")]
const COMMON_ARCH: &[i64] = &[libc::SYS_open, libc::SYS_rename, libc::SYS_unlink];
#[cfg(target_arch = "aarch64")]
const COMMON_ARCH: &[i64] = &[];

/// Disk I/O of virtio-blk, served on the vCPU thread that notified.
const VCPU_ONLY: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
];

/// Waiting on the device and signal fds.
const EVENT_LOOP_ONLY: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
];
#[cfg(target_arch = "x86_64")]
const EVENT_LOOP_ARCH: &[i64] = &[libc::SYS_epoll_wait];
#[cfg(target_arch = "aarch64")]
const EVENT_LOOP_ARCH: &[i64] = &[];

/// The ioctls a vCPU thread makes: KVM_RUN, reading the instruction
/// pointer when the guest fails, and making a vsock stream non-blocking.
fn vcpu_ioctls() -> Vec<u64> {
    #[cfg(target_arch = "x86_64")]
    let registers = KVM_GET_REGS();
    #[cfg(target_arch = "aarch64")]
    let registers = KVM_GET_ONE_REG();
    vec![KVM_RUN(), registers, FIONBIO]
}

/// `socket` only for the Unix domain (the vsock device's host side).
fn unix_sockets() -> Result<Vec<SeccompRule>, BackendError> {
    Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_UNIX as u64,
    )?])?])
}

fn allow_all<'a>(rules: &mut Rules, calls: impl IntoIterator<Item = &'a i64>) {
    for call in calls {
        rules.insert(*call, Vec::new());
    }
}

/// `ioctl` only with one of `requests` as its second argument.
fn ioctl_requests(requests: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    requests
        .iter()
        .map(|request| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::Eq,
                *request,
            )?])
        })
        .collect()
}

/// A vCPU thread's rules.
pub fn vcpu() -> Result<Rules, BackendError> {
    let mut rules = Rules::new();
    allow_all(
        &mut rules,
        COMMON.iter().chain(COMMON_ARCH).chain(VCPU_ONLY),
    );
    rules.insert(libc::SYS_ioctl, ioctl_requests(&vcpu_ioctls())?);
    rules.insert(libc::SYS_socket, unix_sockets()?);
    Ok(rules)
}

/// The event-loop thread's rules (the only ioctl: making an accepted vsock
/// stream non-blocking).
pub fn event_loop() -> Result<Rules, BackendError> {
    let mut rules = Rules::new();
    allow_all(
        &mut rules,
        COMMON
            .iter()
            .chain(COMMON_ARCH)
            .chain(EVENT_LOOP_ONLY)
            .chain(EVENT_LOOP_ARCH),
    );
    rules.insert(libc::SYS_ioctl, ioctl_requests(&[FIONBIO])?);
    rules.insert(libc::SYS_socket, unix_sockets()?);
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_vcpu_thread_may_do_disk_io_and_kvm_ioctls() {
        let vcpu = vcpu().expect("vcpu rules");
        let event_loop = event_loop().expect("event-loop rules");
        assert!(vcpu.contains_key(&libc::SYS_pwrite64));
        assert!(!event_loop.contains_key(&libc::SYS_pwrite64));
        assert_eq!(
            vcpu[&libc::SYS_ioctl].len(),
            3,
            "KVM_RUN, a register read, FIONBIO"
        );
        assert_eq!(event_loop[&libc::SYS_ioctl].len(), 1, "FIONBIO only");
        assert!(event_loop.contains_key(&libc::SYS_epoll_pwait));
    }

    #[test]
    #[allow(clippy::unnecessary_cast)] // c_ulong with glibc, c_int with musl
    fn fionbio_is_the_c_librarys() {
        assert_eq!(FIONBIO, libc::FIONBIO as u64);
    }

    #[test]
    fn neither_thread_may_start_programs_or_change_namespaces() {
        for rules in [vcpu().expect("vcpu"), event_loop().expect("event loop")] {
            assert_eq!(rules[&libc::SYS_socket].len(), 1, "AF_UNIX only");
            for call in [
                libc::SYS_execve,
                libc::SYS_clone,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_setns,
                libc::SYS_unshare,
                libc::SYS_kill,
            ] {
                assert!(!rules.contains_key(&call), "syscall {call} allowed");
            }
        }
    }
}
