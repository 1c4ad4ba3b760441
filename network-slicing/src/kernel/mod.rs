//! The kernel side: a netlink connection (in this or another network
//! namespace) and the link operations slices need.

mod links;
mod sysctl;
mod tc;

pub use links::{Link, LinkKind};
pub use tc::{Class, Counters, Filter, Qdisc, CLSACT_PARENT, INGRESS_PARENT};

use std::path::Path;

use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, LinkVlan, RouteMessageBuilder};

use crate::names::LINK_GROUP;

/// Why a kernel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The network namespace could not be entered.
    #[error(transparent)]
    Namespace(#[from] crate::netns::NetnsError),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Netlink {
        /// The request, e.g. "create bridge mvb1234abcd".
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A per-link setting under /proc/sys could not be read or written.
    #[error("{what}: {source}")]
    Sysctl {
        /// The change, e.g. "enable forwarding on mvb1234abcd".
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A link named in a plan is gone.
    #[error("link {0} does not exist")]
    NoSuchLink(String),
}

/// A netlink connection to one network namespace.
#[derive(Clone)]
pub struct Kernel {
    handle: rtnetlink::Handle,
    /// The namespace connected to, when not the caller's.
    netns: Option<std::path::PathBuf>,
}

impl Kernel {
    /// Connects in the caller's network namespace. Must run inside a tokio
    /// runtime (the connection task is spawned on it).
    pub fn connect() -> Result<Kernel, KernelError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
        tokio::spawn(connection);
        Ok(Kernel {
            handle,
            netns: None,
        })
    }

    /// Connects in the network namespace at `path` (e.g. `/run/netns/x`):
    /// the socket is opened by a helper thread that entered that namespace;
    /// a socket stays in the namespace it was opened in.
    pub fn connect_in_netns(path: &Path) -> Result<Kernel, KernelError> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = crate::netns::open_in(path, || {
            let _runtime = runtime.enter();
            rtnetlink::new_connection()
        })?
        .map_err(KernelError::Socket)?;
        tokio::spawn(connection);
        Ok(Kernel {
            handle,
            netns: Some(path.to_path_buf()),
        })
    }

    /// Creates a veth pair `name` <-> `peer` (both here, down).
    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<(), KernelError> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(refused(format!("create veth {name} <-> {peer}")))
    }

    /// Moves link `index` into the network namespace open as `netns`.
    pub async fn move_to_netns(
        &self,
        index: u32,
        netns: &std::fs::File,
        what: &str,
    ) -> Result<(), KernelError> {
        use std::os::fd::AsRawFd;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(netns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(refused(what))
    }

    /// Renames link `index` (it must be down).
    pub async fn rename(&self, index: u32, name: &str, what: &str) -> Result<(), KernelError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .name(name.to_string())
                    .build(),
            )
            .execute()
            .await
            .map_err(refused(what))
    }

    /// Adds the default route via `gateway` (replacing one that exists).
    pub async fn set_default_route(&self, gateway: std::net::Ipv4Addr) -> Result<(), KernelError> {
        let route = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(refused(format!("default route via {gateway}")))
    }

    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<Link>, KernelError> {
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(message) = stream.try_next().await.map_err(refused("list links"))? {
            links.push(Link::from_message(&message));
        }
        Ok(links)
    }

    /// The index of the link called `name`.
    pub async fn index_of(&self, name: &str) -> Result<u32, KernelError> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(Some(message)) => Ok(message.header.index),
            Ok(None) | Err(_) => Err(KernelError::NoSuchLink(name.to_string())),
        }
    }

    /// Every IPv4 address: (link index, address, prefix length).
    pub async fn ipv4_addresses(&self) -> Result<Vec<(u32, std::net::Ipv4Addr, u8)>, KernelError> {
        let mut stream = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(message) = stream.try_next().await.map_err(refused("list addresses"))? {
            for attribute in &message.attributes {
                if let AddressAttribute::Address(std::net::IpAddr::V4(v4)) = attribute {
                    out.push((message.header.index, *v4, message.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Creates a bridge in mecvisor's link group, administratively up.
    pub async fn create_bridge(&self, name: &str) -> Result<(), KernelError> {
        let message = LinkBridge::new(name).link_group(LINK_GROUP).up().build();
        let request = self.handle.link().add(message).execute();
        request
            .await
            .map_err(refused(format!("create bridge {name}")))
    }

    /// Creates a VLAN sub-interface of `parent` in mecvisor's link group.
    pub async fn create_vlan(
        &self,
        name: &str,
        parent: u32,
        vlan_id: u16,
    ) -> Result<(), KernelError> {
        let message = LinkVlan::new(name, parent, vlan_id)
            .link_group(LINK_GROUP)
            .build();
        let request = self.handle.link().add(message).execute();
        request
            .await
            .map_err(refused(format!("create VLAN {vlan_id} link {name}")))
    }

    /// Creates an ifb (intermediate functional block) in mecvisor's link
    /// group: incoming traffic redirected to it is shaped on its egress.
    pub async fn create_ifb(&self, name: &str) -> Result<(), KernelError> {
        let message = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(
            netlink_packet_route::link::InfoKind::Ifb,
        )
        .name(name)
        .link_group(LINK_GROUP)
        .build();
        let request = self.handle.link().add(message).execute();
        request.await.map_err(refused(format!("create ifb {name}")))
    }

    /// Enslaves link `index` to the bridge `controller`.
    pub async fn attach(&self, index: u32, controller: u32, what: &str) -> Result<(), KernelError> {
        let message = LinkUnspec::new_with_index(index)
            .controller(controller)
            .build();
        self.set(message, what).await
    }

    /// Adds `address`/`prefix` to link `index`.
    pub async fn add_address(
        &self,
        index: u32,
        address: std::net::Ipv4Addr,
        prefix: u8,
        what: &str,
    ) -> Result<(), KernelError> {
        let request = self
            .handle
            .address()
            .add(index, std::net::IpAddr::V4(address), prefix)
            .execute();
        request.await.map_err(refused(what))
    }

    /// Removes `address`/`prefix` from link `index` (nothing if absent).
    pub async fn remove_address(
        &self,
        index: u32,
        address: std::net::Ipv4Addr,
        prefix: u8,
        what: &str,
    ) -> Result<(), KernelError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(message) = stream.try_next().await.map_err(refused(what))? {
            let matches = message.header.prefix_len == prefix
                && message.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Address(std::net::IpAddr::V4(v4)) if *v4 == address)
                });
            if matches {
                let request = self.handle.address().del(message).execute();
                return request.await.map_err(refused(what));
            }
        }
        Ok(())
    }

    /// Releases link `index` from its bridge.
    pub async fn detach(&self, index: u32, what: &str) -> Result<(), KernelError> {
        let message = LinkUnspec::new_with_index(index).nocontroller().build();
        self.set(message, what).await
    }

    /// Sets the alias of link `index`.
    pub async fn set_alias(&self, index: u32, alias: &str, what: &str) -> Result<(), KernelError> {
        let message = LinkUnspec::new_with_index(index).alias(alias).build();
        self.set(message, what).await
    }

    /// Sets link `index` administratively up.
    pub async fn set_up(&self, index: u32, what: &str) -> Result<(), KernelError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.set(message, what).await
    }

    /// Deletes link `index`.
    pub async fn delete(&self, index: u32, what: &str) -> Result<(), KernelError> {
        let request = self.handle.link().del(index).execute();
        request.await.map_err(refused(what))
    }

    async fn set(
        &self,
        message: netlink_packet_route::link::LinkMessage,
        what: &str,
    ) -> Result<(), KernelError> {
        let request = self.handle.link().set(message).execute();
        request.await.map_err(refused(what))
    }
}

/// Wraps the kernel's refusal of the request `what`.
pub(crate) fn refused(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Netlink { what, source }
}

/// The link attribute holding an alias (for tests and diagnostics).
pub fn alias_of(attributes: &[LinkAttribute]) -> Option<&str> {
    attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
        _ => None,
    })
}
