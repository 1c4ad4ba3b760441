//! `cargo xtask test`: the CI pipeline.
//!
//! Steps run in order; each prints a header and its duration, the first
//! failure stops the run and is named in the error, and a summary of every
//! step (with durations) ends the output either way.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::bins::cargo;
use crate::timing::human;
use crate::{shell, workspace_root};

/// Debian packages the tests need: a real MQTT broker and its clients,
/// openssl for test PKI, runc for containers, a real OCI registry
/// (docker-registry) with htpasswd (apache2-utils) for its basic auth,
/// busybox-static for the test images, and crun beside runc (both
/// runtimes are driven through the same CLI calls).
const APT_PACKAGES: &[&str] = &[
    "mosquitto",
    "mosquitto-clients",
    "openssl",
    "runc",
    "crun",
    "docker-registry",
    "apache2-utils",
    "busybox-static",
];

/// Options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip a step (repeatable), e.g. `--skip lab`. CI never skips.
    #[arg(long, value_enum)]
    skip: Vec<Step>,
    /// Do not install anything; fail instead when a tool is missing.
    #[arg(long)]
    no_install: bool,
}

/// The steps of the pipeline, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Step {
    /// Install missing apt packages (mosquitto, mosquitto-clients, openssl,
    /// runc, docker-registry, apache2-utils, busybox-static) and rustup
    /// components (rustfmt, clippy).
    Deps,
    /// `cargo fmt --all -- --check`.
    Fmt,
    /// `cargo clippy --workspace --all-targets -- -D warnings`.
    Clippy,
    /// cargo-deny over the dependency graph (`deny.toml`): RustSec
    /// advisories, licences, banned and duplicate crates, sources. The
    /// advisory database: $MECVISOR_ADVISORY_DB, else ../shared/advisory-db
    /// when present, else cargo-deny's own fetch; installs cargo-deny if
    /// missing.
    #[value(alias = "audit")]
    Deny,
    /// `cargo build --workspace --bins`.
    Build,
    /// `cargo test --workspace --no-fail-fast` (every test target runs, all
    /// failures listed), except the lab's tests.
    Test,
    /// The edge box lab (`cargo xtask hil`): static cross builds for both
    /// architectures, images (cold, then a warm rebuild that must be all
    /// cache hits), the Debian package in a fresh debootstrap root, and the
    /// hil tests on emulated ARM64/x86_64 boxes.
    Lab,
}

const STEPS: [Step; 7] = [
    Step::Deps,
    Step::Fmt,
    Step::Clippy,
    Step::Deny,
    Step::Build,
    Step::Test,
    Step::Lab,
];

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Deps => "deps",
            Step::Fmt => "fmt",
            Step::Clippy => "clippy",
            Step::Deny => "deny",
            Step::Build => "build",
            Step::Test => "test",
            Step::Lab => "lab",
        }
    }

    fn run(self, args: &TestArgs, counts: &mut TestCounts) -> Result<()> {
        match self {
            Step::Deps => install_deps(args.no_install),
            Step::Fmt => shell::run(cargo_cmd().args(["fmt", "--all", "--", "--check"])),
            Step::Clippy => shell::run(cargo_cmd().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])),
            Step::Deny => crate::supply_chain::check(args.no_install),
            Step::Build => shell::run(cargo_cmd().args(["build", "--workspace", "--bins"])),
            Step::Test => run_tests(counts),
            Step::Lab => crate::hil::suite(None, false, counts),
        }
    }
}

/// Outcome of one step, for the summary.
enum Outcome {
    Passed(Duration),
    Failed(Duration),
    Skipped,
    NotRun,
}

