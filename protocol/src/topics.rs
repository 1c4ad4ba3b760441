//! MQTT topic names. Every device owns the subtree `mecv/v1/<device>/`.

/// Prefix of every mecvisor topic.
pub const PREFIX: &str = "mecv/v1";

/// Controller -> agent: signed desired state.
pub fn desired(device: &str) -> String {
    format!("{PREFIX}/{device}/desired")
}

/// Controller -> agent: receipts for stored reports.
pub fn receipt(device: &str) -> String {
    format!("{PREFIX}/{device}/receipt")
}

/// Agent -> controller: durable reports.
pub fn report(device: &str) -> String {
    format!("{PREFIX}/{device}/report")
}

/// Agent -> controller: acks of desired-state documents.
pub fn ack(device: &str) -> String {
    format!("{PREFIX}/{device}/ack")
}

/// Agent -> controller: hello on every connect.
pub fn hello(device: &str) -> String {
    format!("{PREFIX}/{device}/hello")
}

/// Agent -> controller: `online` / `offline` (the latter as last will).
pub fn presence(device: &str) -> String {
    format!("{PREFIX}/{device}/presence")
}

/// The kinds of agent -> controller topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    /// `.../report`
    Report,
    /// `.../ack`
    Ack,
    /// `.../hello`
    Hello,
    /// `.../presence`
    Presence,
}

/// Splits an agent -> controller topic into device and kind; `None` for any
/// other topic.
pub fn parse_uplink(topic: &str) -> Option<(&str, Uplink)> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let (device, leaf) = rest.split_once('/')?;
    let kind = match leaf {
        "report" => Uplink::Report,
        "ack" => Uplink::Ack,
        "hello" => Uplink::Hello,
        "presence" => Uplink::Presence,
        _ => return None,
    };
    crate::validate::check_name(device).ok()?;
    Some((device, kind))
}

/// Subscription filters the controller uses for all devices.
pub const UPLINK_FILTERS: [&str; 4] = [
    "mecv/v1/+/report",
    "mecv/v1/+/ack",
    "mecv/v1/+/hello",
    "mecv/v1/+/presence",
];
