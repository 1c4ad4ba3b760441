//! SQLite the way mecvisor's stores use it: the agent's store on every
//! edge box and the controller's database.
//!
//! [`open`] gives a connection in WAL mode with `synchronous=FULL` (a
//! commit is on disk before it returns, so nothing acknowledged is lost on
//! a power cut), foreign keys on and a busy timeout, and brings the schema
//! to the latest version: ordered migrations on `PRAGMA user_version`
//! (rusqlite_migration), all pending ones in one transaction. A database
//! written by a newer binary is refused and left untouched.
//!
//! Each store keeps its migrations in its own `schema.rs`: a schema change
//! is a new migration at the end of the list, and a released migration is
//! never edited.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite_migration::{MigrationDefinitionError, Migrations};

/// One migration (its SQL, run once), as the stores list them.
pub use rusqlite_migration::M;

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// SQLite refused a step of opening or setting up the database.
    #[error("{path}: {context}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The step.
        context: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file system would not take WAL mode (e.g. no shared memory).
    #[error("{path}: journal mode is {mode}, WAL could not be enabled")]
    NotWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// Written by a newer release (a downgrade): this binary does not know
    /// the layout and changes nothing.
    #[error("{path}: schema version {found} is newer than this release knows ({latest}): the database was written by a newer release")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its `PRAGMA user_version`.
        found: u64,
        /// The newest version this binary knows.
        latest: usize,
    },
    /// A migration failed; the transaction rolled back, nothing changed.
    #[error("{path}: migrating the schema to version {latest}: {source}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The version it was being brought to.
        latest: usize,
        /// What failed.
        source: rusqlite_migration::Error,
    },
}

/// Opens (creating if needed) the database at `path` and migrates it to
/// the last of `migrations`.
pub fn open(path: &Path, migrations: &'static [M<'static>]) -> Result<Connection, OpenError> {
    let sqlite = |context| {
        move |source| OpenError::Sqlite {
            path: path.to_path_buf(),
            context,
            source,
        }
    };
    let mut conn = Connection::open(path).map_err(sqlite("opening"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite("setting the busy timeout"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(sqlite("enabling WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::NotWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(sqlite("setting synchronous=FULL and foreign keys"))?;
    let before = migrate(&mut conn, path, migrations)?;
    if before != migrations.len() as u64 {
        tracing::info!(
            db = %path.display(),
            from = before,
            to = migrations.len(),
            "schema migrated"
        );
    }
    Ok(conn)
}

/// The database's schema version (`PRAGMA user_version`; 0 before any
/// migration ran).
pub fn version(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map(|v| u64::try_from(v).unwrap_or(0))
}

/// Brings the schema to the last of `migrations`; returns the version the
/// database had before.
fn migrate(
    conn: &mut Connection,
    path: &Path,
    migrations: &'static [M<'static>],
) -> Result<u64, OpenError> {
    let before = version(conn).map_err(|source| OpenError::Sqlite {
        path: path.to_path_buf(),
        context: "reading the schema version",
        source,
    })?;
    match Migrations::from_slice(migrations).to_latest(conn) {
        Ok(()) => Ok(before),
        Err(rusqlite_migration::Error::MigrationDefinition(
            MigrationDefinitionError::DatabaseTooFarAhead,
        )) => Err(OpenError::TooNew {
            path: path.to_path_buf(),
            found: before,
            latest: migrations.len(),
        }),
        Err(source) => Err(OpenError::Migrate {
            path: path.to_path_buf(),
            latest: migrations.len(),
            source,
        }),
    }
}

/// Checks a store's migration list (for its unit tests).
pub fn validate(migrations: &'static [M<'static>]) -> Result<(), rusqlite_migration::Error> {
    Migrations::from_slice(migrations).validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &[M<'static>] = &[
        M::up("CREATE TABLE a (x INTEGER NOT NULL);"),
        M::up("ALTER TABLE a ADD COLUMN y TEXT NOT NULL DEFAULT 'none';"),
    ];
    const ONE: &[M<'static>] = &[M::up("CREATE TABLE a (x INTEGER NOT NULL);")];
    const BROKEN: &[M<'static>] = &[
        M::up("CREATE TABLE a (x INTEGER NOT NULL);"),
        M::up("ALTER TABLE a ADD COLUMN z TEXT; ALTER TABLE nowhere ADD COLUMN q TEXT;"),
    ];

    #[test]
    fn opens_durable_and_migrates_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open(&path, ONE).unwrap();
        conn.execute("INSERT INTO a (x) VALUES (1)", []).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
        assert_eq!(version(&conn).unwrap(), 1);
        drop(conn);
        let conn = open(&path, TWO).unwrap();
        assert_eq!(version(&conn).unwrap(), 2);
        let row: (i64, String) = conn
            .query_row("SELECT x, y FROM a", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(
            row,
            (1, "none".to_string()),
            "old rows kept, new column filled"
        );
    }

    #[test]
    fn a_failed_migration_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(open(&path, ONE).unwrap());
        let err = open(&path, BROKEN).unwrap_err();
        assert!(matches!(err, OpenError::Migrate { latest: 2, .. }), "{err}");
        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn).unwrap(), 1);
        let columns: i64 = conn
            .query_row("SELECT COUNT(*) FROM pragma_table_info('a')", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(columns, 1, "the half-run migration rolled back");
    }

    #[test]
    fn a_newer_database_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(open(&path, TWO).unwrap());
        let err = open(&path, ONE).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::TooNew {
                    found: 2,
                    latest: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(version(&Connection::open(&path).unwrap()).unwrap(), 2);
    }

    #[test]
    fn the_lists_are_valid() {
        validate(TWO).unwrap();
    }
}
