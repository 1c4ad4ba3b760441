//! The sync link: a wrapper around rumqttc that adds what the protocol
//! needs and rumqttc lacks: a durable outbox drained with QoS 1 (acks deleted
//! on the broker's PubAck, reports only on the controller's end-to-end
//! [`Receipt`], and sent again when none comes within [`RECEIPT_TIMEOUT`]),
//! hello + presence + re-subscribe on every ConnAck, jittered
//! exponential reconnect backoff, a raised packet limit, and acceptance of
//! signed desired state.
//!
//! Two tasks share the connection: the *poller* only polls the rumqttc
//! `EventLoop` (it never publishes: rumqttc can deadlock when the polling
//! task waits on its own request channel); the *driver* does all publishing
//! with non-blocking `try_publish`, store work, and acceptance.
//!
//! PubAck -> outbox seq mapping: every publish the driver makes is tagged (in
//! request order) in a shared book; rumqttc processes requests in order and
//! emits `Outgoing::Publish(pkid)` for each, where the poller pops the next
//! tag and records `pkid -> tag`; `Incoming::PubAck(pkid)` then names the
//! seq to delete. On a connection error rumqttc moves every unacked or
//! unsent request into `EventLoop::pending` synchronously inside `poll()`;
//! the poller clears `pending` and the book before anything else can run
//! (single-threaded runtime, `Rc` state), so tags and requests never drift
//! apart. After the next ConnAck the driver re-sends everything still in the
//! outbox; the controller dedups by (device, store_id, seq).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mecvisor_protocol::{
    topics, DesiredState, Hello, Label, ObjectVersion, Receipt, MAX_MESSAGE_BYTES,
};
use mqtt_transport::{Connection, TransportError};
use rand::Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::accept::{self, Identity, Verdict};
use crate::config::Config;
use crate::outbox::{to_wire, Wire};
use crate::store::{Store, StoreError};

/// Largest MQTT packet either way: a maximal message plus room for headers.
pub const MAX_PACKET_BYTES: usize = MAX_MESSAGE_BYTES + 64 * 1024;
/// Outbox entries published but not yet acknowledged, at most.
const WINDOW: usize = 32;
/// Capacity of rumqttc's request channel (well above WINDOW + hello traffic).
const REQUEST_CAPACITY: usize = 256;
/// First reconnect backoff ceiling.
const BACKOFF_BASE_MS: u64 = 200;
/// Largest reconnect backoff ceiling.
const BACKOFF_MAX_MS: u64 = 30_000;
/// How long sent reports may wait for the controller's receipt before the
/// driver sends them again (the controller dedups by seq).
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait for a receipt before sending again, reached by doubling
/// while the controller stays silent (so a fleet does not hammer it).
pub const RECEIPT_TIMEOUT_MAX: Duration = Duration::from_secs(80);
/// How long shutdown waits to flush "offline" and DISCONNECT.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything the link needs from the rest of the agent.
pub struct LinkContext {
    /// Device name and trusted controller key.
    pub identity: Identity,
    /// Labels for the hello.
    pub labels: Vec<Label>,
    /// The agent store.
    pub store: Rc<RefCell<Store>>,
    /// Signalled whenever something is added to the outbox.
    pub outbox_ready: Rc<Notify>,
    /// Where accepted documents go (to the reconciler).
    pub desired_tx: watch::Sender<Option<Arc<DesiredState>>>,
    /// Whether the broker connection is up (for status).
    pub connected: Rc<Cell<bool>>,
}

/// MQTT options for the configured broker. For `mqtts://` the returned
/// connection holds the TLS bridge (socket in the data dir), which must live
/// as long as the link runs. Call inside the tokio runtime.
pub fn mqtt_options(config: &Config) -> Result<Connection, TransportError> {
    let mut conn = mqtt_transport::connect_options(
        &config.device,
        &config.mqtt.url,
        config.mqtt.tls.as_ref(),
        &config.data_dir,
        Duration::from_secs(config.mqtt.keep_alive_s),
    )?;
    conn.options
        .set_clean_session(true)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_last_will(LastWill::new(
            topics::presence(&config.device),
            "offline",
            QoS::AtLeastOnce,
            false,
        ));
    Ok(conn)
}

