//! Links as read back from the kernel.

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use super::alias_of;

/// What kind of link it is, as far as slices care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// A bridge.
    Bridge,
    /// An 802.1Q VLAN sub-interface with this id.
    Vlan(u16),
    /// Anything else (physical NIC, veth, tap, ...), by kind name.
    Other(String),
}

/// One link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Kind.
    pub kind: LinkKind,
    /// Interface alias (mecvisor's ownership mark lives here).
    pub alias: Option<String>,
    /// Bridge it is enslaved to.
    pub controller: Option<u32>,
    /// Lower link (the uplink of a VLAN).
    pub parent: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// Link group (mecvisor's own links are in [`crate::names::LINK_GROUP`]).
    pub group: u32,
}

impl Link {
    /// Reads the fields slices need out of a netlink link message.
    pub fn from_message(message: &LinkMessage) -> Link {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            kind: LinkKind::Other(String::new()),
            alias: alias_of(&message.attributes).map(str::to_string),
            controller: None,
            parent: None,
            up: message.header.flags.contains(LinkFlags::Up),
            group: 0,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Controller(index) => link.controller = Some(*index),
                LinkAttribute::Link(index) => link.parent = Some(*index),
                LinkAttribute::Group(group) => link.group = *group,
                LinkAttribute::LinkInfo(infos) => link.kind = kind_of(infos),
                _ => {}
            }
        }
        link
    }

    /// Whether mecvisor created this link.
    pub fn is_ours(&self) -> bool {
        self.group == crate::names::LINK_GROUP
    }
}

fn kind_of(infos: &[LinkInfo]) -> LinkKind {
    let mut kind = LinkKind::Other(String::new());
    for info in infos {
        match info {
            LinkInfo::Kind(InfoKind::Bridge) => kind = LinkKind::Bridge,
            LinkInfo::Kind(InfoKind::Vlan) => kind = LinkKind::Vlan(0),
            LinkInfo::Kind(other) => kind = LinkKind::Other(other.to_string()),
            LinkInfo::Data(InfoData::Vlan(data)) => {
                for item in data {
                    if let InfoVlan::Id(id) = item {
                        kind = LinkKind::Vlan(*id);
                    }
                }
            }
            _ => {}
        }
    }
    kind
}
