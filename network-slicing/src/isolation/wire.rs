//! nf_tables netlink messages, encoded and decoded by hand (no crate in the
//! dependency tree speaks nf_tables, and the set needed here is small):
//! tables, chains, rules with `meta`, `cmp`, `counter` and `immediate`
//! expressions, sent as one atomic batch; and the dumps read back.
//!
//! Numbers are from the kernel's `include/uapi/linux/netfilter/nf_tables.h`
//! and `nfnetlink.h`. nf_tables attributes carry integers big-endian, except
//! register contents (compared data), which are in the packet's or the
//! kernel's own byte order.

/// nfnetlink subsystem of nf_tables.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Batch delimiters (message types, subsystem 0).
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

/// nf_tables message type: creates a table.
pub const NFT_MSG_NEWTABLE: u16 = 0;
/// Reads (dumps) tables.
pub const NFT_MSG_GETTABLE: u16 = 1;
/// Deletes a table.
pub const NFT_MSG_DELTABLE: u16 = 2;
/// Creates a chain.
pub const NFT_MSG_NEWCHAIN: u16 = 3;
/// Reads (dumps) chains.
pub const NFT_MSG_GETCHAIN: u16 = 4;
/// Appends a rule.
pub const NFT_MSG_NEWRULE: u16 = 6;
/// Reads (dumps) rules.
pub const NFT_MSG_GETRULE: u16 = 7;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

/// `NFPROTO_INET`: IPv4 and IPv6 in one table.
pub const FAMILY_INET: u8 = 1;

// Table, chain, hook, rule, expression attributes.
/// A table's name.
pub const NFTA_TABLE_NAME: u16 = 1;
/// The table a chain belongs to.
pub const NFTA_CHAIN_TABLE: u16 = 1;
/// A chain's name.
pub const NFTA_CHAIN_NAME: u16 = 3;
/// A base chain's hook (nested: hook number and priority).
pub const NFTA_CHAIN_HOOK: u16 = 4;
/// A base chain's policy (accept or drop).
pub const NFTA_CHAIN_POLICY: u16 = 5;
/// A base chain's type (`filter`).
pub const NFTA_CHAIN_TYPE: u16 = 7;
/// The netfilter hook (forward, input, ...).
pub const NFTA_HOOK_HOOKNUM: u16 = 1;
/// The base chain's priority at its hook.
pub const NFTA_HOOK_PRIORITY: u16 = 2;
/// The table a rule belongs to.
pub const NFTA_RULE_TABLE: u16 = 1;
/// The chain a rule belongs to.
pub const NFTA_RULE_CHAIN: u16 = 2;
/// A rule's expressions (nested list).
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
/// A rule's user data (mecvisor's tag, shown as its comment).
pub const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
/// `NFT_CT_STATE`.
const NFT_CT_STATE: u32 = 0;

/// The verdict register and the first 16-byte data register.
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

/// What a `meta` expression loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// Input interface name (16 bytes, NUL-padded).
    IifName = 6,
    /// Output interface name.
    OifName = 7,
    /// Output interface's link group (u32, host order).
    OifGroup = 22,
    /// Layer 3 protocol family (u8: `NFPROTO_IPV4` = 2).
    NfProto = 15,
    /// Layer 4 protocol (u8: 6 TCP, 17 UDP, 1 ICMP).
    L4Proto = 16,
}

/// Where a `payload` expression reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    /// The network header (IPv4: daddr at offset 16).
    Network = 1,
    /// The transport header (TCP/UDP: dport at offset 2).
    Transport = 2,
}

/// A verdict that ends a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `NF_DROP`.
    Drop = 0,
    /// `NF_ACCEPT`.
    Accept = 1,
}

/// One rule expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load `key` into register 1.
    Meta(MetaKey),
    /// Compare register 1 with `data`: equal (`true`) or not equal.
    Cmp {
        /// Equal or not equal.
        equal: bool,
        /// The bytes compared against.
        data: Vec<u8>,
    },
    /// Count packets and bytes that got this far.
    Counter,
    /// Load `len` bytes at `offset` of a header into register 1.
    Payload {
        /// Which header.
        base: PayloadBase,
        /// Byte offset in it.
        offset: u32,
        /// Bytes.
        len: u32,
    },
    /// Load the connection tracking state bits into register 1.
    CtState,
    /// Register 1 &= `mask` (4 bytes, host order).
    And(u32),
    /// End with a verdict.
    Verdict(Verdict),
}

/// An interface name as `meta iifname`/`oifname` loads it: 16 bytes, NUL-padded.
pub fn ifname(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.resize(16, 0);
    bytes
}

