//! mecvisor fleet controller: manifests in, signed per-device desired state
//! out over MQTT, device state back in; plus the client used by `fleetctl`.
//!
//! - [`manifest`]: YAML manifests, parsing and validation.
//! - [`compose`]: per-device composition and the generation rule.
//! - [`store`]: the SQLite database.
//! - [`signer`]: the Ed25519 key file.
//! - [`fleet`]: apply/delete/read operations on top of the store.
//! - [`sync`]: handlers of hello, ack, report and presence messages.
//! - [`broker`]: the embedded rumqttd broker.
//! - [`link`]: the controller's MQTT client.
//! - [`api`]: the HTTP API; [`views`]: its JSON shapes.
//! - [`serve`]: the `fleet-controller` command line.
//! - [`client`], [`ctl`]: `fleetctl`'s HTTP client and commands.

pub mod api;
pub mod broker;
pub mod client;
pub mod compose;
pub mod ctl;
pub mod fleet;
pub mod link;
pub mod manifest;
pub mod serve;
pub mod signer;
pub mod store;
pub mod sync;
pub mod views;
