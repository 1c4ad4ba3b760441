//! Acceptance of desired-state documents received from the network.
//!
//! Order of checks: signature (with the controller key), device, document
//! validation, generation. A new document is written to the store before it
//! is acked. Every refusal is logged, answered with an `Ack` Rejected and an
//! `Event`, and changes nothing else.

use ed25519_dalek::VerifyingKey;
use mecvisor_protocol::{
    Ack, AckOutcome, DesiredState, Event, ReportBody, Severity, SignedDesired,
};
use tracing::{info, warn};

use crate::outbox::{self, now_ms};
use crate::store::{Store, StoreError, StoredDesired};

/// What became of a received document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Newer than anything stored: stored, acked, to be reconciled.
    New(DesiredState),
    /// The document already accepted: acked again, nothing changed.
    Duplicate,
    /// Refused for the given reason; nothing changed.
    Rejected(String),
    /// Refused because it is older than, or differs at the same generation
    /// from, the document this device holds: the controller does not know
    /// what the device holds (its database was lost or restored, or a hello
    /// went unheard). Nothing changed; the caller says hello again so the
    /// controller can issue a newer generation.
    Stale(String),
}

/// Who we are and whom we trust.
#[derive(Debug, Clone)]
pub struct Identity {
    /// This device's name.
    pub device: String,
    /// The controller's public key.
    pub controller_key: VerifyingKey,
}

/// Judges untrusted bytes from the `desired` topic, stores a new document
/// and enqueues the ack (and, on refusal, an event). A store error means
/// nothing could be recorded; the controller resends after the next hello.
pub fn handle_desired(
    bytes: &[u8],
    me: &Identity,
    store: &mut Store,
) -> Result<Verdict, StoreError> {
    let doc = match SignedDesired::open(bytes, &me.controller_key) {
        Ok(doc) => doc,
        Err(e) => return reject(store, me, 0, String::new(), format!("refused: {e}")),
    };
    let (generation, hash) = (doc.generation, doc.content_hash.clone());
    if doc.device != me.device {
        let reason = format!(
            "refused: document is for device {:?}, this is {:?}",
            doc.device, me.device
        );
        return reject(store, me, generation, hash, reason);
    }
    if let Err(invalid) = doc.validate() {
        return reject(
            store,
            me,
            generation,
            hash,
            format!("refused: invalid document: {invalid}"),
        );
    }
    let stored = store.desired()?;
    let stored_generation = stored.as_ref().map_or(0, |s| s.generation);
    if let Some(current) = &stored {
        if generation < current.generation {
            let reason = format!(
                "refused: generation {generation} is older than the accepted generation {} (replay)",
                current.generation
            );
            return reject(store, me, generation, hash, reason).map(stale);
        }
        if generation == current.generation {
            if hash == current.content_hash {
                info!(
                    generation,
                    "duplicate of the accepted document; acking again"
                );
                outbox::push_ack(store, &ack(me, generation, hash, AckOutcome::Accepted))?;
                return Ok(Verdict::Duplicate);
            }
            let reason = format!(
                "refused: generation {generation} was already accepted with hash {}, this one has {hash}",
                current.content_hash
            );
            return reject(store, me, generation, hash, reason).map(stale);
        }
    }
    let accepted = ack(me, generation, hash.clone(), AckOutcome::Accepted);
    store.accept_desired(
        &StoredDesired {
            generation,
            content_hash: hash.clone(),
            signed: bytes.to_vec(),
        },
        &mecvisor_protocol::encode(&accepted),
        now_ms(),
    )?;
    info!(generation, previous = stored_generation, %hash, "accepted desired state");
    Ok(Verdict::New(doc))
}

/// Re-opens the stored document at start, checking its signature again so a
/// corrupted store is never trusted.
pub fn load_stored(me: &Identity, store: &Store) -> Result<Option<DesiredState>, String> {
    let Some(stored) = store.desired().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let doc = SignedDesired::open(&stored.signed, &me.controller_key)
        .map_err(|e| format!("stored desired state does not verify: {e}"))?;
    if doc.device != me.device || doc.generation != stored.generation {
        return Err(format!(
            "stored desired state is for {:?} generation {}, expected {:?} generation {}",
            doc.device, doc.generation, me.device, stored.generation
        ));
    }
    Ok(Some(doc))
}

