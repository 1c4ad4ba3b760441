//! Wire protocol shared by `edge-agent` and `fleet-controller`.
//!
//! - [`spec`]: the desired state of a device (slices, workloads).
//! - [`messages`]: hello, ack and reports sent by agents.
//! - [`envelope`]: the Ed25519-signed envelope around desired state.
//! - [`codec`]: CBOR encoding with explicit field indices and bounded decoding.
//! - [`validate`]: validation that lists every problem with its path.
//! - [`topics`]: MQTT topic names.

pub mod codec;
pub mod envelope;
pub mod messages;
pub mod spec;
pub mod topics;
pub mod validate;

pub use codec::{decode, encode, DecodeError, MAX_MESSAGE_BYTES};
pub use envelope::{EnvelopeError, SignedDesired};
pub use messages::*;
pub use spec::*;
pub use validate::{Invalid, Problem};
