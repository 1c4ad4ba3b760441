//! A workload's own network namespace and veth port (what a container
//! joins): made in a private test namespace standing in for the host, the
//! port attached to a bridge with the slice's gateway address, then a TCP
//! connection from inside the workload's namespace to the gateway proves
//! address, route and port. Ensuring again changes nothing; a lost port is
//! rebuilt; removal leaves nothing. Runs on this host (no VLAN needed).

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use network_slicing::kernel::Kernel;
use network_slicing::{netns, workload_net};

#[test]
fn a_workload_namespace_with_its_port_reaches_the_gateway() {
    if let Some(why) = common::missing_prerequisite() {
        println!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_path = dir.path().to_path_buf();
    common::in_fresh_netns(move |ns, runtime| {
        runtime.block_on(async {
            ns.add_foreign_bridge("br0", "test bridge").await;
            let br0 = ns.index("br0").await;
            ns.kernel
                .add_address(br0, Ipv4Addr::new(10, 77, 0, 1), 24, "gateway address")
                .await
                .expect("gateway address");
            ns.up("br0").await;

            let address = Some((Ipv4Addr::new(10, 77, 0, 10), 24));
            let gateway = Some(Ipv4Addr::new(10, 77, 0, 1));
            let net = workload_net::ensure(&ns.kernel, &dir_path, "web", address, gateway)
                .await
                .expect("ensure");
            assert_eq!(net.port, workload_net::port_name("web"));
            let port = ns.index(&net.port).await;
            ns.kernel
                .attach(port, br0, "attach port")
                .await
                .expect("attach");

            let listener = TcpListener::bind("10.77.0.1:0").expect("listen on the gateway");
            let target: SocketAddr = listener.local_addr().expect("addr");
            let inside = netns::open_in(&net.netns, move || {
                TcpStream::connect_timeout(&target, Duration::from_secs(3))
            })
            .expect("enter the workload namespace")
            .expect("connect from inside the workload");
            let (_, from) = listener.accept().expect("accept");
            assert_eq!(from.ip(), Ipv4Addr::new(10, 77, 0, 10));
            drop(inside);

            // Ensured again: nothing changes (same eth0 inside).
            let eth0 = || async {
                let inside = Kernel::connect_in_netns(&net.netns).expect("netlink inside");
                inside.index_of("eth0").await.expect("eth0")
            };
            let before = eth0().await;
            let again = workload_net::ensure(&ns.kernel, &dir_path, "web", address, gateway)
                .await
                .expect("ensure again");
            assert_eq!(again, net);
            assert_eq!(eth0().await, before);

            // The host end lost (deleted by someone): the pair is rebuilt.
            ns.delete(&net.port).await;
            workload_net::ensure(&ns.kernel, &dir_path, "web", address, gateway)
                .await
                .expect("rebuild");
            assert!(ns.link_names().await.contains(&net.port));
            let inside = Kernel::connect_in_netns(&net.netns).expect("netlink inside");
            let addresses = inside.ipv4_addresses().await.expect("addresses");
            assert!(addresses
                .iter()
                .any(|(_, a, p)| *a == Ipv4Addr::new(10, 77, 0, 10) && *p == 24));

            workload_net::remove(&ns.kernel, &dir_path, "web")
                .await
                .expect("remove");
            assert!(!ns.link_names().await.contains(&net.port));
            assert!(!net.netns.exists());
            workload_net::remove(&ns.kernel, &dir_path, "web")
                .await
                .expect("remove twice");
        });
    });
}
