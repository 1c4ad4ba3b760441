//! SQLite store of the controller: devices, manifests, signed desired documents,
//! acks, reports (deduplicated by `(device, store_id, seq)`), actual state
//! and events.
//!
//! The database is the source of truth for desired state (see docs/design.md, "Sync
//! protocol"); it runs in WAL mode with `synchronous=FULL` so nothing that was
//! acknowledged to an operator or device is lost on a crash.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;

pub mod schema;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("database error while {context}: {source}")]
    Sql {
        /// What the store was doing.
        context: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The database could not be opened, set up or migrated (or was
    /// written by a newer controller).
    #[error("cannot open the database {0}")]
    Open(#[from] durable_sqlite::OpenError),
    /// A JSON column could not be encoded or decoded.
    #[error("corrupt {context} column: {source}")]
    Json {
        /// Which column.
        context: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Shorthand for attaching context to SQLite errors.
trait Ctx<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Ctx<T> for Result<T, rusqlite::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sql { context, source })
    }
}

fn json_ctx<T>(r: Result<T, serde_json::Error>, context: &'static str) -> Result<T, StoreError> {
    r.map_err(|source| StoreError::Json { context, source })
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One row of the `devices` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRow {
    /// Device name.
    pub name: String,
    /// CPU architecture from its last hello.
    pub arch: String,
    /// Agent version from its last hello.
    pub agent_version: String,
    /// Labels from its last hello.
    pub labels: BTreeMap<String, String>,
    /// Whether its presence says online.
    pub online: bool,
    /// Last time anything was heard from it.
    pub last_seen_ms: u64,
    /// Highest `last_applied_generation` it ever said hello with; new
    /// documents are always numbered above it.
    pub hello_generation: u64,
    /// Last generation it accepted.
    pub acked_generation: u64,
    /// Generation it reports converging on.
    pub applied_generation: u64,
    /// Sequence number of the state report the objects came from.
    pub state_seq: u64,
    /// Latest reported objects.
    pub objects: Vec<ReportedObject>,
    /// Last rejection reason; empty once a document is accepted.
    pub last_error: String,
}

/// An object as the device last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedObject {
    /// Object name.
    pub name: String,
    /// `slice`, `container` or `vm`.
    pub kind: String,
    /// Phase name.
    pub phase: String,
    /// Last message.
    pub message: String,
    /// Restart count.
    pub restarts: u32,
}

/// The stored signed desired document of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRow {
    /// Device name.
    pub device: String,
    /// Generation of the document.
    pub generation: u64,
    /// `sha256:` content hash of its spec.
    pub content_hash: String,
    /// `SignedDesired::to_bytes()` of the document, exactly as published.
    pub signed: Vec<u8>,
}

/// One event of a device (reported by it or recorded by the controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    /// When it happened, ms since the epoch.
    pub created_ms: u64,
    /// `info`, `warning` or `error`.
    pub severity: String,
    /// Object it concerns.
    pub object: Option<String>,
    /// What happened.
    pub message: String,
}

/// The controller's database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode with
    /// `synchronous=FULL`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = durable_sqlite::open(path, schema::MIGRATIONS)?;
        Ok(Store { conn })
    }

    /// Starts a write transaction; everything done through it commits at once.
    pub fn transaction(&mut self) -> Result<Tx<'_>, StoreError> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        Ok(Tx { tx })
    }

    /// All devices, by name.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        read_devices(&self.conn, None)
    }

    /// One device.
    pub fn device(&self, name: &str) -> Result<Option<DeviceRow>, StoreError> {
        Ok(read_devices(&self.conn, Some(name))?.pop())
    }

    /// All manifests, in name order.
    pub fn manifests(&self) -> Result<Vec<Manifest>, StoreError> {
        read_manifests(&self.conn)
    }

    /// All stored desired documents.
    pub fn all_desired(&self) -> Result<Vec<DesiredRow>, StoreError> {
        read_desired(&self.conn, None)
    }

    /// The stored desired document of one device.
    pub fn desired(&self, device: &str) -> Result<Option<DesiredRow>, StoreError> {
        Ok(read_desired(&self.conn, Some(device))?.pop())
    }

    /// The last `limit` events of a device, oldest first.
    pub fn events(&self, device: &str, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT created_ms, severity, object, message FROM
                   (SELECT * FROM events WHERE device = ?1 ORDER BY id DESC LIMIT ?2)
                 ORDER BY id ASC",
            )
            .ctx("reading events")?;
        let rows = stmt
            .query_map(params![device, limit], |r| {
                Ok(EventRow {
                    created_ms: r.get::<_, i64>(0)? as u64,
                    severity: r.get(1)?,
                    object: r.get(2)?,
                    message: r.get(3)?,
                })
            })
            .ctx("reading events")?;
        rows.collect::<Result<Vec<_>, _>>().ctx("reading events")
    }

    /// How many reports of a device are stored.
    pub fn report_count(&self, device: &str) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM reports WHERE device = ?1",
                [device],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .ctx("counting reports")
    }
}

/// A write transaction on the store; dropped without [`Tx::commit`] it rolls back.
pub struct Tx<'a> {
    tx: Transaction<'a>,
}