/// The `NFTA_RULE_EXPRESSIONS` payload of `exprs`.
pub fn expressions(exprs: &[Expr]) -> Attrs {
    exprs.iter().fold(Attrs::default(), |list, expr| {
        let (name, data) = match expr {
            Expr::Meta(key) => (
                "meta",
                Attrs::default()
                    .be32(NFTA_META_KEY, *key as u32)
                    .be32(NFTA_META_DREG, NFT_REG_1),
            ),
            Expr::Cmp { equal, data } => (
                "cmp",
                Attrs::default()
                    .be32(NFTA_CMP_SREG, NFT_REG_1)
                    .be32(NFTA_CMP_OP, if *equal { 0 } else { 1 })
                    .nest(NFTA_CMP_DATA, Attrs::default().bytes(NFTA_DATA_VALUE, data)),
            ),
            Expr::Payload { base, offset, len } => (
                "payload",
                Attrs::default()
                    .be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
                    .be32(NFTA_PAYLOAD_BASE, *base as u32)
                    .be32(NFTA_PAYLOAD_OFFSET, *offset)
                    .be32(NFTA_PAYLOAD_LEN, *len),
            ),
            Expr::CtState => (
                "ct",
                Attrs::default()
                    .be32(NFTA_CT_KEY, NFT_CT_STATE)
                    .be32(NFTA_CT_DREG, NFT_REG_1),
            ),
            Expr::And(mask) => (
                "bitwise",
                Attrs::default()
                    .be32(NFTA_BITWISE_SREG, NFT_REG_1)
                    .be32(NFTA_BITWISE_DREG, NFT_REG_1)
                    .be32(NFTA_BITWISE_LEN, 4)
                    .nest(
                        NFTA_BITWISE_MASK,
                        Attrs::default().bytes(NFTA_DATA_VALUE, &mask.to_ne_bytes()),
                    )
                    .nest(
                        NFTA_BITWISE_XOR,
                        Attrs::default().bytes(NFTA_DATA_VALUE, &0u32.to_ne_bytes()),
                    ),
            ),
            Expr::Counter => (
                "counter",
                Attrs::default()
                    .bytes(NFTA_COUNTER_BYTES, &0u64.to_be_bytes())
                    .bytes(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes()),
            ),
            Expr::Verdict(verdict) => (
                "immediate",
                Attrs::default()
                    .be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
                    .nest(
                        NFTA_IMMEDIATE_DATA,
                        Attrs::default().nest(
                            NFTA_DATA_VERDICT,
                            Attrs::default().be32(NFTA_VERDICT_CODE, *verdict as u32),
                        ),
                    ),
            ),
        };
        list.nest(
            NFTA_LIST_ELEM,
            Attrs::default()
                .string(NFTA_EXPR_NAME, name)
                .nest(NFTA_EXPR_DATA, data),
        )
    })
}

/// One nf_tables request: message type and attributes.
pub struct Request {
    /// `NFT_MSG_*`.
    pub kind: u16,
    /// Protocol family (`NFPROTO_*`).
    pub family: u8,
    /// Its attributes.
    pub attrs: Attrs,
}

fn header(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: &[u8],
) {
    let len = 16 + 4 + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(body);
}

