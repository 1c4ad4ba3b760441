//! iperf3 between a slice's workload and the far end of the uplink: the
//! goodput a slice really gets (tests and the slicing benchmark).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use std::collections::BTreeMap;

use super::workload::{configure_far_end, Workload};

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
    /// The client's port (its veth end in the slice's bridge).
    pub port: String,
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

/// The paths of applied `slices` (on up0, with `capacity_kbit`): per slice
/// a workload `10.<net>.<vlan>.11` behind the slice's bridge and a server
/// address `10.<net>.<vlan>.2` on the slice's VLAN at up0's far end, which
/// moves into the returned workload's namespace.
pub fn slice_paths(
    ns: &super::Netns,
    rt: &tokio::runtime::Runtime,
    slices: &[network_slicing::Slice],
    capacity_kbit: u64,
    net: u8,
) -> (Workload, BTreeMap<String, Path>) {
    use network_slicing::names::{link_name, Role};
    let address = |vlan: u16, host: u8| Ipv4Addr::new(10, net, vlan as u8, host);
    let (far, far_ns) = Workload::start(Ipv4Addr::UNSPECIFIED);
    let paths = rt.block_on(async {
        let report = ns
            .slicer(BTreeMap::from([("up0".to_string(), capacity_kbit)]))
            .apply(slices)
            .await
            .expect("apply the slices");
        assert!(!report.changes.is_empty());
        ns.move_into("up0p", &far_ns).await;
        let mut paths = BTreeMap::new();
        for s in slices {
            let bridge = link_name(&s.name, Role::Bridge);
            let port = format!("w{}", s.vlan_id);
            let client = ns
                .add_workload(
                    &port,
                    &bridge,
                    address(s.vlan_id, 11),
                    address(s.vlan_id, 1),
                )
                .await;
            let server = address(s.vlan_id, 2);
            paths.insert(
                s.name.clone(),
                Path {
                    client,
                    server,
                    port,
                },
            );
        }
        paths
    });
    let vlans: Vec<(u16, Ipv4Addr)> = slices
        .iter()
        .map(|s| (s.vlan_id, address(s.vlan_id, 2)))
        .collect();
    far.run(move || configure_far_end("up0p", vlans));
    (far, paths)
}