impl Tx<'_> {
    /// Commits everything done in this transaction durably.
    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().ctx("committing")
    }

    /// All devices, by name (as seen inside this transaction).
    pub fn devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        read_devices(&self.tx, None)
    }

    /// One device (as seen inside this transaction).
    pub fn device(&self, name: &str) -> Result<Option<DeviceRow>, StoreError> {
        Ok(read_devices(&self.tx, Some(name))?.pop())
    }

    /// All manifests, in name order (as seen inside this transaction).
    pub fn manifests(&self) -> Result<Vec<Manifest>, StoreError> {
        read_manifests(&self.tx)
    }

    /// The stored desired document of one device.
    pub fn desired(&self, device: &str) -> Result<Option<DesiredRow>, StoreError> {
        Ok(read_desired(&self.tx, Some(device))?.pop())
    }

    /// Registers a device by name if it is unknown; returns whether it was new.
    pub fn ensure_device(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute("INSERT OR IGNORE INTO devices(name) VALUES (?1)", [name])
            .ctx("registering a device")?;
        Ok(n == 1)
    }

    /// Records what a hello said about a device (registering it if needed).
    pub fn record_hello(
        &self,
        name: &str,
        arch: &str,
        agent_version: &str,
        labels: &BTreeMap<String, String>,
        last_applied_generation: u64,
    ) -> Result<(), StoreError> {
        self.ensure_device(name)?;
        let labels = json_ctx(serde_json::to_string(labels), "labels")?;
        self.tx
            .execute(
                "UPDATE devices SET arch = ?2, agent_version = ?3, labels = ?4, online = 1,
                   last_seen_ms = ?5, hello_generation = MAX(hello_generation, ?6)
                 WHERE name = ?1",
                params![
                    name,
                    arch,
                    agent_version,
                    labels,
                    now_ms() as i64,
                    last_applied_generation as i64
                ],
            )
            .ctx("recording a hello")?;
        Ok(())
    }

    /// Records presence (`online`) of a known device; unknown devices are ignored.
    pub fn set_online(&self, name: &str, online: bool) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute(
                "UPDATE devices SET online = ?2, last_seen_ms = ?3 WHERE name = ?1",
                params![name, online, now_ms() as i64],
            )
            .ctx("recording presence")?;
        Ok(n == 1)
    }

    /// Records an accepted ack: the acked generation only ever grows, and the
    /// last error is cleared.
    pub fn record_ack_accepted(&self, name: &str, generation: u64) -> Result<(), StoreError> {
        self.tx
            .execute(
                "UPDATE devices SET acked_generation = MAX(acked_generation, ?2),
                   last_error = '', last_seen_ms = ?3 WHERE name = ?1",
                params![name, generation as i64, now_ms() as i64],
            )
            .ctx("recording an ack")?;
        Ok(())
    }

    /// Records a rejection reason as the device's last error.
    pub fn record_ack_rejected(&self, name: &str, reason: &str) -> Result<(), StoreError> {
        self.tx
            .execute(
                "UPDATE devices SET last_error = ?2, last_seen_ms = ?3 WHERE name = ?1",
                params![name, reason, now_ms() as i64],
            )
            .ctx("recording a rejection")?;
        Ok(())
    }

    /// Stores a report once; returns false when `(device, store_id, seq)`
    /// was already stored.
    pub fn insert_report(
        &self,
        device: &str,
        store_id: u64,
        seq: u64,
        created_ms: u64,
        body_json: &str,
    ) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute(
                "INSERT OR IGNORE INTO reports(device, store_id, seq, created_ms, received_ms, body)
                 VALUES (?1, ?6, ?2, ?3, ?4, ?5)",
                params![
                    device,
                    seq as i64,
                    created_ms as i64,
                    now_ms() as i64,
                    body_json,
                    store_id as i64
                ],
            )
            .ctx("storing a report")?;
        Ok(n == 1)
    }

    /// Notes which agent store a device's reports come from. When it changed
    /// (the box was re-provisioned and its report seqs restart at 1), the
    /// device's state-report ordering restarts too; returns true then.
    pub fn switch_store(&self, device: &str, store_id: u64) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute(
                "UPDATE devices SET store_id = ?2, state_seq = 0
                 WHERE name = ?1 AND store_id != ?2",
                params![device, store_id as i64],
            )
            .ctx("recording the agent's store")?;
        Ok(n == 1)
    }

    /// Updates the actual state of a device from a state report, unless a
    /// newer state report (higher seq) was already applied.
    pub fn record_state(
        &self,
        device: &str,
        seq: u64,
        applied_generation: u64,
        objects: &[ReportedObject],
    ) -> Result<bool, StoreError> {
        let objects = json_ctx(serde_json::to_string(objects), "objects")?;
        let n = self
            .tx
            .execute(
                "UPDATE devices SET applied_generation = ?3, objects = ?4, state_seq = ?2,
                   last_seen_ms = ?5
                 WHERE name = ?1 AND state_seq < ?2",
                params![
                    device,
                    seq as i64,
                    applied_generation as i64,
                    objects,
                    now_ms() as i64
                ],
            )
            .ctx("recording actual state")?;
        Ok(n == 1)
    }

    /// Appends an event to a device's history.
    pub fn add_event(&self, device: &str, event: &EventRow) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO events(device, created_ms, severity, object, message)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    device,
                    event.created_ms as i64,
                    event.severity,
                    event.object,
                    event.message
                ],
            )
            .ctx("storing an event")?;
        Ok(())
    }

    /// Inserts or replaces a manifest.
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let body = json_ctx(serde_json::to_string(manifest), "manifest")?;
        self.tx
            .execute(
                "INSERT INTO manifests(name, body, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET body = excluded.body,
                   updated_ms = excluded.updated_ms",
                params![manifest.name, body, now_ms() as i64],
            )
            .ctx("storing a manifest")?;
        Ok(())
    }

    /// Deletes a manifest; returns whether it existed.
    pub fn delete_manifest(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute("DELETE FROM manifests WHERE name = ?1", [name])
            .ctx("deleting a manifest")?;
        Ok(n == 1)
    }

    /// Stores a new signed desired document for a device.
    pub fn put_desired(&self, row: &DesiredRow) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO desired(device, generation, content_hash, signed, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(device) DO UPDATE SET generation = excluded.generation,
                   content_hash = excluded.content_hash, signed = excluded.signed,
                   updated_ms = excluded.updated_ms",
                params![
                    row.device,
                    row.generation as i64,
                    row.content_hash,
                    row.signed,
                    now_ms() as i64
                ],
            )
            .ctx("storing a desired document")?;
        Ok(())
    }

    /// Forgets a device and everything about it; returns whether it existed.
    pub fn delete_device(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute("DELETE FROM devices WHERE name = ?1", [name])
            .ctx("deleting a device")?;
        for (sql, context) in [
            ("DELETE FROM desired WHERE device = ?1", "deleting desired"),
            ("DELETE FROM reports WHERE device = ?1", "deleting reports"),
            ("DELETE FROM events WHERE device = ?1", "deleting events"),
        ] {
            self.tx.execute(sql, [name]).ctx(context)?;
        }
        Ok(n == 1)
    }
}

