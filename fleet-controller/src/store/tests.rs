//! Store tests on real SQLite files in temporary directories.

use super::*;

#[test]
fn reports_are_stored_once_per_seq_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let mut store = Store::open(&path).unwrap();
        let tx = store.transaction().unwrap();
        tx.ensure_device("edge-1").unwrap();
        assert!(tx.insert_report("edge-1", 7, 1, 10, "{}").unwrap());
        assert!(!tx.insert_report("edge-1", 7, 1, 10, "{}").unwrap());
        assert!(tx.insert_report("edge-1", 7, 2, 11, "{}").unwrap());
        assert!(tx.insert_report("edge-2", 7, 1, 11, "{}").unwrap());
        // A re-provisioned box: new store, seqs from 1 again, all kept.
        assert!(tx.insert_report("edge-1", 8, 1, 12, "{}").unwrap());
        tx.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.report_count("edge-1").unwrap(), 3);
    assert_eq!(store.device("edge-1").unwrap().unwrap().name, "edge-1");
    assert!(device_exists(&store, "edge-1").unwrap());
    assert!(!device_exists(&store, "edge-9").unwrap());
}

#[test]
fn older_state_reports_do_not_overwrite_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("c.db")).unwrap();
    let tx = store.transaction().unwrap();
    tx.ensure_device("d").unwrap();
    assert!(tx.record_state("d", 5, 3, &[]).unwrap());
    assert!(!tx.record_state("d", 4, 2, &[]).unwrap());
    assert_eq!(tx.device("d").unwrap().unwrap().applied_generation, 3);
    // A new agent store restarts the ordering.
    assert!(tx.switch_store("d", 9).unwrap());
    assert!(!tx.switch_store("d", 9).unwrap());
    assert!(tx.record_state("d", 1, 4, &[]).unwrap());
    tx.commit().unwrap();
    assert_eq!(store.device("d").unwrap().unwrap().applied_generation, 4);
}

#[test]
fn uncommitted_transactions_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("c.db")).unwrap();
    {
        let tx = store.transaction().unwrap();
        tx.ensure_device("d").unwrap();
    }
    assert!(store.devices().unwrap().is_empty());
}

/// The layout written before schema versions existed (`user_version` 0):
/// version 1's statements, run without recording a version. Released
/// migrations are never edited, so this is that layout exactly.
const UNVERSIONED_LAYOUT: &str = schema::V1;

#[test]
fn a_database_written_before_schema_versions_opens_with_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        conn.execute_batch(UNVERSIONED_LAYOUT).unwrap();
        conn.execute_batch(
            r#"INSERT INTO devices (name, arch, agent_version, labels, online, last_seen_ms,
                 hello_generation, acked_generation, applied_generation, state_seq, objects,
                 last_error, store_id)
               VALUES ('edge-1', 'aarch64', '0.1.0', '{"site":"lab"}', 1, 5000, 3, 4, 4, 9,
                 '[{"name":"web","kind":"container","phase":"running","message":"","restarts":2}]',
                 '', 77);
               INSERT INTO manifests VALUES ('base',
                 '{"name":"base","devices":["edge-1"],"selector":{},"slices":[],"workloads":[]}', 10);
               INSERT INTO desired VALUES ('edge-1', 4, 'sha256:abc', x'c0ffee', 11);
               INSERT INTO reports VALUES ('edge-1', 77, 1, 12, 13, '{}');
               INSERT INTO reports VALUES ('edge-1', 77, 2, 14, 15, '{}');
               INSERT INTO events (device, created_ms, severity, object, message)
                 VALUES ('edge-1', 16, 'warning', 'web', 'restarted');"#,
        )
        .unwrap();
        assert_eq!(durable_sqlite::version(&conn).unwrap(), 0);
    }
    let mut store = Store::open(&path).unwrap();
    assert_eq!(
        durable_sqlite::version(&store.conn).unwrap(),
        schema::LATEST as u64
    );
    let device = store.device("edge-1").unwrap().expect("device kept");
    assert_eq!(
        (
            device.arch.as_str(),
            device.labels.get("site").map(String::as_str),
            device.online,
            device.hello_generation,
            device.acked_generation,
            device.state_seq
        ),
        ("aarch64", Some("lab"), true, 3, 4, 9)
    );
    assert_eq!(device.objects.len(), 1);
    assert_eq!(device.objects[0].restarts, 2);
    let manifests = store.manifests().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0].devices, ["edge-1"]);
    let desired = store.desired("edge-1").unwrap().expect("desired kept");
    assert_eq!(
        (desired.generation, desired.signed),
        (4, vec![0xc0, 0xff, 0xee])
    );
    assert_eq!(store.report_count("edge-1").unwrap(), 2);
    let events = store.events("edge-1", 10).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].message, "restarted");
    // Reports stay deduplicated per (device, store_id, seq) across the upgrade.
    let tx = store.transaction().unwrap();
    assert!(!tx.insert_report("edge-1", 77, 2, 14, "{}").unwrap());
    assert!(tx.insert_report("edge-1", 77, 3, 17, "{}").unwrap());
    tx.commit().unwrap();
}

#[test]
fn a_database_from_a_newer_controller_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    drop(Store::open(&path).unwrap());
    let ahead = schema::LATEST as u64 + 1;
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", ahead as i64)
        .unwrap();
    let err = Store::open(&path).err().expect("refused");
    assert!(
        matches!(err, StoreError::Open(durable_sqlite::OpenError::TooNew { found, .. }) if found == ahead),
        "{err}"
    );
    let conn = Connection::open(&path).unwrap();
    assert_eq!(durable_sqlite::version(&conn).unwrap(), ahead);
}
