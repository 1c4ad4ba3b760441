//! The agent's durable store (SQLite, WAL, `synchronous=FULL`): the last
//! accepted desired document, per-object state, and the bounded outbox of
//! messages waiting to reach the controller.
//!
//! Every write is a single statement or a transaction, so the store opens
//! cleanly after a SIGKILL or power cut at any point.

use std::path::{Path, PathBuf};

use mecvisor_protocol::Phase;
use rand::Rng;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

pub mod schema;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, set up or migrated (or was
    /// written by a newer agent).
    #[error("cannot open store {0}")]
    Open(#[from] durable_sqlite::OpenError),
    /// The read-only database could not be opened.
    #[error("cannot open store {path}: {source}")]
    OpenReadOnly {
        /// Database file.
        path: PathBuf,
        /// Underlying error.
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("store {what} failed: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        source: rusqlite::Error,
    },
    /// A row holds a value this agent does not understand.
    #[error("store holds a corrupt value: {0}")]
    Corrupt(String),
    /// The outbox is full of entries that may not be dropped; the new entry was refused.
    #[error("outbox full ({depth} entries, bound {max}): only acks/events/state remain, refusing a new {kind} entry")]
    OutboxFull {
        /// Kind of the refused entry.
        kind: OutboxKind,
        /// Current depth.
        depth: u64,
        /// Configured bound.
        max: u64,
    },
}

fn query(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// The kinds of outbox entry, in the order they may be sacrificed: metrics
/// first, then superseded state; acks and events never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// An `Ack` of a desired document (payload: Ack CBOR).
    Ack,
    /// An event report (payload: ReportBody CBOR).
    Event,
    /// A state report (payload: ReportBody CBOR).
    State,
    /// A metrics report (payload: ReportBody CBOR).
    Metrics,
}

impl OutboxKind {
    /// Name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Ack => "ack",
            OutboxKind::Event => "event",
            OutboxKind::State => "state",
            OutboxKind::Metrics => "metrics",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "ack" => OutboxKind::Ack,
            "event" => OutboxKind::Event,
            "state" => OutboxKind::State,
            "metrics" => OutboxKind::Metrics,
            other => return Err(StoreError::Corrupt(format!("outbox kind {other:?}"))),
        })
    }
}

impl std::fmt::Display for OutboxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Sequence number, increasing, never reused.
    pub seq: u64,
    /// What it is.
    pub kind: OutboxKind,
    /// CBOR payload.
    pub payload: Vec<u8>,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
}

/// Result of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// Sequence number of the new entry.
    pub seq: u64,
    /// Metrics entries dropped to make room.
    pub dropped_metrics: u64,
    /// Older unsent state entries replaced by this one.
    pub superseded_states: u64,
}

/// The last accepted desired document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDesired {
    /// Its generation.
    pub generation: u64,
    /// Its content hash.
    pub content_hash: String,
    /// The signed envelope exactly as received.
    pub signed: Vec<u8>,
}

/// Persisted state of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    /// Object name.
    pub name: String,
    /// `slice`, `container` or `vm`.
    pub kind: String,
    /// Life-cycle phase.
    pub phase: Phase,
    /// The reconciler's state by name (`ObjectState::name`); empty in rows
    /// written before schema version 2.
    pub state: String,
    /// Last error or explanation.
    pub message: String,
    /// Restart count.
    pub restarts: u32,
    /// Generation that last changed its spec.
    pub generation: u64,
    /// CBOR of its spec, to tell whether a new document changes it.
    pub spec: Vec<u8>,
}

fn phase_from_str(text: &str) -> Result<Phase, StoreError> {
    Ok(match text {
        "pending" => Phase::Pending,
        "applying" => Phase::Applying,
        "running" => Phase::Running,
        "failed" => Phase::Failed,
        "removing" => Phase::Removing,
        "unsupported" => Phase::Unsupported,
        other => return Err(StoreError::Corrupt(format!("phase {other:?}"))),
    })
}

