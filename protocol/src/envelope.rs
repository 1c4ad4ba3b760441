//! The signed envelope around a desired-state document (Ed25519).
//!
//! The controller signs the CBOR bytes of a [`DesiredState`]; the agent
//! verifies the signature over exactly those bytes before decoding them.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use minicbor::{Decode, Encode};

use crate::codec::{self, DecodeError};
use crate::spec::DesiredState;

/// What goes on the `desired` topic.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SignedDesired {
    /// CBOR encoding of a [`DesiredState`].
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub payload: Vec<u8>,
    /// Ed25519 signature over `payload`.
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub signature: Vec<u8>,
}

/// Why a signed document was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The envelope or the document inside it does not decode.
    #[error("cannot decode: {0}")]
    Decode(#[from] DecodeError),
    /// There is no signature of the right length.
    #[error("document is unsigned or its signature is {0} bytes, not 64")]
    Unsigned(usize),
    /// The signature does not verify against the controller's key.
    #[error("bad signature: not signed by the configured controller key")]
    BadSignature,
}

impl SignedDesired {
    /// Encodes and signs a document.
    pub fn sign(state: &DesiredState, key: &SigningKey) -> Self {
        let payload = codec::encode(state);
        let signature = key.sign(&payload).to_bytes().to_vec();
        SignedDesired { payload, signature }
    }

    /// Encodes the envelope for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes an envelope from untrusted bytes, checks its signature, then
    /// decodes the document. Nothing is trusted before the signature verifies.
    pub fn open(bytes: &[u8], key: &VerifyingKey) -> Result<DesiredState, EnvelopeError> {
        let envelope: SignedDesired = codec::decode(bytes)?;
        let raw: [u8; 64] = envelope
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| EnvelopeError::Unsigned(envelope.signature.len()))?;
        key.verify(&envelope.payload, &Signature::from_bytes(&raw))
            .map_err(|_| EnvelopeError::BadSignature)?;
        Ok(codec::decode(&envelope.payload)?)
    }
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 64 hex digits.
    #[error("key must be 64 hex digits (32 bytes), got {0:?}")]
    Format(String),
    /// Not a valid Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    Invalid,
    /// The OS random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

fn parse_32(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let bytes = hex::decode(text).map_err(|_| KeyError::Format(text.chars().take(80).collect()))?;
    bytes
        .try_into()
        .map_err(|_| KeyError::Format(text.chars().take(80).collect()))
}

/// Parses a signing key from 64 hex digits (its 32-byte seed).
pub fn signing_key_from_hex(text: &str) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&parse_32(text)?))
}

/// Parses a verifying (public) key from 64 hex digits.
pub fn verifying_key_from_hex(text: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&parse_32(text)?).map_err(|_| KeyError::Invalid)
}

/// Makes a new signing key from the OS random source.
pub fn generate_signing_key() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Hex form of a signing key's seed, for key files.
pub fn signing_key_to_hex(key: &SigningKey) -> String {
    hex::encode(key.to_bytes())
}

/// Hex form of a public key, for agent configuration.
pub fn verifying_key_to_hex(key: &VerifyingKey) -> String {
    hex::encode(key.to_bytes())
}
