//! Isolation between slices with nftables, spoken over netlink (no `nft`
//! binary: the edge box has none).
//!
//! mecvisor owns exactly one table, `inet mecvisor`. Apply reads the table
//! back (chains and the tags stored in each rule's user data) and, when it
//! differs from the desired [`Ruleset`], replaces the whole table in one
//! nf_tables transaction: the kernel applies all of it or none of it, so no
//! moment exists with half the rules. No other table is read or written.

mod ruleset;
mod socket;
pub mod wire;

pub use ruleset::{slice_of_tag, Chain, Rule, Ruleset, FORWARD_CHAIN, TABLE};
pub use socket::{IsolationError, NfTables, Observed};

use tracing::info;

/// Makes the kernel's `inet mecvisor` table match `desired`; returns what
/// changed (`None` when it already matched).
#[tracing::instrument(name = "isolation_apply", skip_all, fields(rules = desired.rules.len()))]
pub fn apply(nft: &NfTables, desired: &Ruleset) -> Result<Option<String>, IsolationError> {
    let observed = nft.read()?;
    if observed.matches(desired) {
        return Ok(None);
    }
    let change = if desired.is_empty() {
        nft.remove()?;
        format!("remove nftables table inet {TABLE}")
    } else {
        nft.replace(desired, observed.exists)?;
        format!(
            "{} nftables table inet {TABLE} ({} isolation rules)",
            if observed.exists { "replace" } else { "create" },
            desired.rules.len()
        )
    };
    info!(%change, "isolation change");
    Ok(Some(change))
}
