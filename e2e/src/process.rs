//! Child processes that die with their guard, free ports, polling.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Child {
    inner: std::process::Child,
    name: String,
}

impl Child {
    /// Starts `command`, naming it `name` in messages.
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        let inner = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Child {
            inner,
            name: name.to_string(),
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// Sends a signal (e.g. `libc::SIGTERM` = 15) and waits up to `timeout`
    /// for the process to exit; returns whether it did.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> bool {
        // SAFETY: kill(2) with a pid we own (not yet reaped) and a plain signal number.
        unsafe { kill(self.inner.id() as i32, signal) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.inner.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.inner.kill();
        let _ = self.inner.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.inner.try_wait(), Ok(None))
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Path of a workspace binary (`edge-agent`, `fleet-controller`, `fleetctl`),
/// next to the test executable's `deps/` folder, or in `$MECVISOR_BIN_DIR`
/// when set (e.g. release binaries for a benchmark). Build them first
/// (`cargo build --workspace --bins`; `cargo xtask test` does).
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("MECVISOR_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("target/<profile>/deps")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (cargo xtask test does)",
        path.display()
    );
    path
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