/// Publishes in flight, shared by poller and driver (see module docs).
#[derive(Default)]
struct Book {
    connected: bool,
    /// Tags of requested publishes not yet seen as `Outgoing::Publish`.
    tags: VecDeque<Option<u64>>,
    /// Sent publishes awaiting PubAck: pkid -> outbox seq (None: not from the outbox).
    inflight: HashMap<u16, Option<u64>>,
}

impl Book {
    fn reset(&mut self, connected: bool) {
        self.connected = connected;
        self.tags.clear();
        self.inflight.clear();
    }
}

/// What the poller tells the driver.
enum LinkEvent {
    Connected,
    Disconnected,
    Desired(Publish),
    Other(Publish),
    Acked(u64),
}

/// Full-jitter reconnect delay for the given attempt (0-based).
pub fn reconnect_delay(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE_MS
        .saturating_mul(1u64 << attempt.min(20))
        .min(BACKOFF_MAX_MS);
    Duration::from_millis(rand::rng().random_range(0..=ceiling))
}

/// Runs the link until shutdown (then says "offline" and disconnects).
pub async fn run(ctx: LinkContext, options: MqttOptions, shutdown: watch::Receiver<bool>) {
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    mqtt_transport::tune_event_loop(&mut eventloop);
    let book = Rc::new(RefCell::new(Book::default()));
    let (tx, rx) = mpsc::unbounded_channel();
    let device = ctx.identity.device.clone();
    let poller = poll_loop(
        eventloop,
        book.clone(),
        tx,
        ctx.connected.clone(),
        topics::desired(&device),
        shutdown.clone(),
    );
    let store_id = match ctx.store.borrow().store_id() {
        Ok(id) => id,
        Err(e) => {
            error!(error = %e, "cannot read the store id; reports are sent without deduplication across stores");
            0
        }
    };
    let driver = Driver {
        client,
        book,
        ctx,
        store_id,
        cursor: 0,
        outstanding: BTreeSet::new(),
        awaiting_receipt: BTreeMap::new(),
        receipt_wait: RECEIPT_TIMEOUT,
        hello_pending_since: None,
    };
    tokio::join!(
        poller.instrument(info_span!("mqtt_poll")),
        driver.run(rx, shutdown).instrument(info_span!("sync"))
    );
}

