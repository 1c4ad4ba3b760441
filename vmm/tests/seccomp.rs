//! The per-thread seccomp filters hold: a thread under the vCPU filter or
//! the event-loop filter that makes a forbidden system call (a socket, an
//! exec) ends the process with exit status 3 and a log line naming the
//! call, and an allowed call still works. Each case runs in a fresh copy
//! of this test binary (a filter cannot be removed, and the harness's own
//! threads must stay free of it).

use std::process::Command;

use mecvisor_vmm::seccomp::{ThreadFilter, ThreadKind, FORBIDDEN_SYSCALL_EXIT};

/// Set in the child: which filter to install and which call to make.
const CASE: &str = "MECVISOR_SECCOMP_CASE";

/// In the child: installs the filter and makes the call; reports what the
/// call returned when it was not stopped.
fn child(case: &str) {
    let (kind, call) = case.split_once(':').expect("kind:call");
    let call = call.to_string();
    let kind = match kind {
        "vcpu" => ThreadKind::Vcpu,
        _ => ThreadKind::EventLoop,
    };
    let filter = ThreadFilter::new(kind).expect("compile the filter");
    // On a thread of its own, as the VMM does: the filter stays there.
    let outcome = std::thread::spawn(move || {
        filter.apply().expect("install the filter");
        match call.as_str() {
            // SAFETY: plain system calls with valid arguments.
            "socket" => unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64 },
            // SAFETY: as above; a null argv/envp is refused, not followed.
            "execve" => unsafe {
                libc::execve(c"/bin/true".as_ptr(), std::ptr::null(), std::ptr::null()) as i64
            },
            // SAFETY: as above.
            "getpid" => unsafe { libc::getpid() as i64 },
            other => panic!("unknown call {other}"),
        }
    })
    .join()
    .expect("the filtered thread");
    println!("returned {}", outcome.signum());
    std::process::exit(0);
}

/// Runs `case` in a fresh copy of this binary; returns its exit code and
/// stderr.
fn run(case: &str) -> (Option<i32>, String, String) {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .output()
        .expect("run the child");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The child's entry point (does nothing in a normal run).
#[test]
fn child_entry() {
    if let Ok(case) = std::env::var(CASE) {
        child(&case);
    }
}

#[test]
fn a_forbidden_call_ends_the_process_naming_it() {
    for (case, number) in [
        ("vcpu:socket", libc::SYS_socket),
        ("vcpu:execve", libc::SYS_execve),
        ("event-loop:socket", libc::SYS_socket),
        ("event-loop:execve", libc::SYS_execve),
    ] {
        let (code, stdout, stderr) = run(case);
        assert_eq!(
            code,
            Some(FORBIDDEN_SYSCALL_EXIT),
            "{case}: stdout {stdout}\nstderr {stderr}"
        );
        assert!(
            stderr.contains(&format!("made system call {number},")),
            "{case}: {stderr}"
        );
        assert!(
            !stdout.contains("returned"),
            "{case}: the call went through"
        );
    }
}

#[test]
fn an_allowed_call_goes_through() {
    for case in ["vcpu:getpid", "event-loop:getpid"] {
        let (code, stdout, stderr) = run(case);
        assert_eq!(code, Some(0), "{case}: {stderr}");
        assert!(stdout.contains("returned 1"), "{case}: {stdout}");
    }
}
