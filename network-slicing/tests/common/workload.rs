//! Stand-in workloads: each is a thread in its own network namespace with a
//! veth port into a bridge of the test's namespace, an address and a default
//! route via the slice's gateway. Sockets are created inside the workload's
//! namespace (by its thread) and then used from the test thread. Probes
//! speak ICMP, TCP and UDP with real sockets. Everything dies with the
//! threads: nothing outlives the test.

use std::fs::File;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::Netns;

type Job = Box<dyn FnOnce() + Send>;

/// A workload: a thread parked in its own network namespace.
pub struct Workload {
    /// Its address.
    pub address: Ipv4Addr,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Workload {
    /// A thread in a fresh network namespace (nothing configured yet), and
    /// a handle on that namespace to move links into.
    pub fn start(address: Ipv4Addr) -> (Workload, File) {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ns_tx, ns_rx) = mpsc::channel::<File>();
        let thread = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let ns = File::open("/proc/thread-self/ns/net").expect("own netns");
            ns_tx.send(ns).expect("send netns");
            for job in inbox {
                job();
            }
        });
        let ns = ns_rx.recv().expect("workload netns");
        let workload = Workload {
            address,
            jobs: Some(jobs),
            thread: Some(thread),
        };
        (workload, ns)
    }

    /// Queues `job` on the workload's thread without waiting for it.
    pub fn run_detached(&self, job: impl FnOnce() + Send + 'static) {
        let jobs = self.jobs.as_ref().expect("workload alive");
        jobs.send(Box::new(job)).expect("workload thread alive");
    }

    /// Runs `job` on the workload's thread (inside its namespace).
    pub fn run<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let jobs = self.jobs.as_ref().expect("workload alive");
        jobs.send(Box::new(move || {
            let _ = tx.send(job());
        }))
        .expect("workload thread alive");
        rx.recv().expect("workload job finished")
    }
}

impl Netns {
    /// Starts a workload whose port `port` joins `bridge`, with `address`/24
    /// and a default route via `gateway`.
    pub async fn add_workload(
        &self,
        port: &str,
        bridge: &str,
        address: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> Workload {
        let (workload, ns) = Workload::start(address);
        self.handle
            .link()
            .add(LinkVeth::new(port, "eth0").build())
            .execute()
            .await
            .expect("workload veth");
        self.move_into("eth0", &ns).await;
        let index = self.index(port).await;
        let controller = self.index(bridge).await;
        self.kernel
            .attach(index, controller, "attach workload")
            .await
            .expect("attach port");
        self.up(port).await;
        workload.run(move || configure(address, gateway));
        workload
    }

    /// Moves link `name` into the namespace `ns`.
    pub async fn move_into(&self, name: &str, ns: &File) {
        let index = self.index(name).await;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .expect("move a link into another namespace");
    }

    /// Adds `address`/`prefix` to link `name`.
    pub async fn add_address(&self, name: &str, address: Ipv4Addr, prefix: u8) {
        let index = self.index(name).await;
        self.handle
            .address()
            .add(index, IpAddr::V4(address), prefix)
            .execute()
            .await
            .expect("add address");
    }
}

/// Runs `job` with a netlink connection in the calling thread's namespace,
/// on a runtime of its own (workload threads have none).
fn with_netlink<F: std::future::Future<Output = ()>>(job: impl FnOnce(rtnetlink::Handle) -> F) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection().expect("netlink");
        tokio::spawn(connection);
        job(handle).await;
    });
}