fn read_devices(conn: &Connection, name: Option<&str>) -> Result<Vec<DeviceRow>, StoreError> {
    let sql = "SELECT name, arch, agent_version, labels, online, last_seen_ms, hello_generation,
                 acked_generation, applied_generation, state_seq, objects, last_error
               FROM devices WHERE ?1 IS NULL OR name = ?1 ORDER BY name";
    let mut stmt = conn.prepare(sql).ctx("reading devices")?;
    let raw = stmt
        .query_map([name], |r| {
            Ok((
                DeviceRow {
                    name: r.get(0)?,
                    arch: r.get(1)?,
                    agent_version: r.get(2)?,
                    labels: BTreeMap::new(),
                    online: r.get(4)?,
                    last_seen_ms: r.get::<_, i64>(5)? as u64,
                    hello_generation: r.get::<_, i64>(6)? as u64,
                    acked_generation: r.get::<_, i64>(7)? as u64,
                    applied_generation: r.get::<_, i64>(8)? as u64,
                    state_seq: r.get::<_, i64>(9)? as u64,
                    objects: Vec::new(),
                    last_error: r.get(11)?,
                },
                r.get::<_, String>(3)?,
                r.get::<_, String>(10)?,
            ))
        })
        .ctx("reading devices")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("reading devices")?;
    raw.into_iter()
        .map(|(mut row, labels, objects)| {
            row.labels = json_ctx(serde_json::from_str(&labels), "labels")?;
            row.objects = json_ctx(serde_json::from_str(&objects), "objects")?;
            Ok(row)
        })
        .collect()
}

fn read_manifests(conn: &Connection) -> Result<Vec<Manifest>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT body FROM manifests ORDER BY name")
        .ctx("reading manifests")?;
    let bodies = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .ctx("reading manifests")?
        .collect::<Result<Vec<_>, _>>()
        .ctx("reading manifests")?;
    bodies
        .iter()
        .map(|b| json_ctx(serde_json::from_str(b), "manifest"))
        .collect()
}

fn read_desired(conn: &Connection, device: Option<&str>) -> Result<Vec<DesiredRow>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT device, generation, content_hash, signed FROM desired
             WHERE ?1 IS NULL OR device = ?1 ORDER BY device",
        )
        .ctx("reading desired documents")?;
    let rows = stmt
        .query_map([device], |r| {
            Ok(DesiredRow {
                device: r.get(0)?,
                generation: r.get::<_, i64>(1)? as u64,
                content_hash: r.get(2)?,
                signed: r.get(3)?,
            })
        })
        .ctx("reading desired documents")?;
    rows.collect::<Result<Vec<_>, _>>()
        .ctx("reading desired documents")
}

/// Looks up whether a device exists without loading it (for cheap checks).
pub fn device_exists(store: &Store, name: &str) -> Result<bool, StoreError> {
    store
        .conn
        .query_row("SELECT 1 FROM devices WHERE name = ?1", [name], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
        .ctx("looking up a device")
}

#[cfg(test)]
mod tests;
