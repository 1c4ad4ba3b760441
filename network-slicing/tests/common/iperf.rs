//! iperf3 between a slice's workload and the far end of the uplink: the
//! goodput a slice really gets (tests and the slicing benchmark).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::workload::Workload;

/// Seconds per measurement, after one omitted second of TCP slow start.
pub const SECONDS: u32 = 4;

/// The iperf3 to run: `MECVISOR_IPERF3`, the lab payload's, or PATH's.
pub fn iperf3() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MECVISOR_IPERF3") {
        return Some(PathBuf::from(path));
    }
    let payload = PathBuf::from("/mnt/payload/iperf3");
    if payload.is_file() {
        return Some(payload);
    }
    Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| PathBuf::from("iperf3"))
}

/// One slice's test set-up: its workload (the client) and its address at
/// the far end (the server).
pub struct Path {
    /// The client's namespace.
    pub client: Workload,
    /// The server's address at the far end.
    pub server: Ipv4Addr,
}

/// Starts an iperf3 server in `far` on the path's server address and
/// `port`, runs a client in the path's workload, and returns (as a thread
/// to join) the receiver's goodput in Mbit/s; `reverse` measures the
/// server-to-client direction (iperf3 -R); `seconds` are measured after
/// one omitted second.
pub fn measure(
    iperf3: &std::path::Path,
    far: &Workload,
    path: &Path,
    port: u16,
    reverse: bool,
    seconds: u32,
) -> std::thread::JoinHandle<f64> {
    let binary = iperf3.to_path_buf();
    let server = path.server;
    let mut daemon = far.run(move || {
        Command::new(&binary)
            .args([
                "-s",
                "-1",
                "-B",
                &server.to_string(),
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the iperf3 server")
    });
    let binary = iperf3.to_path_buf();
    let job = move || {
        // The server needs a moment to listen (longer under emulation).
        for _ in 0..20 {
            let mut args = vec![
                "-c".to_string(),
                server.to_string(),
                "-p".into(),
                port.to_string(),
            ];
            args.extend(["-t".to_string(), seconds.to_string()]);
            args.extend(["-O", "1", "-J"].map(String::from));
            if reverse {
                args.push("-R".into());
            }
            let out = Command::new(&binary)
                .args(&args)
                .output()
                .expect("run iperf3");
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(bps) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
                return bps / 1e6;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("iperf3 never connected to {server}:{port}");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    // Run the client on the workload's thread (its namespace) without
    // blocking the caller: the job hands the result back over a channel.
    let waiter = std::thread::spawn(move || rx.recv().expect("client result"));
    path.client.run_detached(move || {
        let _ = tx.send(job());
    });
    std::thread::spawn(move || {
        let mbit = waiter.join().expect("client");
        let _ = daemon.kill();
        let _ = daemon.wait();
        mbit
    })
}
