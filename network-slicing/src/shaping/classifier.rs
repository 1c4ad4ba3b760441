//! Sorting packets into slices' classes by their VLAN id, with a classic
//! BPF program in a `bpf` tc filter (`cls_bpf`; no eBPF loader needed, and
//! the development host's kernel has it while it lacks flower and basic).
//!
//! At an uplink's egress a slice's packets carry their VLAN tag in the
//! packet's metadata (the VLAN link hands the tag down; it is written into
//! the frame only after the qdisc), and at its ingress the kernel has moved
//! the tag there before tc runs. The program reads it through the classic
//! BPF ancillary loads and returns class `<major>:<0x1000 | vlan id>`;
//! untagged packets get 0, "no match", and bypass the slices' classes.
//!
//! At ingress the same filter carries a `mirred` action that redirects the
//! slice's packets to the uplink's ifb, where an HTB like the egress one
//! shapes them (the ifb hands them back to the uplink's receive path).

use crate::nla::{attributes, find, Attrs, Malformed, NLA_F_NESTED};

/// `TCA_BPF_ACT`, `TCA_BPF_OPS_LEN`, `TCA_BPF_OPS`.
pub const TCA_BPF_ACT: u16 = 1;
const TCA_BPF_OPS_LEN: u16 = 4;
const TCA_BPF_OPS: u16 = 5;
/// Action attributes: `TCA_ACT_KIND`, `TCA_ACT_OPTIONS`, `TCA_MIRRED_PARMS`.
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;
/// `TC_ACT_STOLEN`: the redirected packet is consumed here.
const TC_ACT_STOLEN: i32 = 4;
/// `TCA_EGRESS_REDIR`.
const EGRESS_REDIRECT: i32 = 1;

/// Classic BPF ancillary offsets (`SKF_AD_OFF` + `SKF_AD_VLAN_TAG(_PRESENT)`).
const AD_VLAN_TAG: u32 = 0xffff_f000 + 44;
const AD_VLAN_TAG_PRESENT: u32 = 0xffff_f000 + 48;

/// Minor number of a slice's class: `0x1000 | vlan id` (VLAN ids are 12
/// bits; minor 1 is the uplink's own class).
pub fn class_minor(vlan_id: u16) -> u16 {
    0x1000 | (vlan_id & 0x0fff)
}

/// The program's instructions `(code, jt, jf, k)`: tagged ->
/// `major:class_minor(vid)`, untagged -> 0 (no match).
pub fn instructions(major: u16) -> [(u16, u8, u8, u32); 7] {
    [
        (0x20, 0, 0, AD_VLAN_TAG_PRESENT),               // ld vlan_avail
        (0x15, 4, 0, 0),                                 // jeq #0 -> ret #0
        (0x20, 0, 0, AD_VLAN_TAG),                       // ld vlan_tci
        (0x54, 0, 0, 0x0fff),                            // and #0xfff
        (0x44, 0, 0, (u32::from(major) << 16) | 0x1000), // or #major:0x1000
        (0x16, 0, 0, 0),                                 // ret a
        (0x06, 0, 0, 0),                                 // ret #0
    ]
}

/// The program as `struct sock_filter` array bytes.
pub fn program(major: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 * 8);
    for (code, jt, jf, k) in instructions(major) {
        out.extend_from_slice(&code.to_ne_bytes());
        out.push(jt);
        out.push(jf);
        out.extend_from_slice(&k.to_ne_bytes());
    }
    out
}

/// The filter's `TCA_OPTIONS` attributes; with `redirect_to`, a mirred
/// action sending matched packets to that interface index.
pub fn filter_options(major: u16, redirect_to: Option<u32>) -> Vec<(u16, Vec<u8>)> {
    let ops = program(major);
    let mut out = vec![
        (
            TCA_BPF_OPS_LEN,
            ((ops.len() / 8) as u16).to_ne_bytes().to_vec(),
        ),
        (TCA_BPF_OPS, ops),
    ];
    if let Some(ifindex) = redirect_to {
        out.push((TCA_BPF_ACT | NLA_F_NESTED, mirred_actions(ifindex)));
    }
    out
}

/// The action list: action 1 = mirred egress redirect to `ifindex`.
fn mirred_actions(ifindex: u32) -> Vec<u8> {
    let mut parms = Vec::with_capacity(28);
    // tc_gen: index, capab, action, refcnt, bindcnt; then eaction, ifindex.
    for field in [
        0u32,
        0,
        TC_ACT_STOLEN as u32,
        0,
        0,
        EGRESS_REDIRECT as u32,
        ifindex,
    ] {
        parms.extend_from_slice(&field.to_ne_bytes());
    }
    let options = Attrs::default().bytes(TCA_MIRRED_PARMS, &parms);
    let action = Attrs::default()
        .string(TCA_ACT_KIND, "mirred")
        .nest(TCA_ACT_OPTIONS, options);
    Attrs::default().nest(1, action).into_bytes()
}

/// The interface a filter's actions (`TCA_BPF_ACT` payload) redirect to.
pub fn redirect_target(actions: &[u8]) -> Result<Option<u32>, Malformed> {
    for (_, action) in attributes(actions)? {
        let action = attributes(action)?;
        let kind = find(&action, TCA_ACT_KIND).map(|k| crate::nla::text(&k));
        if kind.as_deref() != Some("mirred") {
            continue;
        }
        let options = find(&action, TCA_ACT_OPTIONS).ok_or(Malformed("mirred without options"))?;
        let options = attributes(&options)?;
        let parms =
            find(&options, TCA_MIRRED_PARMS).ok_or(Malformed("mirred without parameters"))?;
        let ifindex = parms
            .get(24..28)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_ne_bytes)
            .ok_or(Malformed("short tc_mirred"))?;
        return Ok(Some(ifindex));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_has_seven_instructions_and_names_the_major() {
        let ops = program(0x6d76);
        assert_eq!(ops.len(), 7 * 8);
        let or_k = u32::from_ne_bytes(ops[4 * 8 + 4..4 * 8 + 8].try_into().expect("4 bytes"));
        assert_eq!(or_k, 0x6d76_1000);
        assert_eq!(class_minor(100), 0x1064);
        assert_eq!(class_minor(4094), 0x1ffe);
    }

    #[test]
    fn the_redirect_target_reads_back() {
        let options = filter_options(0x6d76, Some(42));
        let (_, actions) = options.last().expect("actions");
        assert_eq!(redirect_target(actions).expect("parse"), Some(42));
        assert!(redirect_target(&actions[..actions.len() - 6]).is_err());
    }
}
