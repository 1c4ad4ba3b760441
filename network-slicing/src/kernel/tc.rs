//! Traffic control over netlink: read qdiscs, classes and filters back,
//! add and remove the ones shaping needs. Options of kinds that
//! netlink-packet-route does not know (HTB) travel as raw attributes
//! encoded by [`crate::shaping`].

use futures_util::StreamExt;
use netlink_packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Kernel, KernelError};

/// `TCA_OPTIONS`.
const TCA_OPTIONS: u16 = 2;
/// `TC_H_CLSACT`, the parent of a clsact qdisc, and its ingress hook.
pub const CLSACT_PARENT: u32 = 0xffff_fff1;
/// Parent of filters on a clsact qdisc's ingress hook.
pub const INGRESS_PARENT: u32 = 0xffff_fff2;
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// `ETH_P_ALL`: filters see every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// Packet and byte counters of a class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Bytes sent.
    pub bytes: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets dropped.
    pub drops: u64,
}

/// A qdisc as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    /// Interface index.
    pub index: u32,
    /// Handle, `major << 16` (0 for a default qdisc the kernel made).
    pub handle: u32,
    /// Parent (`TC_H_ROOT` for a root qdisc).
    pub parent: u32,
    /// Kind, e.g. `htb`, `noqueue`, `clsact`.
    pub kind: String,
}

/// A class as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// Class id.
    pub handle: u32,
    /// Parent class or qdisc.
    pub parent: u32,
    /// Kind (`htb`).
    pub kind: String,
    /// The raw `TCA_OPTIONS` payload.
    pub options: Vec<u8>,
    /// Its counters.
    pub counters: Counters,
}

/// A filter as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Priority (`pref`).
    pub pref: u16,
    /// Kind, e.g. `bpf`.
    pub kind: String,
    /// Raw actions (`TCA_BPF_ACT` payload) of a bpf filter, if any.
    pub actions: Option<Vec<u8>>,
}

fn message(index: u32, handle: u32, parent: u32, info: u32) -> TcMessage {
    let mut message = TcMessage::default();
    message.header.index = index as i32;
    message.header.handle = TcHandle::from(handle);
    message.header.parent = TcHandle::from(parent);
    message.header.info = info;
    message
}

fn raw_options(pairs: Vec<(u16, Vec<u8>)>) -> TcAttribute {
    TcAttribute::Options(
        pairs
            .into_iter()
            .map(|(kind, value)| TcOption::Other(DefaultNla::new(kind, value)))
            .collect(),
    )
}

/// The payload of an attribute netlink-packet-route kept raw.
fn value_of(nla: &DefaultNla) -> Vec<u8> {
    let mut value = vec![0; netlink_packet_core::Nla::value_len(nla)];
    netlink_packet_core::Nla::emit_value(nla, &mut value);
    value
}