/// Inside the workload: lo and eth0 up, the address, the default route.
fn configure(address: Ipv4Addr, gateway: Ipv4Addr) {
    with_netlink(|handle| async move {
        for name in ["lo", "eth0"] {
            let link = super::link_message(&handle, name).await;
            super::set_link_up(&handle, link.header.index).await;
            if name == "eth0" {
                handle
                    .address()
                    .add(link.header.index, IpAddr::V4(address), 24)
                    .execute()
                    .await
                    .expect("address");
            }
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        handle
            .route()
            .add(route)
            .execute()
            .await
            .expect("default route");
    });
}

/// How long a probe waits for an answer that a drop rule would swallow.
const PATIENCE: Duration = Duration::from_millis(700);

/// Whether `from` gets a TCP connection to `to` (port 7001), with data
/// echoed both ways.
pub fn tcp_reaches(from: &Workload, to: &Workload) -> bool {
    let listener = to.run(|| TcpListener::bind("0.0.0.0:7001").expect("listen"));
    let target = SocketAddr::V4(SocketAddrV4::new(to.address, 7001));
    let stream = from.run(move || TcpStream::connect_timeout(&target, PATIENCE));
    let Ok(mut stream) = stream else {
        return false;
    };
    let (mut accepted, _) = listener.accept().expect("accept");
    stream.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).expect("read");
    buf == *b"ping"
}

/// Whether a UDP datagram from `from` arrives at `to` (port 7002).
pub fn udp_reaches(from: &Workload, to: &Workload) -> bool {
    let receiver = to.run(|| UdpSocket::bind("0.0.0.0:7002").expect("bind"));
    receiver.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let sender = from.run(|| UdpSocket::bind("0.0.0.0:0").expect("bind"));
    sender
        .send_to(b"hello", SocketAddrV4::new(to.address, 7002))
        .expect("send");
    let mut buf = [0u8; 16];
    matches!(receiver.recv_from(&mut buf), Ok((5, _)))
}

/// Whether `from` gets an ICMP echo reply from `to` (raw socket; root).
pub fn icmp_reaches(from: &Workload, to: Ipv4Addr) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = from.run(|| {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw ICMP socket")
    });
    socket.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let id: u16 = 0x6d76;
    let mut request = vec![8, 0, 0, 0, (id >> 8) as u8, id as u8, 0, 1, b'm', b'v'];
    let sum = checksum(&request);
    request[2..4].copy_from_slice(&sum.to_be_bytes());
    let target = SocketAddr::V4(SocketAddrV4::new(to, 0));
    socket
        .send_to(&request, &target.into())
        .expect("send echo request");
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        let mut buf = [MaybeUninit::<u8>::uninit(); 256];
        let Ok((len, source)) = socket.recv_from(&mut buf) else {
            return false;
        };
        // SAFETY: recv_from initialised the first `len` bytes.
        let packet: Vec<u8> = buf[..len]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let header = usize::from(packet.first().copied().unwrap_or(0) & 0x0f) * 4;
        let reply = packet.get(header..).unwrap_or_default();
        let from_target = source.as_socket_ipv4().map(|s| *s.ip()) == Some(to);
        if from_target && reply.len() >= 8 && reply[0] == 0 && reply[4..6] == id.to_be_bytes() {
            return true;
        }
    }
    false
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Inside a workload: `link` up (with lo), and per `(vlan, address)` a VLAN
/// link `v<vlan>` on it with `address`/24: the far end of an uplink, where
/// each slice's VLAN arrives.
pub fn configure_far_end(link: &'static str, vlans: Vec<(u16, Ipv4Addr)>) {
    with_netlink(|handle| async move {
        let index_of = |name: String| {
            let handle = handle.clone();
            async move { super::link_message(&handle, &name).await.header.index }
        };
        let up = |index: u32| {
            let handle = handle.clone();
            async move { super::set_link_up(&handle, index).await }
        };
        up(index_of("lo".into()).await).await;
        let parent = index_of(link.into()).await;
        up(parent).await;
        for (vlan, address) in vlans {
            let name = format!("v{vlan}");
            handle
                .link()
                .add(rtnetlink::LinkVlan::new(&name, parent, vlan).up().build())
                .execute()
                .await
                .expect("far-end VLAN link");
            let index = index_of(name).await;
            handle
                .address()
                .add(index, IpAddr::V4(address), 24)
                .execute()
                .await
                .expect("far-end address");
        }
    });
}
