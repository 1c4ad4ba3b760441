//! Store tests on real SQLite files in temporary directories.

use super::*;

fn open(dir: &tempfile::TempDir, max: u64) -> Store {
    Store::open(&dir.path().join("agent.db"), max).unwrap()
}

fn kinds(store: &Store) -> Vec<(u64, OutboxKind)> {
    store
        .outbox_after(0, 1000)
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.kind))
        .collect()
}

#[test]
fn wal_and_full_sync_are_set() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 100);
    let mode: String = store
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = store
        .conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "FULL");
}

#[test]
fn outbox_is_ordered_and_deletes_by_seq() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, 100);
    let a = store.enqueue(OutboxKind::Ack, b"a", 1).unwrap().seq;
    let b = store.enqueue(OutboxKind::Event, b"b", 2).unwrap().seq;
    let c = store.enqueue(OutboxKind::Metrics, b"c", 3).unwrap().seq;
    assert!(a < b && b < c);
    let all = store.outbox_after(0, 10).unwrap();
    assert_eq!(
        all.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
        [b"a", b"b", b"c"]
    );
    assert_eq!(store.outbox_after(a, 1).unwrap()[0].seq, b);
    assert!(store.delete_outbox(b).unwrap());
    assert!(!store.delete_outbox(b).unwrap());
    assert_eq!(
        kinds(&store),
        [(a, OutboxKind::Ack), (c, OutboxKind::Metrics)]
    );
    assert_eq!(store.outbox_depth().unwrap(), 2);
    // seqs are never reused, even after deleting the newest one
    assert!(store.delete_outbox(c).unwrap());
    let d = store.enqueue(OutboxKind::Event, b"d", 4).unwrap().seq;
    assert!(d > c);
}

#[test]
fn full_outbox_drops_oldest_metrics_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, 10);
    let m1 = store.enqueue(OutboxKind::Metrics, b"m1", 0).unwrap().seq;
    let m2 = store.enqueue(OutboxKind::Metrics, b"m2", 0).unwrap().seq;
    for _ in 0..8 {
        store.enqueue(OutboxKind::Event, b"e", 0).unwrap();
    }
    assert_eq!(store.outbox_depth().unwrap(), 10);
    let r = store.enqueue(OutboxKind::Ack, b"a", 0).unwrap();
    assert_eq!(r.dropped_metrics, 1);
    let seqs: Vec<u64> = kinds(&store).into_iter().map(|(s, _)| s).collect();
    assert!(!seqs.contains(&m1), "oldest metrics dropped");
    assert!(seqs.contains(&m2));
    let r = store.enqueue(OutboxKind::Metrics, b"m3", 0).unwrap();
    assert_eq!(r.dropped_metrics, 1, "m2 made room for m3");
    assert_eq!(store.outbox_depth().unwrap(), 10);
}

#[test]
fn acks_and_events_are_never_dropped_metrics_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, 10);
    for _ in 0..10 {
        store.enqueue(OutboxKind::Event, b"e", 0).unwrap();
    }
    let err = store.enqueue(OutboxKind::Metrics, b"m", 0).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OutboxFull {
                kind: OutboxKind::Metrics,
                ..
            }
        ),
        "{err}"
    );
    let err = store.enqueue(OutboxKind::State, b"s", 0).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OutboxFull {
                kind: OutboxKind::State,
                ..
            }
        ),
        "{err}"
    );
    // acks still go in, above the bound, and nothing was dropped
    store.enqueue(OutboxKind::Ack, b"a", 0).unwrap();
    assert_eq!(store.outbox_depth().unwrap(), 11);
    assert!(kinds(&store).iter().all(|(_, k)| *k != OutboxKind::Metrics));
}

#[test]
fn new_state_supersedes_unsent_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir, 10);
    store.enqueue(OutboxKind::State, b"s1", 0).unwrap();
    for _ in 0..9 {
        store.enqueue(OutboxKind::Event, b"e", 0).unwrap();
    }
    // full with no metrics, but the new state replaces the old one
    let r = store.enqueue(OutboxKind::State, b"s2", 0).unwrap();
    assert_eq!(r.superseded_states, 1);
    let states: Vec<_> = store
        .outbox_after(0, 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == OutboxKind::State)
        .collect();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].payload, b"s2");
    assert_eq!(store.outbox_depth().unwrap(), 10);
}

