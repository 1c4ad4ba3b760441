//! The controller's MQTT client (rumqttc, wrapped): subscribes to every
//! device's uplink topics, re-subscribes after every reconnect, reconnects
//! with jittered backoff, and publishes desired documents at QoS 1 from a task
//! other than the one polling the event loop (rumqttc deadlocks otherwise).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mqtt_transport::{BrokerUrl, Connection, TlsFiles, TransportError};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::broker::MAX_PACKET_BYTES;
use crate::fleet::{Fleet, Publish};

/// Builds the rumqttc options for the controller's client: plain or TLS
/// (through `mqtt-transport`'s bridge, whose socket goes in `socket_dir`).
/// The returned connection's bridge must live as long as the link runs.
pub fn options(
    url: &BrokerUrl,
    tls: Option<&TlsFiles>,
    client_id: &str,
    socket_dir: &Path,
) -> Result<Connection, TransportError> {
    let mut conn =
        mqtt_transport::connect_options(client_id, url, tls, socket_dir, Duration::from_secs(30))?;
    conn.options
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    Ok(conn)
}

/// What the publisher task is asked to do.
enum Command {
    /// The session is (re)established: subscribe and resend unacked documents.
    Connected,
    /// Publish one message.
    Publish(Publish),
}

/// Runs the link forever: one task polls the event loop and hands incoming
/// messages to the sync handlers; another subscribes and publishes.
pub async fn run(
    opts: MqttOptions,
    fleet: Arc<Fleet>,
    mut outbox: mpsc::UnboundedReceiver<Publish>,
) {
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    mqtt_transport::tune_event_loop(&mut eventloop);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<Command>();
    let (in_tx, in_rx) = mpsc::unbounded_channel::<(String, Vec<u8>)>();

    let forward = cmd_tx.clone();
    tokio::spawn(async move {
        while let Some(p) = outbox.recv().await {
            if forward.send(Command::Publish(p)).is_err() {
                break;
            }
        }
    });
    tokio::spawn(publisher(client, cmd_rx, fleet.clone()));
    tokio::spawn(handle_incoming(in_rx, fleet));
    poll(eventloop, cmd_tx, in_tx).await;
}

async fn handle_incoming(mut rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>, fleet: Arc<Fleet>) {
    while let Some((topic, payload)) = rx.recv().await {
        let fleet = fleet.clone();
        let result = tokio::task::spawn_blocking(move || {
            crate::sync::handle_message(&fleet, &topic, &payload)
        })
        .await;
        if let Err(e) = result {
            error!(error = %e, "uplink handler panicked; message dropped");
        }
    }
}

async fn publisher(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Command>,
    fleet: Arc<Fleet>,
) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Connected => {
                for filter in mecvisor_protocol::topics::UPLINK_FILTERS {
                    if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce).await {
                        error!(%filter, error = %e, "subscribe failed");
                    }
                }
                info!("subscribed to device uplink topics");
                let fleet2 = fleet.clone();
                match tokio::task::spawn_blocking(move || fleet2.unacked_documents()).await {
                    Ok(Ok(docs)) => {
                        for row in docs {
                            debug!(device = %row.device, generation = row.generation, "resending unacked document");
                            send(&client, Publish::desired(&row)).await;
                        }
                    }
                    Ok(Err(e)) => warn!(error = %e, "cannot list unacked documents"),
                    Err(e) => warn!(error = %e, "listing unacked documents panicked"),
                }
            }
            Command::Publish(p) => send(&client, p).await,
        }
    }
}

async fn send(client: &AsyncClient, p: Publish) {
    let topic = p.topic.clone();
    if let Err(e) = client
        .publish(p.topic, QoS::AtLeastOnce, false, p.payload)
        .await
    {
        error!(%topic, error = %e, "publish failed; the device gets the document on its next hello");
    }
}

/// Jitter in 0..max_ms from the clock (no randomness source needed for this).
fn jitter_ms(max_ms: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    if max_ms == 0 {
        0
    } else {
        nanos % max_ms
    }
}

async fn poll(
    mut eventloop: EventLoop,
    cmd_tx: mpsc::UnboundedSender<Command>,
    in_tx: mpsc::UnboundedSender<(String, Vec<u8>)>,
) {
    let mut backoff_ms: u64 = 250;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                info!(code = ?ack.code, "connected to the MQTT broker");
                backoff_ms = 250;
                if cmd_tx.send(Command::Connected).is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                if in_tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let wait = backoff_ms + jitter_ms(backoff_ms / 2 + 1);
                warn!(error = %e, retry_in_ms = wait, "MQTT connection lost; reconnecting");
                tokio::time::sleep(Duration::from_millis(wait)).await;
                backoff_ms = (backoff_ms * 2).min(30_000);
            }
        }
    }
}
