//! The VMM process's jail. Before any thread starts, [`Jail::prepare`]
//! gives the process its own mount namespace. Once everything the guest
//! needs is open (/dev/kvm, kernel, initramfs, disks, taps, the console
//! log), [`Jail::enter`] makes its root a fresh tmpfs that holds only the
//! VM's own directory (bind-mounted at its usual path, so the console log
//! and the exit record keep working), forbids gaining privileges, and drops
//! every capability (the bounding set too), so the process cannot get back
//! out of the chroot. The vCPU threads start afterwards and inherit all of
//! it.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The jail's root, inside the kept directory (and hidden by the tmpfs
/// mounted over it in the VMM's own mount namespace).
const JAIL_ROOT: &str = ".jail";
/// linux/capability.h: _LINUX_CAPABILITY_VERSION_3.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Why the jail could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The directory to keep is not an absolute path to a directory.
    #[error("jail directory {0} must be an existing directory, given as an absolute path")]
    BadDirectory(PathBuf),
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// The step.
        what: String,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
}

fn os(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Os { what, source }
}

/// Turns a libc return value into a result (`-1` = the error in errno).
fn check(rc: libc::c_int, what: &str) -> Result<(), SandboxError> {
    if rc == -1 {
        Err(os(what)(std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn c_path(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SandboxError::BadDirectory(path.to_path_buf()))
}

/// How far a VMM confines itself once its guest is set up (see
/// [`crate::Machine::boot_confined`]). The default confines nothing, for
/// tests that share their process with the harness.
#[derive(Debug, Default)]
pub struct Confinement {
    /// The jail to enter: own mount namespace, a root holding only the
    /// VM's directory, no capabilities.
    pub jail: Option<Jail>,
    /// Install the per-thread seccomp filters ([`crate::seccomp`]).
    pub seccomp: bool,
}

/// A jail being built: the process has its own mount namespace.
#[derive(Debug)]
pub struct Jail {
    keep: PathBuf,
}

impl Jail {
    /// Unshares the mount namespace (mounts made from now on stay in this
    /// process) and checks `keep`, the one host directory the jail will
    /// hold. Call it before any thread starts: the kernel refuses a new
    /// mount namespace to a multi-threaded process.
    pub fn prepare(keep: &Path) -> Result<Jail, SandboxError> {
        if !keep.is_absolute() || !keep.is_dir() {
            return Err(SandboxError::BadDirectory(keep.to_path_buf()));
        }
        check(
            // SAFETY: unshare takes flags only.
            unsafe { libc::unshare(libc::CLONE_NEWNS) },
            "unshare the mount namespace",
        )?;
        let root = c_path(Path::new("/"))?;
        check(
            // SAFETY: valid NUL-terminated path; null source, type and data are
            // allowed when only changing propagation.
            unsafe {
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            },
            "make the mounts private",
        )?;
        Ok(Jail {
            keep: keep.to_path_buf(),
        })
    }

    /// The directory the jail keeps.
    pub fn keeps(&self) -> &Path {
        &self.keep
    }

    /// Enters the jail: a tmpfs root holding only the kept directory,
    /// chroot there, no new privileges, no capabilities. Everything the
    /// process needs from the host must be open already.
    pub fn enter(self) -> Result<(), SandboxError> {
        let root = self.keep.join(JAIL_ROOT);
        std::fs::create_dir_all(&root).map_err(os(format!("create {}", root.display())))?;
        let root_c = c_path(&root)?;
        let tmpfs = CString::new("tmpfs").map_err(|_| SandboxError::BadDirectory(root.clone()))?;
        let options = CString::new("size=64k,mode=0755")
            .map_err(|_| SandboxError::BadDirectory(root.clone()))?;
        check(
            // SAFETY: valid NUL-terminated strings; the mount lives in this
            // process's own mount namespace.
            unsafe {
                libc::mount(
                    tmpfs.as_ptr(),
                    root_c.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    options.as_ptr().cast(),
                )
            },
            "mount the jail's tmpfs root",
        )?;
        let relative = self
            .keep
            .strip_prefix("/")
            .map_err(|_| SandboxError::BadDirectory(self.keep.clone()))?;
        let inside = root.join(relative);
        std::fs::create_dir_all(&inside).map_err(os(format!("create {}", inside.display())))?;
        let keep_c = c_path(&self.keep)?;
        let inside_c = c_path(&inside)?;
        check(
            // SAFETY: valid NUL-terminated paths; a bind mount ignores type and
            // data.
            unsafe {
                libc::mount(
                    keep_c.as_ptr(),
                    inside_c.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            },
            "bind the VM's directory into the jail",
        )?;
        check(
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::chroot(root_c.as_ptr()) },
            "chroot into the jail",
        )?;
        let slash = c_path(Path::new("/"))?;
        check(
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::chdir(slash.as_ptr()) },
            "chdir to the jail's root",
        )?;
        drop_privileges()
    }
}

/// No new privileges (exec cannot grant any), an empty bounding set and
/// no effective, permitted or inheritable capabilities, for this thread
/// and the threads it starts afterwards.
fn drop_privileges() -> Result<(), SandboxError> {
    check(
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "set no_new_privs",
    )?;
    for capability in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes integer arguments only; it fails
        // with EINVAL past the last capability the kernel knows.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) } == -1 {
            break;
        }
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let empty = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    check(
        // SAFETY: capset reads a version-3 header and two data structs, which
        // live on this frame for the call.
        unsafe {
            libc::syscall(libc::SYS_capset, &header as *const Header, empty.as_ptr()) as libc::c_int
        },
        "drop all capabilities",
    )
}