#[test]
fn everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let doc = StoredDesired {
        generation: 7,
        content_hash: "sha256:ab".into(),
        signed: vec![1, 2, 3],
    };
    let rec = ObjectRecord {
        name: "cam".into(),
        kind: "container".into(),
        phase: Phase::Unsupported,
        state: "unsupported".into(),
        message: "no container runtime".into(),
        restarts: 2,
        generation: 7,
        spec: vec![9],
    };
    {
        let mut store = open(&dir, 100);
        assert_eq!(store.desired().unwrap(), None);
        store.accept_desired(&doc, b"a", 5).unwrap();
        store.replace_objects(std::slice::from_ref(&rec)).unwrap();
        // dropped without any explicit close, like a killed process
    }
    let store = open(&dir, 100);
    assert_eq!(store.desired().unwrap(), Some(doc.clone()));
    assert_eq!(store.objects().unwrap(), vec![rec]);
    assert_eq!(store.outbox_depth().unwrap(), 1);
    drop(store);
    let mut ro = Store::open_read_only(&dir.path().join("agent.db")).unwrap();
    assert_eq!(ro.desired().unwrap(), Some(doc.clone()));
    assert!(ro
        .accept_desired(
            &StoredDesired {
                generation: 8,
                ..doc
            },
            b"a",
            0
        )
        .is_err());
}

#[test]
fn read_only_open_of_missing_store_fails() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Store::open_read_only(&dir.path().join("none.db")).is_err());
}

/// The layout written before schema versions existed (`user_version` 0):
/// version 1's statements, run without recording a version. Released
/// migrations are never edited, so this is that layout exactly.
const UNVERSIONED_LAYOUT: &str = schema::V1;

#[test]
fn a_store_written_before_schema_versions_opens_with_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        conn.execute_batch(UNVERSIONED_LAYOUT).unwrap();
        conn.execute_batch(
            "INSERT INTO desired VALUES (1, 7, 'sha256:abc', x'a1b2', 1000);
             INSERT INTO objects VALUES ('web', 'container', 'running', '', 2, 7, x'01');
             INSERT INTO objects VALUES ('net', 'slice', 'failed', 'no uplink', 0, 6, x'02');
             INSERT INTO outbox (kind, payload, created_ms) VALUES ('ack', x'10', 1001);
             INSERT INTO outbox (kind, payload, created_ms) VALUES ('event', x'11', 1002);
             INSERT INTO outbox (kind, payload, created_ms) VALUES ('state', x'12', 1003);
             INSERT INTO meta VALUES ('store_id', '4242');
             INSERT INTO meta VALUES ('device', 'edge-1');",
        )
        .unwrap();
        assert_eq!(durable_sqlite::version(&conn).unwrap(), 0);
    }
    let mut store = Store::open(&path, 100).unwrap();
    assert_eq!(
        durable_sqlite::version(&store.conn).unwrap(),
        schema::LATEST as u64
    );
    assert_eq!(
        store.desired().unwrap(),
        Some(StoredDesired {
            generation: 7,
            content_hash: "sha256:abc".into(),
            signed: vec![0xa1, 0xb2],
        })
    );
    let objects = store.objects().unwrap();
    assert_eq!(
        objects
            .iter()
            .map(|o| (o.name.as_str(), o.phase, o.restarts, o.generation))
            .collect::<Vec<_>>(),
        [("net", Phase::Failed, 0, 6), ("web", Phase::Running, 2, 7)]
    );
    assert_eq!(objects[0].message, "no uplink");
    assert_eq!(objects[0].state, "", "no state before schema version 2");
    assert_eq!(
        store
            .outbox_after(0, 10)
            .unwrap()
            .iter()
            .map(|e| (e.seq, e.kind, e.payload.clone()))
            .collect::<Vec<_>>(),
        [
            (1, OutboxKind::Ack, vec![0x10]),
            (2, OutboxKind::Event, vec![0x11]),
            (3, OutboxKind::State, vec![0x12])
        ]
    );
    assert_eq!(
        store.store_id().unwrap(),
        4242,
        "the store keeps its identity"
    );
    assert_eq!(store.meta("device").unwrap().as_deref(), Some("edge-1"));
    // New writes continue after the old ones.
    let next = store.enqueue(OutboxKind::Event, b"x", 2000).unwrap();
    assert_eq!(next.seq, 4);
}

#[test]
fn a_store_from_a_newer_agent_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.db");
    drop(open(&dir, 100));
    let ahead = schema::LATEST as u64 + 1;
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", ahead as i64)
        .unwrap();
    let err = Store::open(&path, 100).err().expect("refused");
    assert!(
        matches!(
            err,
            StoreError::Open(durable_sqlite::OpenError::TooNew { found, .. }) if found == ahead
        ),
        "{err}"
    );
    let conn = Connection::open(&path).unwrap();
    assert_eq!(durable_sqlite::version(&conn).unwrap(), ahead);
}
