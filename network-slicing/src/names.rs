//! Kernel names of a slice's objects and the ownership mark on them.
//!
//! Interface names are at most 15 bytes, slice names up to 63, so names are
//! derived from a hash of the owner's name: `mvb<8 hex>` for a slice's
//! bridge, `mvv<8 hex>` for its VLAN sub-interface, `mvi<8 hex>` for the
//! ifb that shapes an uplink's ingress (owned by the uplink, shared by its
//! slices). Stable across restarts; a clash is caught by
//! [`crate::conflicts`].
//!
//! Ownership is the link group [`LINK_GROUP`], set in the same netlink
//! request that creates the link, so no link of ours is ever unmarked (the
//! kernel ignores an alias in a create request). The slice a link belongs to
//! is in its alias, `mecvisor slice=<name> role=<bridge|vlan>` or
//! `mecvisor uplink=<name> role=ingress` (visible in `ip link`), set right
//! after creation; a link killed before its alias was
//! set is recognised by its derived name.

use sha2::{Digest, Sha256};

/// Link group of every link mecvisor creates (`ip link show group
/// 0x6d656376`); links in any other group are never touched.
pub const LINK_GROUP: u32 = 0x6d65_6376;

/// Prefix of every alias mecvisor sets.
pub const ALIAS_PREFIX: &str = "mecvisor ";

/// What a link does for its slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The slice's bridge.
    Bridge,
    /// The slice's VLAN sub-interface on the uplink.
    Vlan,
    /// The ifb an uplink's incoming slice traffic is shaped on (its owner
    /// is the uplink, not a slice).
    Ingress,
}

impl Role {
    /// Name used in the alias.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Bridge => "bridge",
            Role::Vlan => "vlan",
            Role::Ingress => "ingress",
        }
    }

    /// What owns a link of this role: a slice, or an uplink.
    pub fn owner_kind(self) -> &'static str {
        match self {
            Role::Bridge | Role::Vlan => "slice",
            Role::Ingress => "uplink",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Role::Bridge => "mvb",
            Role::Vlan => "mvv",
            Role::Ingress => "mvi",
        }
    }
}

/// The interface name of `role` for its owner (a slice, or for
/// [`Role::Ingress`] an uplink).
pub fn link_name(owner: &str, role: Role) -> String {
    let digest = Sha256::digest(owner.as_bytes());
    format!("{}{}", role.prefix(), hex::encode(&digest[..4]))
}

/// The ownership alias of `role` for its owner.
pub fn alias(owner: &str, role: Role) -> String {
    format!(
        "{ALIAS_PREFIX}{}={owner} role={}",
        role.owner_kind(),
        role.as_str()
    )
}

/// Reads an ownership alias back: `(owner, role)`, or `None` for a link
/// mecvisor did not create.
pub fn parse_alias(alias: &str) -> Option<(String, Role)> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?;
    let (owner, role) = rest.rsplit_once(" role=")?;
    let role = match role {
        "bridge" => Role::Bridge,
        "vlan" => Role::Vlan,
        "ingress" => Role::Ingress,
        _ => return None,
    };
    let owner = owner.strip_prefix(role.owner_kind())?.strip_prefix('=')?;
    (!owner.is_empty()).then(|| (owner.to_string(), role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_differ_by_role() {
        let long = "a".repeat(63);
        for role in [Role::Bridge, Role::Vlan, Role::Ingress] {
            let name = link_name(&long, role);
            assert!(name.len() <= 15, "{name}");
            assert_eq!(name, link_name(&long, role), "stable");
        }
        assert_ne!(link_name("x", Role::Bridge), link_name("x", Role::Vlan));
        assert_ne!(link_name("x", Role::Bridge), link_name("y", Role::Bridge));
    }

    #[test]
    fn aliases_round_trip_and_foreign_ones_are_not_ours() {
        assert_eq!(
            parse_alias(&alias("video", Role::Vlan)),
            Some(("video".to_string(), Role::Vlan))
        );
        assert_eq!(parse_alias("uplink to the core"), None);
        assert_eq!(parse_alias("mecvisor slice=x role=router"), None);
        assert_eq!(
            parse_alias(&alias("eth0", Role::Ingress)),
            Some(("eth0".to_string(), Role::Ingress))
        );
        assert_eq!(parse_alias("mecvisor slice=eth0 role=ingress"), None);
        assert_eq!(parse_alias("mecvisor slice= role=bridge"), None);
    }
}
