//! A blocking NETLINK_NETFILTER socket: read mecvisor's table back, replace
//! or remove it in one transaction. Calls take microseconds; a receive
//! timeout keeps a silent kernel from hanging the agent.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::{TimeVal, TimeValLike};

use super::ruleset::{Chain, Ruleset, TABLE};
use super::wire::{self, Attrs, Malformed, Reply, Request, FAMILY_INET};
use crate::netns::{open_in, NetnsError};

/// How long to wait for the kernel's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// `NF_ACCEPT`, the policy of mecvisor's chains.
const POLICY_ACCEPT: u32 = 1;
const ENOENT: i32 = 2;

/// Why an isolation step failed.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// The netlink socket could not be opened or used.
    #[error("nftables netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The network namespace could not be entered.
    #[error(transparent)]
    Namespace(#[from] NetnsError),
    /// The kernel refused a request (the whole transaction was dropped).
    #[error("{what}: the kernel refused: {source}")]
    Refused {
        /// The request.
        what: String,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer could not be read.
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

/// A rule of mecvisor's table as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRule {
    /// Chain name.
    pub chain: String,
    /// Its tag (user data).
    pub tag: String,
    /// Packets its counters saw.
    pub packets: u64,
    /// Bytes its counters saw.
    pub bytes: u64,
}

/// mecvisor's table as the kernel has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Whether the table exists at all.
    pub exists: bool,
    /// Its base chains.
    pub chains: Vec<Chain>,
    /// Its rules, in order.
    pub rules: Vec<ObservedRule>,
}

impl Observed {
    /// True when the kernel holds exactly `desired`.
    pub fn matches(&self, desired: &Ruleset) -> bool {
        if desired.is_empty() {
            return !self.exists;
        }
        let mut chains = self.chains.clone();
        chains.sort_by(|a, b| a.name.cmp(&b.name));
        let mut wanted = desired.chains.clone();
        wanted.sort_by(|a, b| a.name.cmp(&b.name));
        let rules = self.rules.iter().map(|r| (&r.chain, &r.tag));
        self.exists
            && chains == wanted
            && rules.eq(desired.rules.iter().map(|r| (&r.chain, &r.tag)))
    }
}

/// A netlink connection to nf_tables in one network namespace.
pub struct NfTables {
    socket: Mutex<(Socket, u32)>,
}