fn kind_of(attributes: &[TcAttribute]) -> String {
    attributes
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(kind) => Some(kind.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

impl Kernel {
    async fn tc_request(
        &self,
        body: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<TcMessage>, KernelError> {
        let mut request = NetlinkMessage::from(body);
        request.header.flags = NLM_F_REQUEST | flags;
        let mut handle = self.handle.clone();
        let mut replies = handle.request(request).map_err(super::refused(what))?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(super::refused(what)(rtnetlink::Error::NetlinkError(e)))
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewQueueDiscipline(m)
                    | RouteNetlinkMessage::NewTrafficClass(m)
                    | RouteNetlinkMessage::NewTrafficFilter(m),
                ) => out.push(m),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Every qdisc of every interface.
    pub async fn qdiscs(&self) -> Result<Vec<Qdisc>, KernelError> {
        let request = RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default());
        let replies = self.tc_request(request, NLM_F_DUMP, "list qdiscs").await?;
        Ok(replies
            .into_iter()
            .map(|m| Qdisc {
                index: m.header.index as u32,
                handle: m.header.handle.into(),
                parent: m.header.parent.into(),
                kind: kind_of(&m.attributes),
            })
            .collect())
    }

    /// The classes of interface `index`.
    pub async fn classes(&self, index: u32) -> Result<Vec<Class>, KernelError> {
        let request = RouteNetlinkMessage::GetTrafficClass(message(index, 0, 0, 0));
        let replies = self.tc_request(request, NLM_F_DUMP, "list classes").await?;
        Ok(replies
            .into_iter()
            .filter(|m| m.header.index as u32 == index)
            .map(|m| {
                let mut counters = Counters::default();
                let mut options = Vec::new();
                for attribute in &m.attributes {
                    match attribute {
                        TcAttribute::Stats(s) => {
                            counters = Counters {
                                bytes: s.bytes,
                                packets: u64::from(s.packets),
                                drops: u64::from(s.drops),
                            }
                        }
                        TcAttribute::Options(list) => {
                            for option in list {
                                if let TcOption::Other(nla) = option {
                                    if netlink_packet_core::Nla::kind(nla) == TCA_OPTIONS {
                                        options = value_of(nla);
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Class {
                    handle: m.header.handle.into(),
                    parent: m.header.parent.into(),
                    kind: kind_of(&m.attributes),
                    options,
                    counters,
                }
            })
            .collect())
    }

    /// The filters under `parent` on interface `index`.
    pub async fn filters(&self, index: u32, parent: u32) -> Result<Vec<Filter>, KernelError> {
        let request = RouteNetlinkMessage::GetTrafficFilter(message(index, 0, parent, 0));
        let replies = self.tc_request(request, NLM_F_DUMP, "list filters").await?;
        let mut out: Vec<Filter> = Vec::new();
        for m in replies {
            let pref = (m.header.info >> 16) as u16;
            let actions = m.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(list) => list.iter().find_map(|o| match o {
                    TcOption::Bpf(TcFilterBpfOption::Other(nla))
                        if netlink_packet_core::Nla::kind(nla) & 0x3fff
                            == crate::shaping::TCA_BPF_ACT =>
                    {
                        Some(value_of(nla))
                    }
                    _ => None,
                }),
                _ => None,
            });
            // The kernel lists a filter once per priority and again per
            // handle; one entry per priority is enough here.
            if let Some(known) = out.iter_mut().find(|f| f.pref == pref) {
                known.actions = known.actions.take().or(actions);
                continue;
            }
            out.push(Filter {
                pref,
                kind: kind_of(&m.attributes),
                actions,
            });
        }
        Ok(out)
    }

    /// Adds an HTB root qdisc with handle `major:` and default class
    /// `major:default_class` (replacing the default qdisc the kernel gave
    /// the interface).
    pub async fn add_htb_root(
        &self,
        index: u32,
        major: u16,
        default_class: u16,
        what: &str,
    ) -> Result<(), KernelError> {
        let mut m = message(index, u32::from(major) << 16, u32::MAX, 0);
        m.attributes.push(TcAttribute::Kind("htb".into()));
        m.attributes
            .push(raw_options(crate::shaping::htb::qdisc_options(
                default_class,
            )));
        let request = RouteNetlinkMessage::NewQueueDiscipline(m);
        self.tc_request(request, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, what)
            .await
            .map(drop)
    }

    /// Deletes the root qdisc (the kernel puts its default back).
    pub async fn delete_root_qdisc(&self, index: u32, what: &str) -> Result<(), KernelError> {
        let request = RouteNetlinkMessage::DelQueueDiscipline(message(index, 0, u32::MAX, 0));
        self.tc_request(request, NLM_F_ACK, what).await.map(drop)
    }

    /// Adds a clsact qdisc (ingress and egress filter hooks).
    pub async fn add_clsact(&self, index: u32, what: &str) -> Result<(), KernelError> {
        let mut m = message(index, CLSACT_HANDLE, CLSACT_PARENT, 0);
        m.attributes.push(TcAttribute::Kind("clsact".into()));
        let request = RouteNetlinkMessage::NewQueueDiscipline(m);
        self.tc_request(request, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, what)
            .await
            .map(drop)
    }

    /// Deletes the clsact qdisc.
    pub async fn delete_clsact(&self, index: u32, what: &str) -> Result<(), KernelError> {
        let request = RouteNetlinkMessage::DelQueueDiscipline(message(
            index,
            CLSACT_HANDLE,
            CLSACT_PARENT,
            0,
        ));
        self.tc_request(request, NLM_F_ACK, what).await.map(drop)
    }

    /// Creates or changes the HTB class `classid` under `parent`.
    pub async fn set_htb_class(
        &self,
        index: u32,
        classid: u32,
        parent: u32,
        options: Vec<(u16, Vec<u8>)>,
        what: &str,
    ) -> Result<(), KernelError> {
        let mut m = message(index, classid, parent, 0);
        m.attributes.push(TcAttribute::Kind("htb".into()));
        m.attributes.push(raw_options(options));
        let request = RouteNetlinkMessage::NewTrafficClass(m);
        self.tc_request(request, NLM_F_ACK | NLM_F_CREATE, what)
            .await
            .map(drop)
    }

    /// Deletes class `classid`.
    pub async fn delete_class(
        &self,
        index: u32,
        classid: u32,
        what: &str,
    ) -> Result<(), KernelError> {
        let request = RouteNetlinkMessage::DelTrafficClass(message(index, classid, 0, 0));
        self.tc_request(request, NLM_F_ACK, what).await.map(drop)
    }

    /// Adds a `bpf` filter at priority `pref` under `parent`.
    pub async fn add_bpf_filter(
        &self,
        index: u32,
        parent: u32,
        pref: u16,
        options: Vec<(u16, Vec<u8>)>,
        what: &str,
    ) -> Result<(), KernelError> {
        let info = (u32::from(pref) << 16) | u32::from(ETH_P_ALL.to_be());
        let mut m = message(index, 1, parent, info);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        m.attributes.push(raw_options(options));
        let request = RouteNetlinkMessage::NewTrafficFilter(m);
        self.tc_request(request, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, what)
            .await
            .map(drop)
    }

    /// Deletes every filter at priority `pref` under `parent`.
    pub async fn delete_filter(
        &self,
        index: u32,
        parent: u32,
        pref: u16,
        what: &str,
    ) -> Result<(), KernelError> {
        let info = (u32::from(pref) << 16) | u32::from(ETH_P_ALL.to_be());
        let request = RouteNetlinkMessage::DelTrafficFilter(message(index, 0, parent, info));
        self.tc_request(request, NLM_F_ACK, what).await.map(drop)
    }
}