fn ack(me: &Identity, generation: u64, content_hash: String, outcome: AckOutcome) -> Ack {
    Ack {
        device: me.device.clone(),
        generation,
        content_hash,
        outcome,
    }
}

/// Turns a refusal into [`Verdict::Stale`].
fn stale(verdict: Verdict) -> Verdict {
    match verdict {
        Verdict::Rejected(reason) => Verdict::Stale(reason),
        other => other,
    }
}

fn reject(
    store: &mut Store,
    me: &Identity,
    generation: u64,
    hash: String,
    reason: String,
) -> Result<Verdict, StoreError> {
    warn!(generation, %reason, "desired state refused");
    outbox::push_ack(
        store,
        &ack(me, generation, hash, AckOutcome::Rejected(reason.clone())),
    )?;
    outbox::push_report(
        store,
        &ReportBody::Event(Event {
            severity: Severity::Warning,
            object: None,
            message: format!("desired state generation {generation} {reason}"),
        }),
    )?;
    Ok(Verdict::Rejected(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OutboxEntry, OutboxKind};
    use ed25519_dalek::SigningKey;
    use mecvisor_protocol::{DeviceSpec, SliceSpec};

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        key: SigningKey,
        me: Identity,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.db"), 1000).unwrap();
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let me = Identity {
            device: "edge-1".into(),
            controller_key: key.verifying_key(),
        };
        Fixture {
            _dir: dir,
            store,
            key,
            me,
        }
    }

    fn state(device: &str, generation: u64, vlan: u16) -> DesiredState {
        let spec = DeviceSpec {
            slices: vec![SliceSpec {
                name: "net".into(),
                vlan_id: vlan,
                uplink: "eth0".into(),
                qos: mecvisor_protocol::QosSpec {
                    tier: Some(mecvisor_protocol::QosTier::Gold),
                    ..Default::default()
                },
                subnet: None,
                gateway: None,
            }],
            workloads: vec![],
        };
        DesiredState {
            device: device.into(),
            generation,
            content_hash: spec.content_hash(),
            spec,
        }
    }

    fn signed(f: &Fixture, s: &DesiredState) -> Vec<u8> {
        SignedDesired::sign(s, &f.key).to_bytes()
    }

    fn drain(store: &Store) -> Vec<OutboxEntry> {
        let all = store.outbox_after(0, 100).unwrap();
        for e in &all {
            store.delete_outbox(e.seq).unwrap();
        }
        all
    }

    fn only_ack(entries: &[OutboxEntry]) -> Ack {
        let acks: Vec<Ack> = entries
            .iter()
            .filter(|e| e.kind == OutboxKind::Ack)
            .map(|e| mecvisor_protocol::decode(&e.payload).unwrap())
            .collect();
        assert_eq!(acks.len(), 1, "{entries:?}");
        acks[0].clone()
    }

    fn assert_rejected(f: &mut Fixture, bytes: &[u8], needle: &str) {
        assert_refused(f, bytes, needle, false);
    }

    /// Like [`assert_rejected`], for refusals that must come back as
    /// [`Verdict::Stale`] (the link then says hello again).
    fn assert_stale(f: &mut Fixture, bytes: &[u8], needle: &str) {
        assert_refused(f, bytes, needle, true);
    }

    fn assert_refused(f: &mut Fixture, bytes: &[u8], needle: &str, stale: bool) {
        let before = f.store.desired().unwrap();
        let verdict = handle_desired(bytes, &f.me, &mut f.store).unwrap();
        match (&verdict, stale) {
            (Verdict::Rejected(reason), false) | (Verdict::Stale(reason), true) => {
                assert!(reason.contains(needle), "{reason}")
            }
            (other, _) => panic!("expected a refusal (stale: {stale}), got {other:?}"),
        }
        assert_eq!(
            f.store.desired().unwrap(),
            before,
            "refusal changed the store"
        );
        let entries = drain(&f.store);
        let ack = only_ack(&entries);
        assert!(matches!(ack.outcome, AckOutcome::Rejected(ref r) if r.contains(needle)));
        let events: Vec<_> = entries
            .iter()
            .filter(|e| e.kind == OutboxKind::Event)
            .collect();
        assert_eq!(events.len(), 1);
        let body: ReportBody = mecvisor_protocol::decode(&events[0].payload).unwrap();
        assert!(matches!(body, ReportBody::Event(ref e) if e.severity == Severity::Warning));
    }

    #[test]
    fn new_document_is_stored_then_acked() {
        let mut f = fixture();
        let doc = state("edge-1", 1, 10);
        let bytes = signed(&f, &doc);
        assert_eq!(
            handle_desired(&bytes, &f.me, &mut f.store).unwrap(),
            Verdict::New(doc.clone())
        );
        let stored = f.store.desired().unwrap().unwrap();
        assert_eq!((stored.generation, stored.signed.clone()), (1, bytes));
        let ack = only_ack(&drain(&f.store));
        assert_eq!(ack.outcome, AckOutcome::Accepted);
        assert_eq!(
            (ack.generation, ack.content_hash),
            (1, doc.content_hash.clone())
        );
        assert_eq!(load_stored(&f.me, &f.store).unwrap(), Some(doc));
    }

    #[test]
    fn duplicate_is_reacked_without_change() {
        let mut f = fixture();
        let bytes = signed(&f, &state("edge-1", 2, 10));
        handle_desired(&bytes, &f.me, &mut f.store).unwrap();
        drain(&f.store);
        assert_eq!(
            handle_desired(&bytes, &f.me, &mut f.store).unwrap(),
            Verdict::Duplicate
        );
        let entries = drain(&f.store);
        assert_eq!(only_ack(&entries).outcome, AckOutcome::Accepted);
        assert_eq!(entries.len(), 1, "no event for a duplicate");
    }

    #[test]
    fn replay_and_conflicting_generation_are_refused() {
        let mut f = fixture();
        let old = signed(&f, &state("edge-1", 1, 10));
        let current = signed(&f, &state("edge-1", 2, 10));
        handle_desired(&current, &f.me, &mut f.store).unwrap();
        drain(&f.store);
        assert_stale(
            &mut f,
            &old,
            "older than the accepted generation 2 (replay)",
        );
        let conflicting = signed(&f, &state("edge-1", 2, 11));
        assert_stale(&mut f, &conflicting, "already accepted with hash");
        assert_eq!(f.store.desired().unwrap().unwrap().signed, current);
    }

    #[test]
    fn tampered_signature_is_refused() {
        let mut f = fixture();
        let mut env = SignedDesired::sign(&state("edge-1", 1, 10), &f.key);
        env.signature[0] ^= 1;
        assert_rejected(&mut f, &env.to_bytes(), "bad signature");
        // payload swapped under a valid signature of something else
        let mut env = SignedDesired::sign(&state("edge-1", 1, 10), &f.key);
        env.payload = mecvisor_protocol::encode(&state("edge-1", 9, 10));
        assert_rejected(&mut f, &env.to_bytes(), "bad signature");
        // signed by another key
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let bytes = SignedDesired::sign(&state("edge-1", 1, 10), &other).to_bytes();
        assert_rejected(&mut f, &bytes, "bad signature");
        // unsigned
        let mut env = SignedDesired::sign(&state("edge-1", 1, 10), &f.key);
        env.signature.clear();
        assert_rejected(&mut f, &env.to_bytes(), "unsigned");
    }

    #[test]
    fn garbage_bytes_are_refused() {
        let mut f = fixture();
        for bytes in [
            &b""[..],
            b"\xff\xff\xff",
            b"hello world",
            &[0x82, 0x40, 0x40],
        ] {
            assert_rejected(&mut f, bytes, "refused:");
        }
        let big = vec![0u8; mecvisor_protocol::MAX_MESSAGE_BYTES + 1];
        assert_rejected(&mut f, &big, "exceeds");
    }

    #[test]
    fn wrong_device_and_invalid_documents_are_refused() {
        let mut f = fixture();
        let other_device = signed(&f, &state("edge-2", 1, 10));
        assert_rejected(&mut f, &other_device, "for device \"edge-2\"");
        let mut bad_hash = state("edge-1", 1, 10);
        bad_hash.content_hash = "sha256:00".into();
        let bad_hash = signed(&f, &bad_hash);
        assert_rejected(&mut f, &bad_hash, "content_hash");
        let bad_vlan = signed(&f, &state("edge-1", 1, 0));
        assert_rejected(&mut f, &bad_vlan, "vlan");
        assert_eq!(f.store.desired().unwrap(), None);
    }
}