impl NfTables {
    /// Opens the socket in the caller's network namespace.
    pub fn open() -> Result<NfTables, IsolationError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(IsolationError::Socket)?;
        socket.bind_auto().map_err(IsolationError::Socket)?;
        socket
            .connect(&netlink_sys::SocketAddr::new(0, 0))
            .map_err(IsolationError::Socket)?;
        setsockopt(
            &socket,
            ReceiveTimeout,
            &TimeVal::milliseconds(REPLY_TIMEOUT.as_millis() as i64),
        )
        .map_err(|e| IsolationError::Socket(e.into()))?;
        Ok(NfTables {
            socket: Mutex::new((socket, 1)),
        })
    }

    /// Opens the socket in the network namespace at `path`.
    pub fn open_in_netns(path: &Path) -> Result<NfTables, IsolationError> {
        open_in(path, NfTables::open)?
    }

    /// Reads mecvisor's table (and nothing else).
    pub fn read(&self) -> Result<Observed, IsolationError> {
        let table = Attrs::default().string(wire::NFTA_TABLE_NAME, TABLE);
        let found = self.query(wire::NFT_MSG_GETTABLE, table, false, "read table")?;
        if found.is_none() {
            return Ok(Observed::default());
        }
        let mut observed = Observed {
            exists: true,
            ..Observed::default()
        };
        let chains = Attrs::default().string(wire::NFTA_CHAIN_TABLE, TABLE);
        for attrs in self
            .query(wire::NFT_MSG_GETCHAIN, chains, true, "list chains")?
            .unwrap_or_default()
        {
            let attrs = wire::attributes(&attrs)?;
            if wire::find(&attrs, wire::NFTA_CHAIN_TABLE)
                .map(|t| wire::text(&t))
                .as_deref()
                != Some(TABLE)
            {
                continue;
            }
            let name = wire::find(&attrs, wire::NFTA_CHAIN_NAME)
                .map(|n| wire::text(&n))
                .unwrap_or_default();
            let hook = wire::find(&attrs, wire::NFTA_CHAIN_HOOK).unwrap_or_default();
            let hook = wire::attributes(&hook)?;
            let be32 = |kind| {
                wire::find(&hook, kind)
                    .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                    .map(u32::from_be_bytes)
            };
            let policy = wire::find(&attrs, wire::NFTA_CHAIN_POLICY)
                .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                .map(u32::from_be_bytes);
            // A regular chain or a chain whose policy is not accept never
            // equals a desired one: mark it so the table gets replaced.
            let (Some(hook), Some(priority), Some(POLICY_ACCEPT)) = (
                be32(wire::NFTA_HOOK_HOOKNUM),
                be32(wire::NFTA_HOOK_PRIORITY),
                policy,
            ) else {
                observed.chains.push(Chain {
                    name,
                    hook: u32::MAX,
                    priority: 0,
                });
                continue;
            };
            observed.chains.push(Chain {
                name,
                hook,
                priority: priority as i32,
            });
        }
        let rules = Attrs::default().string(wire::NFTA_RULE_TABLE, TABLE);
        for attrs in self
            .query(wire::NFT_MSG_GETRULE, rules, true, "list rules")?
            .unwrap_or_default()
        {
            let attrs = wire::attributes(&attrs)?;
            if wire::find(&attrs, wire::NFTA_RULE_TABLE)
                .map(|t| wire::text(&t))
                .as_deref()
                != Some(TABLE)
            {
                continue;
            }
            let (packets, bytes) = match wire::find(&attrs, wire::NFTA_RULE_EXPRESSIONS) {
                Some(exprs) => wire::counters(&exprs)?,
                None => (0, 0),
            };
            observed.rules.push(ObservedRule {
                chain: wire::find(&attrs, wire::NFTA_RULE_CHAIN)
                    .map(|c| wire::text(&c))
                    .unwrap_or_default(),
                tag: wire::find(&attrs, wire::NFTA_RULE_USERDATA)
                    .and_then(|u| wire::comment_of(&u))
                    .unwrap_or_default(),
                packets,
                bytes,
            });
        }
        Ok(observed)
    }

    /// Replaces the table with `desired` in one transaction (deleting the
    /// old one first when `exists`).
    pub fn replace(&self, desired: &Ruleset, exists: bool) -> Result<(), IsolationError> {
        let mut requests = Vec::new();
        if exists {
            requests.push(table_request(wire::NFT_MSG_DELTABLE));
        }
        requests.push(table_request(wire::NFT_MSG_NEWTABLE));
        for chain in &desired.chains {
            let hook = Attrs::default()
                .be32(wire::NFTA_HOOK_HOOKNUM, chain.hook)
                .be32(wire::NFTA_HOOK_PRIORITY, chain.priority as u32);
            requests.push(Request {
                kind: wire::NFT_MSG_NEWCHAIN,
                family: FAMILY_INET,
                attrs: Attrs::default()
                    .string(wire::NFTA_CHAIN_TABLE, TABLE)
                    .string(wire::NFTA_CHAIN_NAME, &chain.name)
                    .nest(wire::NFTA_CHAIN_HOOK, hook)
                    .be32(wire::NFTA_CHAIN_POLICY, POLICY_ACCEPT)
                    .string(wire::NFTA_CHAIN_TYPE, "filter"),
            });
        }
        for rule in &desired.rules {
            requests.push(Request {
                kind: wire::NFT_MSG_NEWRULE,
                family: FAMILY_INET,
                attrs: Attrs::default()
                    .string(wire::NFTA_RULE_TABLE, TABLE)
                    .string(wire::NFTA_RULE_CHAIN, &rule.chain)
                    .nest(wire::NFTA_RULE_EXPRESSIONS, wire::expressions(&rule.exprs))
                    .bytes(wire::NFTA_RULE_USERDATA, &wire::comment(&rule.tag)),
            });
        }
        self.transact(requests, &format!("install nftables table inet {TABLE}"))
    }

    /// Deletes the table (and with it every rule) if it exists.
    pub fn remove(&self) -> Result<(), IsolationError> {
        if !self.read()?.exists {
            return Ok(());
        }
        self.transact(
            vec![table_request(wire::NFT_MSG_DELTABLE)],
            &format!("delete nftables table inet {TABLE}"),
        )
    }

    fn transact(&self, requests: Vec<Request>, what: &str) -> Result<(), IsolationError> {
        let mut guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let (socket, seq) = &mut *guard;
        let count = requests.len() as u32;
        let (bytes, last) = wire::batch(requests, *seq);
        *seq = seq.wrapping_add(count + 2);
        socket.send(&bytes, 0).map_err(IsolationError::Socket)?;
        loop {
            let (buf, _) = socket.recv_from_full().map_err(IsolationError::Socket)?;
            for reply in wire::replies(&buf)? {
                match reply {
                    Reply::Ack { errno, .. } if errno < 0 => {
                        return Err(IsolationError::Refused {
                            what: what.to_string(),
                            source: std::io::Error::from_raw_os_error(-errno),
                        })
                    }
                    Reply::Ack { seq, .. } if seq == last => return Ok(()),
                    _ => {}
                }
            }
        }
    }

    /// Sends a get request; `None` when the object does not exist, else the
    /// attributes of every object answered.
    fn query(
        &self,
        kind: u16,
        attrs: Attrs,
        dump: bool,
        what: &str,
    ) -> Result<Option<Vec<Vec<u8>>>, IsolationError> {
        let mut guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let (socket, seq) = &mut *guard;
        let this = *seq;
        *seq = seq.wrapping_add(1);
        let bytes = wire::get(kind, FAMILY_INET, attrs, dump, this);
        socket.send(&bytes, 0).map_err(IsolationError::Socket)?;
        let mut objects = Vec::new();
        loop {
            let (buf, _) = socket.recv_from_full().map_err(IsolationError::Socket)?;
            for reply in wire::replies(&buf)? {
                match reply {
                    Reply::Object { seq, attrs } if seq == this => objects.push(attrs),
                    Reply::Ack { seq, errno } if seq == this && errno == -ENOENT => {
                        return Ok(None)
                    }
                    Reply::Ack { seq, errno } if seq == this && errno < 0 => {
                        return Err(IsolationError::Refused {
                            what: what.to_string(),
                            source: std::io::Error::from_raw_os_error(-errno),
                        })
                    }
                    // A get ends with its acknowledgement, a dump with DONE.
                    Reply::Ack { seq, .. } | Reply::Done { seq } if seq == this => {
                        return Ok(Some(objects))
                    }
                    _ => {}
                }
            }
        }
    }
}

fn table_request(kind: u16) -> Request {
    Request {
        kind,
        family: FAMILY_INET,
        attrs: Attrs::default().string(wire::NFTA_TABLE_NAME, TABLE),
    }
}
