//! The agent store's schema: ordered migrations on SQLite's
//! `PRAGMA user_version`, applied by `durable_sqlite::open` when the store
//! opens.
//!
//! Version 1 is the layout every agent before schema versions wrote
//! (`user_version` 0 with these tables), which is why it creates with
//! `IF NOT EXISTS`: such a store is adopted as it is. A change to the
//! schema is a new migration at the end of [`MIGRATIONS`]; a released
//! migration is never edited.

use durable_sqlite::M;

/// Version 1: desired document, object states, outbox, metadata.
pub(crate) const V1: &str = "
CREATE TABLE IF NOT EXISTS desired (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    signed BLOB NOT NULL,
    accepted_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    phase TEXT NOT NULL,
    message TEXT NOT NULL,
    restarts INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    spec BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('ack', 'event', 'state', 'metrics')),
    payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, seq);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Version 2: each object's reconciler state by name (`stopped`,
/// `backoff`, ...), so an agent restart resumes where it was: a workload
/// its restart policy stopped stays stopped. Empty in rows written before.
const V2: &str = "ALTER TABLE objects ADD COLUMN state TEXT NOT NULL DEFAULT '';";

/// Every migration, oldest first; the store's version is how many ran.
pub const MIGRATIONS: &[M<'static>] = &[
    M::up(V1).comment("desired, objects, outbox, meta (the layout before schema versions)"),
    M::up(V2).comment("objects.state: the reconciler's state"),
];

/// The schema version this agent writes.
pub const LATEST: usize = MIGRATIONS.len();

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        durable_sqlite::validate(super::MIGRATIONS).unwrap();
    }
}
