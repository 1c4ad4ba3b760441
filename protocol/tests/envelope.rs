//! Signing and verification of desired-state documents.

mod common;

use ed25519_dalek::SigningKey;
use mecvisor_protocol::envelope::*;
use mecvisor_protocol::*;

fn key(byte: u8) -> SigningKey {
    SigningKey::from_bytes(&[byte; 32])
}

#[test]
fn signed_document_opens_with_the_right_key() {
    let state = common::sample_state(5);
    let bytes = SignedDesired::sign(&state, &key(1)).to_bytes();
    let opened = SignedDesired::open(&bytes, &key(1).verifying_key()).expect("opens");
    assert_eq!(opened, state);
}

#[test]
fn wrong_key_is_refused() {
    let bytes = SignedDesired::sign(&common::sample_state(5), &key(1)).to_bytes();
    let err = SignedDesired::open(&bytes, &key(2).verifying_key()).expect_err("refused");
    assert!(matches!(err, EnvelopeError::BadSignature), "{err}");
}

#[test]
fn tampered_payload_is_refused() {
    let mut envelope = SignedDesired::sign(&common::sample_state(5), &key(1));
    let mut tampered = common::sample_state(6);
    tampered.spec.slices.clear();
    envelope.payload = encode(&tampered);
    let err =
        SignedDesired::open(&envelope.to_bytes(), &key(1).verifying_key()).expect_err("refused");
    assert!(matches!(err, EnvelopeError::BadSignature), "{err}");
}

#[test]
fn unsigned_document_is_refused() {
    let envelope = SignedDesired {
        payload: encode(&common::sample_state(5)),
        signature: vec![],
    };
    let err =
        SignedDesired::open(&envelope.to_bytes(), &key(1).verifying_key()).expect_err("refused");
    assert!(matches!(err, EnvelopeError::Unsigned(0)), "{err}");
}

#[test]
fn garbage_is_refused() {
    for bytes in [&b""[..], b"\xff\xff\xff", b"hello world", &[0x9f; 64]] {
        let err = SignedDesired::open(bytes, &key(1).verifying_key()).expect_err("refused");
        assert!(matches!(err, EnvelopeError::Decode(_)), "{err}");
    }
}

#[test]
fn keys_round_trip_through_hex() {
    let signing = generate_signing_key().expect("random key");
    let again = signing_key_from_hex(&signing_key_to_hex(&signing)).expect("parses");
    assert_eq!(again.to_bytes(), signing.to_bytes());
    let public =
        verifying_key_from_hex(&verifying_key_to_hex(&signing.verifying_key())).expect("parses");
    assert_eq!(public, signing.verifying_key());
    assert!(verifying_key_from_hex("not hex").is_err());
    assert!(verifying_key_from_hex("abcd").is_err());
}