/// Runs the pipeline.
pub fn run(args: &TestArgs) -> Result<()> {
    if args.no_install {
        crate::forbid_installs();
    }
    let total = Instant::now();
    let mut outcomes: Vec<(Step, Outcome)> = Vec::new();
    let mut failure = None;
    let mut counts = TestCounts::default();
    for (i, step) in STEPS.iter().copied().enumerate() {
        if failure.is_some() {
            outcomes.push((step, Outcome::NotRun));
            continue;
        }
        if args.skip.contains(&step) {
            println!(
                "\n==> [{}/{}] {}: skipped (--skip)",
                i + 1,
                STEPS.len(),
                step.name()
            );
            outcomes.push((step, Outcome::Skipped));
            continue;
        }
        println!("\n==> [{}/{}] {}", i + 1, STEPS.len(), step.name());
        let start = Instant::now();
        let result = step.run(args, &mut counts);
        let took = start.elapsed();
        match result {
            Ok(()) => {
                println!("<== {} ok in {}", step.name(), human(took));
                outcomes.push((step, Outcome::Passed(took)));
            }
            Err(err) => {
                println!("<== {} FAILED after {}", step.name(), human(took));
                outcomes.push((step, Outcome::Failed(took)));
                failure = Some((step, err));
            }
        }
    }
    println!("\n==> summary");
    for (step, outcome) in &outcomes {
        let text = match outcome {
            Outcome::Passed(d) => format!("ok      {}", human(*d)),
            Outcome::Failed(d) => format!("FAILED  {}", human(*d)),
            Outcome::Skipped => "skipped".to_string(),
            Outcome::NotRun => "not run (an earlier step failed)".to_string(),
        };
        println!("  {:<7} {text}", step.name());
    }
    println!("  total   {}", human(total.elapsed()));
    let result = match failure {
        Some((step, err)) => Err(err.context(format!("step `{}` failed", step.name()))),
        None => {
            println!("all steps passed");
            Ok(())
        }
    };
    if counts.binaries > 0 {
        // The plain closing line CI reads, summed over every test binary.
        println!(
            "tests: {} passed, {} failed, {} skipped",
            counts.passed, counts.failed, counts.ignored
        );
    }
    result
}

/// Totals over every `test result:` line cargo test printed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TestCounts {
    /// Test binaries that reported.
    pub binaries: u64,
    /// Tests passed.
    pub passed: u64,
    /// Tests failed.
    pub failed: u64,
    /// Tests ignored.
    pub ignored: u64,
}

impl TestCounts {
    /// Adds one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test --workspace` except the lab's tests (the `lab` step runs
/// those once its images are built), echoing output and counting results.
fn run_tests(counts: &mut TestCounts) -> Result<()> {
    run_cargo_tests(
        &[
            "test",
            "--workspace",
            "--exclude",
            "mecvisor-hil",
            "--no-fail-fast",
        ],
        &[],
        counts,
    )
}

/// Runs `cargo <args>` with extra environment, echoing its output and adding
/// its `test result:` lines to `counts`.
pub fn run_cargo_tests(
    args: &[&str],
    envs: &[(&str, &str)],
    counts: &mut TestCounts,
) -> Result<()> {
    let mut cmd = cargo_cmd();
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped());
    let line = shell::describe(&cmd);
    println!("$ {line}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    if let Some(out) = child.stdout.take() {
        for text in std::io::BufRead::lines(std::io::BufReader::new(out)) {
            let text = text.context("reading cargo test output")?;
            counts.add_line(&text);
            println!("{text}");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

fn cargo_cmd() -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root());
    cmd
}

/// Installs missing apt packages and rustup components.
fn install_deps(no_install: bool) -> Result<()> {
    crate::debian::ensure_packages(APT_PACKAGES, no_install)?;
    for (component, subcommand) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        if shell::succeeds(cargo_cmd().args([subcommand, "--version"])) {
            println!("rustup component present: {component}");
        } else if no_install {
            bail!("rustup component {component} is missing (--no-install)");
        } else {
            shell::run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_cargo_test_result_lines() {
        let mut counts = TestCounts::default();
        counts.add_line(
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        );
        counts.add_line("test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured");
        counts.add_line("running 3 tests");
        assert_eq!(
            counts,
            TestCounts {
                binaries: 2,
                passed: 8,
                failed: 2,
                ignored: 1
            }
        );
    }
}