/// Handle on the agent's SQLite database.
pub struct Store {
    conn: Connection,
    max_entries: u64,
}

/// Meta key of the store's random identity.
const STORE_ID_KEY: &str = "store_id";

impl Store {
    /// Opens (creating if needed) the store read-write, in WAL mode with
    /// `synchronous=FULL`; `max_entries` bounds the outbox.
    pub fn open(path: &Path, max_entries: u64) -> Result<Store, StoreError> {
        let conn = durable_sqlite::open(path, schema::MIGRATIONS)?;
        let store = Store { conn, max_entries };
        if store.meta(STORE_ID_KEY)?.is_none() {
            let id: u64 = rand::rng().random_range(1..=u64::MAX >> 1);
            store.set_meta(STORE_ID_KEY, &id.to_string())?;
        }
        Ok(store)
    }

    /// This store's random identity (see [`mecvisor_protocol::Report::store_id`]).
    pub fn store_id(&self) -> Result<u64, StoreError> {
        let text = self.meta(STORE_ID_KEY)?.unwrap_or_default();
        text.parse()
            .map_err(|_| StoreError::Corrupt(format!("store id {text:?} is not a number")))
    }

    /// Durably replaces the last accepted desired document and queues its
    /// ack in one transaction: a crash leaves either both or neither, so an
    /// accepted document always gets its ack and no ack names a document
    /// that was not stored.
    pub fn accept_desired(
        &mut self,
        doc: &StoredDesired,
        ack: &[u8],
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction().map_err(query("accept desired"))?;
        tx.execute(
            "INSERT INTO desired (id, generation, content_hash, signed, accepted_ms)
             VALUES (1, ?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET generation = excluded.generation,
               content_hash = excluded.content_hash, signed = excluded.signed,
               accepted_ms = excluded.accepted_ms",
            params![
                doc.generation as i64,
                doc.content_hash,
                doc.signed,
                now_ms as i64
            ],
        )
        .map_err(query("save desired"))?;
        // Acks are never dropped by the outbox bound, so no bound check here.
        tx.execute(
            "INSERT INTO outbox (kind, payload, created_ms) VALUES (?1, ?2, ?3)",
            params![OutboxKind::Ack.as_str(), ack, now_ms as i64],
        )
        .map_err(query("queue ack"))?;
        let seq = tx.last_insert_rowid() as u64;
        tx.commit().map_err(query("accept desired"))?;
        Ok(seq)
    }

    /// Opens an existing store read-only (for `edge-agent status` when the
    /// agent is not running).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::OpenReadOnly {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Store {
            conn,
            max_entries: u64::MAX,
        })
    }

    /// A small piece of agent metadata (e.g. `device`), if set.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(query("read meta"))
    }

    /// Sets a piece of agent metadata.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(query("write meta"))?;
        Ok(())
    }

    /// The last accepted desired document, if any.
    pub fn desired(&self) -> Result<Option<StoredDesired>, StoreError> {
        self.conn
            .query_row(
                "SELECT generation, content_hash, signed FROM desired WHERE id = 1",
                [],
                |r| {
                    Ok(StoredDesired {
                        generation: r.get::<_, i64>(0)? as u64,
                        content_hash: r.get(1)?,
                        signed: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(query("read desired"))
    }

    /// Every persisted object state, by name.
    pub fn objects(&self) -> Result<Vec<ObjectRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, kind, phase, message, restarts, generation, spec, state
                 FROM objects ORDER BY name",
            )
            .map_err(query("read objects"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                    r.get::<_, String>(7)?,
                ))
            })
            .map_err(query("read objects"))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, kind, phase, message, restarts, generation, spec, state) =
                row.map_err(query("read objects"))?;
            out.push(ObjectRecord {
                name,
                kind,
                phase: phase_from_str(&phase)?,
                state,
                message,
                restarts: u32::try_from(restarts).unwrap_or(u32::MAX),
                generation: generation as u64,
                spec,
            });
        }
        Ok(out)
    }

    /// Atomically replaces all object states.
    pub fn replace_objects(&mut self, objects: &[ObjectRecord]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(query("replace objects"))?;
        tx.execute("DELETE FROM objects", [])
            .map_err(query("replace objects"))?;
        for o in objects {
            tx.execute(
                "INSERT INTO objects (name, kind, phase, message, restarts, generation, spec, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    o.name,
                    o.kind,
                    o.phase.as_str(),
                    o.message,
                    o.restarts as i64,
                    o.generation as i64,
                    o.spec,
                    o.state
                ],
            )
            .map_err(query("replace objects"))?;
        }
        tx.commit().map_err(query("replace objects"))
    }

    /// Appends an entry to the outbox, applying the bound:
    /// a new state entry replaces older unsent state entries; when the
    /// outbox is full the oldest metrics entries are dropped first; acks and
    /// events are never dropped and always accepted (the bound may then be
    /// exceeded, logged loudly); a metrics or state entry that would need
    /// an ack or event dropped is refused with [`StoreError::OutboxFull`].
    pub fn enqueue(
        &mut self,
        kind: OutboxKind,
        payload: &[u8],
        created_ms: u64,
    ) -> Result<Enqueued, StoreError> {
        let max = self.max_entries;
        let tx = self.conn.transaction().map_err(query("enqueue"))?;
        let mut superseded_states = 0;
        if kind == OutboxKind::State {
            superseded_states = tx
                .execute("DELETE FROM outbox WHERE kind = 'state'", [])
                .map_err(query("enqueue"))? as u64;
        }
        let depth: i64 = tx
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .map_err(query("enqueue"))?;
        let mut depth = depth as u64;
        let mut dropped_metrics = 0;
        if depth >= max {
            let excess = depth + 1 - max;
            dropped_metrics = tx
                .execute(
                    "DELETE FROM outbox WHERE seq IN
                     (SELECT seq FROM outbox WHERE kind = 'metrics' ORDER BY seq LIMIT ?1)",
                    params![excess as i64],
                )
                .map_err(query("enqueue"))? as u64;
            depth -= dropped_metrics;
        }
        if depth >= max {
            match kind {
                OutboxKind::Metrics | OutboxKind::State => {
                    // Dropping nothing: the transaction rolls back on drop,
                    // so superseded states stay too.
                    return Err(StoreError::OutboxFull { kind, depth, max });
                }
                OutboxKind::Ack | OutboxKind::Event => {
                    tracing::error!(
                        depth,
                        max,
                        %kind,
                        "outbox over its bound: only acks/events/state remain and those are never dropped"
                    );
                }
            }
        }
        tx.execute(
            "INSERT INTO outbox (kind, payload, created_ms) VALUES (?1, ?2, ?3)",
            params![kind.as_str(), payload, created_ms as i64],
        )
        .map_err(query("enqueue"))?;
        let seq = tx.last_insert_rowid() as u64;
        tx.commit().map_err(query("enqueue"))?;
        Ok(Enqueued {
            seq,
            dropped_metrics,
            superseded_states,
        })
    }

    /// Up to `limit` outbox entries with a sequence number above `after`, in order.
    pub fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, kind, payload, created_ms FROM outbox
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(query("read outbox"))?;
        let rows = stmt
            .query_map(params![after as i64, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(query("read outbox"))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, kind, payload, created_ms) = row.map_err(query("read outbox"))?;
            out.push(OutboxEntry {
                seq: seq as u64,
                kind: OutboxKind::parse(&kind)?,
                payload,
                created_ms: created_ms as u64,
            });
        }
        Ok(out)
    }

    /// Deletes an entry once the broker acknowledged it; false if it was
    /// already gone (superseded or dropped).
    pub fn delete_outbox(&self, seq: u64) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM outbox WHERE seq = ?1", params![seq as i64])
            .map_err(query("delete outbox entry"))?;
        Ok(n == 1)
    }

    /// Number of entries waiting in the outbox.
    pub fn outbox_depth(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .map_err(query("count outbox"))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests;