/// A transaction: `requests` between batch delimiters, sequence numbers
/// from `seq`; only the last request asks for an acknowledgement (errors
/// are always reported). Returns the bytes and the last sequence number.
pub fn batch(requests: Vec<Request>, seq: u32) -> (Vec<u8>, u32) {
    let mut out = Vec::new();
    header(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let count = requests.len() as u32;
    for (i, request) in requests.into_iter().enumerate() {
        let i = i as u32;
        let mut flags = NLM_F_REQUEST | NLM_F_CREATE;
        if request.kind == NFT_MSG_NEWRULE {
            flags |= NLM_F_APPEND;
        }
        if i + 1 == count {
            flags |= NLM_F_ACK;
        }
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | request.kind;
        header(
            &mut out,
            kind,
            flags,
            seq + 1 + i,
            request.family,
            0,
            &request.attrs.into_bytes(),
        );
    }
    let end = seq + 1 + count;
    header(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    (out, seq + count)
}

/// A get request: a dump of every object of its type, or (`dump` false)
/// the one object `attrs` names (answered by the object and an
/// acknowledgement; a dump ends with DONE instead).
pub fn get(kind: u16, family: u8, attrs: Attrs, dump: bool, seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
    header(&mut out, kind, flags, seq, family, 0, &attrs.into_bytes());
    out
}

/// One message read from the socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// An object (its attributes, after the nfgenmsg header).
    Object {
        /// Sequence number it answers.
        seq: u32,
        /// Raw attributes.
        attrs: Vec<u8>,
    },
    /// An acknowledgement (`errno` 0) or an error (negative errno).
    Ack {
        /// Sequence number it answers.
        seq: u32,
        /// 0 or a negative errno.
        errno: i32,
    },
    /// End of a dump.
    Done {
        /// Sequence number it answers.
        seq: u32,
    },
}

pub use crate::nla::{attributes, find, text, Attrs, Malformed};

/// Splits one `recv` buffer into messages.
pub fn replies(mut buf: &[u8]) -> Result<Vec<Reply>, Malformed> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < 16 {
            return Err(Malformed("truncated message header"));
        }
        let len = u32::from_ne_bytes(take4(buf, 0)) as usize;
        if len < 16 || len > buf.len() {
            return Err(Malformed("message length"));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes(take4(buf, 8));
        let body = &buf[16..len];
        match kind {
            NLMSG_ERROR => {
                if body.len() < 4 {
                    return Err(Malformed("short error message"));
                }
                let errno = i32::from_ne_bytes(take4(body, 0));
                out.push(Reply::Ack { seq, errno });
            }
            NLMSG_DONE => out.push(Reply::Done { seq }),
            _ => {
                if body.len() < 4 {
                    return Err(Malformed("missing nfgenmsg header"));
                }
                out.push(Reply::Object {
                    seq,
                    attrs: body[4..].to_vec(),
                });
            }
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

fn take4(buf: &[u8], at: usize) -> [u8; 4] {
    [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
}

/// Rule user data holding `text` as a comment, in libnftnl's layout (type
/// 0 = comment, length, NUL-terminated text), so `nft list ruleset` shows
/// it as `comment "..."`. Text is cut at 254 bytes.
pub fn comment(text: &str) -> Vec<u8> {
    let text = &text.as_bytes()[..text.len().min(254)];
    let mut out = vec![0, (text.len() + 1) as u8];
    out.extend_from_slice(text);
    out.push(0);
    out
}

/// The comment in rule user data (see [`comment`]), if there is one.
pub fn comment_of(userdata: &[u8]) -> Option<String> {
    let mut rest = userdata;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len);
        let value = tail.get(..len)?;
        if *kind == 0 {
            return Some(text(value));
        }
        rest = &tail[len..];
    }
    None
}

/// The counters (packets, bytes) of the `counter` expressions in a rule's
/// `NFTA_RULE_EXPRESSIONS`, summed.
pub fn counters(expressions: &[u8]) -> Result<(u64, u64), Malformed> {
    let mut packets = 0;
    let mut bytes = 0;
    for (_, element) in attributes(expressions)? {
        let element = attributes(element)?;
        let is_counter = find(&element, NFTA_EXPR_NAME).is_some_and(|n| text(&n) == "counter");
        let Some(data) = find(&element, NFTA_EXPR_DATA).filter(|_| is_counter) else {
            continue;
        };
        let data = attributes(&data)?;
        let be64 = |kind| {
            find(&data, kind)
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_be_bytes)
                .ok_or(Malformed("counter value"))
        };
        packets += be64(NFTA_COUNTER_PACKETS)?;
        bytes += be64(NFTA_COUNTER_BYTES)?;
    }
    Ok((packets, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_read_back() {
        let encoded = Attrs::default()
            .string(1, "abc")
            .be32(2, 7)
            .nest(3, Attrs::default().bytes(1, &[9]))
            .into_bytes();
        assert_eq!(encoded.len() % 4, 0);
        let read = attributes(&encoded).expect("parse");
        assert_eq!(read.len(), 3);
        assert_eq!(text(read[0].1), "abc");
        assert_eq!(read[1].1, &7u32.to_be_bytes());
        assert_eq!(attributes(read[2].1).expect("nested")[0].1, &[9]);
    }

    #[test]
    fn batches_are_delimited_and_ask_one_ack() {
        let request = || Request {
            kind: NFT_MSG_NEWTABLE,
            family: FAMILY_INET,
            attrs: Attrs::default().string(NFTA_TABLE_NAME, "t"),
        };
        let (bytes, last) = batch(vec![request(), request()], 100);
        assert_eq!(last, 102);
        // Parse our own messages back with the reply reader: 4 messages.
        let messages = replies(&bytes).expect("well formed");
        assert_eq!(messages.len(), 4);
        let flags = |at: usize| u16::from_ne_bytes([bytes[at + 6], bytes[at + 7]]);
        let first_len = u32::from_ne_bytes(take4(&bytes, 0)) as usize;
        assert_eq!(
            u16::from_ne_bytes([bytes[4], bytes[5]]),
            NFNL_MSG_BATCH_BEGIN
        );
        assert_eq!(flags(first_len) & NLM_F_ACK, 0, "first request asks no ack");
    }

    #[test]
    fn counters_are_summed_from_a_rule() {
        let exprs = expressions(&[Expr::Counter, Expr::Verdict(Verdict::Drop)]).into_bytes();
        assert_eq!(counters(&exprs).expect("parse"), (0, 0));
        assert!(counters(&exprs[..exprs.len() - 3]).is_err(), "truncated");
    }

    #[test]
    fn comments_round_trip_in_libnftnl_layout() {
        let data = comment("slice=video 0011");
        assert_eq!(&data[..2], &[0, 17]);
        assert_eq!(comment_of(&data).as_deref(), Some("slice=video 0011"));
        assert_eq!(comment_of(&data[..5]), None, "truncated");
        assert_eq!(comment_of(&[1, 1, 7]), None, "no comment");
    }

    #[test]
    fn truncated_replies_are_refused() {
        let (bytes, _) = batch(Vec::new(), 1);
        for cut in 1..bytes.len() {
            // Either fewer whole messages or an error; never a panic.
            let _ = replies(&bytes[..cut]);
        }
        assert!(replies(&bytes[..24]).is_err());
    }
}