async fn poll_loop(
    mut eventloop: EventLoop,
    book: Rc<RefCell<Book>>,
    tx: mpsc::UnboundedSender<LinkEvent>,
    connected: Rc<Cell<bool>>,
    desired_topic: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut attempt = 0u32;
    let mut farewell_deadline = None;
    loop {
        let polled = match farewell_deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(polled) => polled,
                Err(_) => {
                    warn!("could not say goodbye to the broker in time");
                    break;
                }
            },
            None => tokio::select! {
                polled = eventloop.poll() => polled,
                _ = shutdown.changed() => {
                    if !connected.get() {
                        break;
                    }
                    farewell_deadline = Some(tokio::time::Instant::now() + FAREWELL_TIMEOUT);
                    continue;
                }
            },
        };
        // No await between poll() returning and this match: rumqttc's
        // request channel and our book are still in step here.
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                attempt = 0;
                book.borrow_mut().reset(true);
                connected.set(true);
                info!(session_present = ack.session_present, "connected to broker");
                let _ = tx.send(LinkEvent::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let event = if publish.topic == desired_topic {
                    LinkEvent::Desired(publish)
                } else {
                    LinkEvent::Other(publish)
                };
                let _ = tx.send(event);
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                match book.borrow_mut().inflight.remove(&ack.pkid) {
                    Some(Some(seq)) => {
                        let _ = tx.send(LinkEvent::Acked(seq));
                    }
                    Some(None) => {}
                    None => debug!(pkid = ack.pkid, "PubAck for an unknown packet id"),
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                for code in ack.return_codes {
                    if let SubscribeReasonCode::Failure = code {
                        error!(topic = %desired_topic, "broker refused the subscription; no desired state will arrive");
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut book = book.borrow_mut();
                match book.tags.pop_front() {
                    Some(tag) => {
                        book.inflight.insert(pkid, tag);
                    }
                    None => warn!(pkid, "publish without a tag; its PubAck is ignored"),
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                info!("disconnected from broker");
                connected.set(false);
                break;
            }
            Ok(_) => {}
            Err(e) => {
                eventloop.pending.clear();
                book.borrow_mut().reset(false);
                let was_connected = connected.replace(false);
                let _ = tx.send(LinkEvent::Disconnected);
                if farewell_deadline.is_some() {
                    break;
                }
                let delay = reconnect_delay(attempt);
                attempt = attempt.saturating_add(1);
                let retry_in_ms = delay.as_millis() as u64;
                if was_connected {
                    warn!(error = %e, retry_in_ms, "broker connection lost");
                } else {
                    warn!(error = %e, attempt, retry_in_ms, "cannot connect to broker");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }
    connected.set(false);
    debug!("poller stopped");
}

/// Sleeps until `at`; never returns for `None` (the select guard skips it).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Driver {
    client: AsyncClient,
    book: Rc<RefCell<Book>>,
    ctx: LinkContext,
    /// Highest seq published on this connection.
    cursor: u64,
    /// Seqs published on this connection and not yet acknowledged (acks:
    /// by the broker; reports: by the controller's receipt).
    outstanding: BTreeSet<u64>,
    /// Report seqs among `outstanding`, with when each was sent: the
    /// broker's PubAck is not enough, only the controller's receipt is.
    awaiting_receipt: BTreeMap<u64, tokio::time::Instant>,
    /// How long the oldest report may wait for its receipt before the
    /// outbox is sent again: [`RECEIPT_TIMEOUT`], doubled (up to
    /// [`RECEIPT_TIMEOUT_MAX`]) each time that happens without a receipt.
    receipt_wait: Duration,
    /// This store's identity, sent with every report.
    store_id: u64,
    /// When the last hello went out, until the controller answers it (with a
    /// receipt or a document); unanswered, it is sent again like a report.
    hello_pending_since: Option<tokio::time::Instant>,
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<LinkEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let outbox_ready = self.ctx.outbox_ready.clone();
        loop {
            let oldest_unanswered = self
                .awaiting_receipt
                .values()
                .chain(self.hello_pending_since.iter())
                .min()
                .copied();
            let resend_at = oldest_unanswered.map(|sent| sent + self.receipt_wait);
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => self.handle(event),
                    None => break,
                },
                _ = outbox_ready.notified() => {}
                _ = sleep_until_some(resend_at), if resend_at.is_some() => self.resend_unreceipted(),
                _ = shutdown.changed() => {
                    self.farewell();
                    break;
                }
            }
            if let Err(e) = self.drain() {
                error!(error = %e, "cannot read the outbox");
            }
        }
        debug!("sync driver stopped");
    }

    fn handle(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected => self.on_connect(),
            LinkEvent::Disconnected => self.forget_sent(),
            LinkEvent::Acked(seq) if self.awaiting_receipt.contains_key(&seq) => {
                debug!(
                    seq,
                    "report reached the broker; waiting for the controller's receipt"
                );
            }
            LinkEvent::Acked(seq) => {
                self.outstanding.remove(&seq);
                match self.ctx.store.borrow().delete_outbox(seq) {
                    Ok(true) => debug!(seq, "delivered"),
                    Ok(false) => debug!(seq, "delivered (entry already superseded)"),
                    Err(e) => {
                        error!(seq, error = %e, "cannot delete a delivered entry; it will be sent again")
                    }
                }
            }
            LinkEvent::Desired(publish) => {
                let span = info_span!("desired", bytes = publish.payload.len());
                let _enter = span.enter();
                self.on_desired(&publish);
                if let Err(e) = self.client.try_ack(&publish) {
                    warn!(error = %e, "cannot ack the desired publish to the broker");
                }
            }
            LinkEvent::Other(publish)
                if publish.topic == topics::receipt(&self.ctx.identity.device) =>
            {
                self.on_receipt(&publish.payload);
                let _ = self.client.try_ack(&publish);
            }
            LinkEvent::Other(publish) => {
                warn!(topic = %publish.topic, "ignoring a message on an unexpected topic");
                let _ = self.client.try_ack(&publish);
            }
        }
    }

    fn on_desired(&mut self, publish: &Publish) {
        let verdict = {
            let mut store = self.ctx.store.borrow_mut();
            accept::handle_desired(&publish.payload, &self.ctx.identity, &mut store)
        };
        match verdict {
            Ok(Verdict::New(doc)) => {
                self.ctx.desired_tx.send_replace(Some(Arc::new(doc)));
            }
            Ok(Verdict::Duplicate | Verdict::Rejected(_)) => {}
            Ok(Verdict::Stale(_)) => {
                // The controller issued a document without knowing what this
                // device holds; the hello tells it, and it answers with a
                // newer generation.
                self.send_hello();
            }
            Err(e) => {
                error!(error = %e, "cannot record the desired state; the controller will resend it after the next hello")
            }
        }
    }

    /// Deletes the reports the controller says it has stored.
    fn on_receipt(&mut self, payload: &[u8]) {
        let receipt: Receipt = match mecvisor_protocol::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "ignoring an undecodable receipt");
                return;
            }
        };
        if receipt.device != self.ctx.identity.device {
            warn!(device = %receipt.device, "ignoring a receipt for another device");
            return;
        }
        self.receipt_wait = RECEIPT_TIMEOUT;
        if receipt.seqs.is_empty() {
            // Only the answer to a hello is empty; a receipt for reports
            // does not mean the controller heard the hello (it may have
            // missed it while it was not yet subscribed).
            self.hello_pending_since = None;
        }
        for seq in receipt.seqs {
            self.awaiting_receipt.remove(&seq);
            self.outstanding.remove(&seq);
            match self.ctx.store.borrow().delete_outbox(seq) {
                Ok(true) => debug!(seq, "report stored by the controller"),
                Ok(false) => debug!(seq, "receipt for an entry already gone"),
                Err(e) => error!(seq, error = %e, "cannot delete a receipted report"),
            }
        }
    }

    /// A report went unreceipted for [`RECEIPT_TIMEOUT`] (the controller was
    /// down, or the broker had no subscriber for it): send every entry still
    /// in the outbox again, from the oldest.
    ///
    /// The hello goes again too: if the controller missed it (it was not
    /// subscribed when we connected), it does not know this device and
    /// ignores its reports until it does.
    fn resend_unreceipted(&mut self) {
        info!(
            reports = self.awaiting_receipt.len(),
            waited_s = self.receipt_wait.as_secs(),
            "no receipt from the controller; saying hello and sending the outbox again"
        );
        self.receipt_wait = (self.receipt_wait * 2).min(RECEIPT_TIMEOUT_MAX);
        self.forget_sent();
        self.send_hello();
    }

    /// Forgets what was sent so `drain` starts again from the oldest entry.
    fn forget_sent(&mut self) {
        self.cursor = 0;
        self.outstanding.clear();
        self.awaiting_receipt.clear();
    }

    fn on_connect(&mut self) {
        self.forget_sent();
        let device = self.ctx.identity.device.clone();
        // Subscribe first: the broker handles our packets in order, so the
        // subscriptions are in place before the controller sees the hello.
        for topic in [topics::desired(&device), topics::receipt(&device)] {
            if let Err(e) = self.client.try_subscribe(&topic, QoS::AtLeastOnce) {
                error!(%topic, error = %e, "cannot request a subscription");
            }
        }
        self.publish(None, &topics::presence(&device), b"online".to_vec());
        self.receipt_wait = RECEIPT_TIMEOUT;
        self.send_hello();
    }

    fn send_hello(&mut self) {
        self.hello_pending_since = Some(tokio::time::Instant::now());
        match self.hello() {
            Ok(hello) => {
                info!(
                    generation = hello.last_applied_generation,
                    objects = hello.objects.len(),
                    "hello"
                );
                self.publish(
                    None,
                    &topics::hello(&self.ctx.identity.device),
                    mecvisor_protocol::encode(&hello),
                );
            }
            Err(e) => error!(error = %e, "cannot build hello"),
        }
    }

    fn hello(&self) -> Result<Hello, StoreError> {
        let store = self.ctx.store.borrow();
        let desired = store.desired()?;
        let objects = store
            .objects()?
            .into_iter()
            .map(|o| ObjectVersion {
                name: o.name,
                generation: o.generation,
            })
            .collect();
        Ok(Hello {
            device: self.ctx.identity.device.clone(),
            arch: std::env::consts::ARCH.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            last_applied_generation: desired.as_ref().map_or(0, |d| d.generation),
            last_applied_hash: desired.map(|d| d.content_hash).unwrap_or_default(),
            objects,
            labels: self.ctx.labels.clone(),
        })
    }

    /// Tags and requests one QoS 1 publish; false when not connected or
    /// rumqttc's channel is full (the caller retries later).
    fn publish(&self, tag: Option<u64>, topic: &str, payload: Vec<u8>) -> bool {
        let mut book = self.book.borrow_mut();
        if !book.connected {
            return false;
        }
        book.tags.push_back(tag);
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => true,
            Err(e) => {
                book.tags.pop_back();
                warn!(topic, error = %e, "publish request refused; will retry");
                false
            }
        }
    }

    /// Publishes outbox entries in seq order, keeping at most WINDOW unacked.
    fn drain(&mut self) -> Result<(), StoreError> {
        let device = self.ctx.identity.device.clone();
        while self.book.borrow().connected && self.outstanding.len() < WINDOW {
            let entries = self
                .ctx
                .store
                .borrow()
                .outbox_after(self.cursor, WINDOW - self.outstanding.len())?;
            if entries.is_empty() {
                return Ok(());
            }
            for entry in entries {
                let (topic, bytes, is_report) = match to_wire(&device, self.store_id, &entry) {
                    Ok(Wire::Ack(bytes)) => (topics::ack(&device), bytes, false),
                    Ok(Wire::Report(bytes)) => (topics::report(&device), bytes, true),
                    Err(e) => {
                        error!(seq = entry.seq, kind = %entry.kind, error = %e, "corrupt outbox entry cannot be sent; deleting it");
                        self.ctx.store.borrow().delete_outbox(entry.seq)?;
                        self.cursor = entry.seq;
                        continue;
                    }
                };
                if !self.publish(Some(entry.seq), &topic, bytes) {
                    return Ok(());
                }
                debug!(seq = entry.seq, kind = %entry.kind, "sent");
                self.cursor = entry.seq;
                self.outstanding.insert(entry.seq);
                if is_report {
                    self.awaiting_receipt
                        .insert(entry.seq, tokio::time::Instant::now());
                }
            }
        }
        Ok(())
    }

    fn farewell(&mut self) {
        let device = self.ctx.identity.device.clone();
        if self.publish(None, &topics::presence(&device), b"offline".to_vec()) {
            info!("saying offline and disconnecting");
            if let Err(e) = self.client.try_disconnect() {
                warn!(error = %e, "cannot request disconnect");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_is_jittered_and_capped() {
        for attempt in 0..40 {
            let ceiling = (200u64 << attempt.min(20)).min(30_000);
            for _ in 0..20 {
                assert!(reconnect_delay(attempt).as_millis() as u64 <= ceiling);
            }
        }
        let distinct: std::collections::HashSet<u128> =
            (0..50).map(|_| reconnect_delay(10).as_millis()).collect();
        assert!(distinct.len() > 1, "delays must be jittered");
    }

    #[test]
    fn options_carry_limit_will_and_identity() {
        let config = Config::parse(
            "device = \"edge-9\"\ndata_dir = \"/d\"\ncontroller_key = \"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1999\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let opts = rt.block_on(async { mqtt_options(&config).unwrap().options });
        assert_eq!(opts.client_id(), "edge-9");
        assert_eq!(opts.broker_address(), ("127.0.0.1".to_string(), 1999));
        assert_eq!(opts.max_packet_size(), MAX_MESSAGE_BYTES + 64 * 1024);
        let will = opts.last_will().unwrap();
        assert_eq!(will.topic, "mecv/v1/edge-9/presence");
        assert_eq!(&will.message[..], b"offline");
        assert!(opts.clean_session());
    }
}
