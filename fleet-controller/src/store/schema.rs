//! The controller database's schema: ordered migrations on SQLite's
//! `PRAGMA user_version`, applied by `durable_sqlite::open` when the database
//! opens.
//!
//! Version 1 is the layout every controller before schema versions wrote
//! (`user_version` 0 with these tables), which is why it creates with
//! `IF NOT EXISTS`: such a database is adopted as it is. A change to the
//! schema is a new migration at the end of [`MIGRATIONS`]; a released
//! migration is never edited.

use durable_sqlite::M;

/// Version 1: devices, manifests, desired documents, reports, events.
pub(crate) const V1: &str = "
CREATE TABLE IF NOT EXISTS devices (
    name TEXT PRIMARY KEY,
    arch TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    online INTEGER NOT NULL DEFAULT 0,
    last_seen_ms INTEGER NOT NULL DEFAULT 0,
    hello_generation INTEGER NOT NULL DEFAULT 0,
    acked_generation INTEGER NOT NULL DEFAULT 0,
    applied_generation INTEGER NOT NULL DEFAULT 0,
    state_seq INTEGER NOT NULL DEFAULT 0,
    objects TEXT NOT NULL DEFAULT '[]',
    last_error TEXT NOT NULL DEFAULT '',
    store_id INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS manifests (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS desired (
    device TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    signed BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    device TEXT NOT NULL,
    store_id INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    UNIQUE(device, store_id, seq)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    severity TEXT NOT NULL,
    object TEXT,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_device ON events(device, id);
";

/// Every migration, oldest first; the database's version is how many ran.
pub const MIGRATIONS: &[M<'static>] = &[M::up(V1)
    .comment("devices, manifests, desired, reports, events (the layout before schema versions)")];

/// The schema version this controller writes.
pub const LATEST: usize = MIGRATIONS.len();

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        durable_sqlite::validate(super::MIGRATIONS).unwrap();
    }
}
