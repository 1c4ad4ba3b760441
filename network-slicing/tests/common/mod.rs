//! Test fixture: a fresh network namespace for one test, made by the test's
//! own thread (unshare), with a veth pair whose end `up0` (192.168.77.2/24)
//! stands in for a box's uplink. Set up through netlink, so it also runs
//! inside the emulated edge boxes, which have busybox but no iproute2. The
//! namespace dies with the thread: nothing is left behind, also on panic.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use network_slicing::kernel::{Kernel, Link};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, LinkVlan};

/// The namespace a test runs in, and a netlink handle for its fixtures.
pub struct Netns {
    handle: rtnetlink::Handle,
    /// The code under test's connection to the same namespace.
    pub kernel: Kernel,
}

/// Runs `test` on a thread in a fresh network namespace with `up0` set up.
pub fn in_fresh_netns<T: Send + 'static>(
    test: impl FnOnce(&Netns, &tokio::runtime::Runtime) -> T + Send + 'static,
) -> T {
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        // No IPv6 on the namespace's links: no router solicitations or MLD
        // reports sent on their own, so packet counters count only what a
        // test sends. (Absent without IPv6 in the kernel; then nothing to do.)
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let ns = runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection().expect("netlink");
            tokio::spawn(connection);
            let kernel = Kernel::connect().expect("netlink for the code under test");
            let ns = Netns { handle, kernel };
            ns.up("lo").await;
            ns.handle
                .link()
                .add(LinkVeth::new("up0", "up0p").build())
                .execute()
                .await
                .expect("veth up0/up0p");
            let up0 = ns.index("up0").await;
            ns.handle
                .address()
                .add(up0, IpAddr::V4(Ipv4Addr::new(192, 168, 77, 2)), 24)
                .execute()
                .await
                .expect("address on up0");
            ns.up("up0").await;
            ns.up("up0p").await;
            ns
        });
        test(&ns, &runtime)
    });
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl Netns {
    /// Index of a link.
    pub async fn index(&self, name: &str) -> u32 {
        self.kernel.index_of(name).await.expect("link exists")
    }

    /// Sets a link up.
    pub async fn up(&self, name: &str) {
        let index = self.index(name).await;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .expect("set up");
    }

    /// Adds a bridge the operator made (with an alias that is not ours).
    pub async fn add_foreign_bridge(&self, name: &str, alias: &str) {
        self.handle
            .link()
            .add(LinkBridge::new(name).alias(alias).build())
            .execute()
            .await
            .expect("foreign bridge");
    }

    /// Tries to add a VLAN link; whether the kernel could.
    pub async fn try_add_vlan(&self, name: &str, parent: &str, id: u16) -> bool {
        let parent = self.index(parent).await;
        self.handle
            .link()
            .add(LinkVlan::new(name, parent, id).build())
            .execute()
            .await
            .is_ok()
    }

    /// Adds a veth pair, both ends up.
    pub async fn add_veth(&self, name: &str, peer: &str) {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .expect("veth pair");
        self.up(name).await;
        self.up(peer).await;
    }

    /// Deletes a link.
    pub async fn delete(&self, name: &str) {
        let index = self.index(name).await;
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .expect("delete link");
    }

    /// Every link, sorted by name.
    pub async fn links(&self) -> Vec<Link> {
        let mut links = self.kernel.links().await.expect("list links");
        links.sort_by(|a, b| a.name.cmp(&b.name));
        links
    }

    /// Link names, sorted.
    pub async fn link_names(&self) -> Vec<String> {
        self.links().await.into_iter().map(|l| l.name).collect()
    }

    /// Prints why `test` skips and returns true when the kernel cannot make
    /// VLAN links.
    pub async fn skip_without_vlans(&self, test: &str) -> bool {
        let missing = !self.vlan_supported().await;
        if missing {
            eprintln!(
                "SKIPPED {test}: this kernel has no 802.1Q VLAN links (8021q); \
                 the hil suite runs it inside the emulated edge boxes"
            );
        }
        missing
    }

    /// Whether the kernel can make 802.1Q VLAN links (this development
    /// host's kernel cannot; the emulated edge boxes can).
    pub async fn vlan_supported(&self) -> bool {
        let ok = self.try_add_vlan("vprobe", "up0", 4094).await;
        if ok {
            self.delete("vprobe").await;
        }
        ok
    }
}

/// Why these tests cannot run here, if they cannot.
pub fn missing_prerequisite() -> Option<String> {
    (!nix::unistd::geteuid().is_root()).then(|| "needs root (network namespaces)".into())
}

pub mod workload;

/// Sets `net.ipv4.ip_forward` in the calling thread's namespace.
pub fn set_ip_forward(on: bool) {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", if on { "1" } else { "0" })
        .expect("ip_forward");
}

pub mod frames;
pub mod iperf;

impl Netns {
    /// A slicer for this namespace (links, tc and nftables).
    pub fn slicer(
        &self,
        capacities: std::collections::BTreeMap<String, u64>,
    ) -> network_slicing::Slicer {
        let nft = network_slicing::isolation::NfTables::open().expect("nf_tables socket");
        network_slicing::Slicer::new(self.kernel.clone(), nft, capacities)
    }

    /// The MAC address of a link.
    pub async fn mac(&self, name: &str) -> [u8; 6] {
        link_message(&self.handle, name)
            .await
            .attributes
            .iter()
            .find_map(|a| match a {
                netlink_packet_route::link::LinkAttribute::Address(mac) => {
                    <[u8; 6]>::try_from(mac.as_slice()).ok()
                }
                _ => None,
            })
            .expect("link has a MAC address")
    }
}

/// The link called `name`, through `handle` (in whichever namespace that
/// connection lives).
pub async fn link_message(
    handle: &rtnetlink::Handle,
    name: &str,
) -> netlink_packet_route::link::LinkMessage {
    use futures_util::TryStreamExt;
    handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
        .expect("get link")
        .expect("link exists")
}

/// Sets link `index` up through `handle`.
pub async fn set_link_up(handle: &rtnetlink::Handle, index: u32) {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .expect("set link up");
}
