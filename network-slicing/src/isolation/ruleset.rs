//! The isolation ruleset mecvisor wants, as data: one nftables table
//! `inet mecvisor` with a forward chain that drops every packet routed from
//! one slice's bridge to any other link of mecvisor's (another slice's
//! bridge or VLAN link), and counts what it dropped. Pure: unit-tested.
//!
//! Bridged traffic inside a slice never leaves its bridge, and a slice's
//! VLAN link is a port of that bridge only, so layer 2 is separate by
//! construction; this chain closes layer 3, where a host with
//! `ip_forward=1` and gateway addresses on two bridges would route between
//! slices.

use sha2::{Digest, Sha256};

use mecvisor_protocol::IpProtocol;

use super::wire::{expressions, ifname, Expr, MetaKey, PayloadBase, Verdict};
use crate::model::Port;
use crate::names::{link_name, Role, LINK_GROUP};

/// Name of mecvisor's table (family inet); no other table is touched.
pub const TABLE: &str = "mecvisor";
/// The forward chain.
pub const FORWARD_CHAIN: &str = "forward";
/// `NF_INET_FORWARD`.
pub const HOOK_FORWARD: u32 = 2;
/// Runs before the usual filter chains (priority 0), so an operator's
/// accept cannot let slice-crossing traffic through first.
pub const FORWARD_PRIORITY: i32 = -10;

/// A base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Chain name.
    pub name: String,
    /// Netfilter hook number.
    pub hook: u32,
    /// Hook priority.
    pub priority: i32,
}

/// A rule and the tag that identifies it when read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Chain it belongs to.
    pub chain: String,
    /// Its expressions.
    pub exprs: Vec<Expr>,
    /// Stored as the rule's user data: `slice=<name> <digest of the
    /// expressions>`; equal tags mean equal rules.
    pub tag: String,
}

/// Everything in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Base chains.
    pub chains: Vec<Chain>,
    /// Rules, in order.
    pub rules: Vec<Rule>,
}

impl Ruleset {
    /// The rules that keep `slices` apart (empty when there are none).
    pub fn for_slices<'a>(slices: impl IntoIterator<Item = &'a str>) -> Ruleset {
        Ruleset::new(slices, &[])
    }

    /// The rules that keep `slices` apart, with the holes the ports' allow
    /// rules open: first replies of allowed connections (conntrack
    /// established/related), then each allowed flow, then the drops.
    pub fn new<'a>(slices: impl IntoIterator<Item = &'a str>, ports: &[Port]) -> Ruleset {
        let drops: Vec<Rule> = slices.into_iter().map(isolate).collect();
        let allows: Vec<Rule> = ports
            .iter()
            .flat_map(|port| port.allow.iter().filter_map(move |rule| allow(port, rule)))
            .collect();
        let mut rules = Vec::new();
        if !allows.is_empty() && !drops.is_empty() {
            rules.push(tagged("established", established()));
        }
        rules.extend(allows);
        rules.extend(drops);
        let chains = if rules.is_empty() {
            Vec::new()
        } else {
            vec![Chain {
                name: FORWARD_CHAIN.to_string(),
                hook: HOOK_FORWARD,
                priority: FORWARD_PRIORITY,
            }]
        };
        Ruleset { chains, rules }
    }

    /// True when there is nothing to install (the table should not exist).
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }
}

fn tagged(label: &str, exprs: Vec<Expr>) -> Rule {
    let digest = Sha256::digest(expressions(&exprs).into_bytes());
    Rule {
        chain: FORWARD_CHAIN.to_string(),
        tag: format!("{label} {}", hex::encode(&digest[..8])),
        exprs,
    }
}

/// `ct state established,related accept`.
fn established() -> Vec<Expr> {
    vec![
        Expr::CtState,
        // IP_CT_ESTABLISHED and IP_CT_RELATED as conntrack state bits.
        Expr::And(0x2 | 0x4),
        Expr::Cmp {
            equal: false,
            data: 0u32.to_ne_bytes().to_vec(),
        },
        Expr::Verdict(Verdict::Accept),
    ]
}

/// `iifname <from> oifname <to> meta nfproto ipv4 ip daddr <addr>
/// meta l4proto <p> [th dport <port>] counter accept`; none without an
/// address (conflicts refuses that before).
fn allow(port: &Port, rule: &mecvisor_protocol::AllowRule) -> Option<Rule> {
    let address = port.address?;
    let protocol: u8 = match rule.protocol {
        IpProtocol::Tcp => 6,
        IpProtocol::Udp => 17,
        IpProtocol::Icmp => 1,
    };
    let mut exprs = vec![
        Expr::Meta(MetaKey::IifName),
        Expr::Cmp {
            equal: true,
            data: ifname(&link_name(&rule.from_slice, Role::Bridge)),
        },
        Expr::Meta(MetaKey::OifName),
        Expr::Cmp {
            equal: true,
            data: ifname(&link_name(&port.slice, Role::Bridge)),
        },
        Expr::Meta(MetaKey::NfProto),
        Expr::Cmp {
            equal: true,
            data: vec![2],
        },
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 16,
            len: 4,
        },
        Expr::Cmp {
            equal: true,
            data: address.octets().to_vec(),
        },
        Expr::Meta(MetaKey::L4Proto),
        Expr::Cmp {
            equal: true,
            data: vec![protocol],
        },
    ];
    if let Some(number) = rule.port {
        exprs.push(Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
        });
        exprs.push(Expr::Cmp {
            equal: true,
            data: number.to_be_bytes().to_vec(),
        });
    }
    exprs.push(Expr::Counter);
    exprs.push(Expr::Verdict(Verdict::Accept));
    Some(tagged(&format!("port={} allow", port.name), exprs))
}

/// `iifname <bridge> oifgroup <mecvisor> oifname != <bridge> counter drop`.
fn isolate(slice: &str) -> Rule {
    let bridge = link_name(slice, Role::Bridge);
    let exprs = vec![
        Expr::Meta(MetaKey::IifName),
        Expr::Cmp {
            equal: true,
            data: ifname(&bridge),
        },
        Expr::Meta(MetaKey::OifGroup),
        Expr::Cmp {
            equal: true,
            data: LINK_GROUP.to_ne_bytes().to_vec(),
        },
        Expr::Meta(MetaKey::OifName),
        Expr::Cmp {
            equal: false,
            data: ifname(&bridge),
        },
        Expr::Counter,
        Expr::Verdict(Verdict::Drop),
    ];
    tagged(&format!("slice={slice}"), exprs)
}

/// The slice a rule tag names.
pub fn slice_of_tag(tag: &str) -> Option<&str> {
    tag.strip_prefix("slice=")?.split_once(' ').map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_slice_and_none_without_slices() {
        assert!(Ruleset::for_slices([]).is_empty());
        let set = Ruleset::for_slices(["video", "iot"]);
        assert_eq!(set.chains.len(), 1);
        assert_eq!(set.rules.len(), 2);
        assert_eq!(slice_of_tag(&set.rules[1].tag), Some("iot"));
        assert_ne!(set.rules[0].tag, set.rules[1].tag);
        assert_eq!(set, Ruleset::for_slices(["video", "iot"]), "stable");
    }

    #[test]
    fn the_rule_drops_only_towards_other_mecvisor_links() {
        let rule = isolate("video");
        let bridge = ifname(&link_name("video", Role::Bridge));
        assert!(rule.exprs.contains(&Expr::Cmp {
            equal: false,
            data: bridge
        }));
        assert_eq!(rule.exprs.last(), Some(&Expr::Verdict(Verdict::Drop)));
    }
}
