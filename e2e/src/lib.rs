//! Test kit for mecvisor's end-to-end tests: real brokers, real certificates,
//! real binaries. The tests themselves live in `tests/`.
//!
//! For the content store and container runtime: a real OCI registry on
//! loopback ([`registry`]) and OCI test images built from busybox ([`oci`]).
//!
//! Everything started here is stopped when its guard drops, also when a test
//! panics.

pub mod certs;
pub mod mosquitto;
pub mod oci;
pub mod probe;
pub mod process;
pub mod registry;
pub mod site;

pub use certs::TestCerts;
pub use mosquitto::Mosquitto;
pub use process::{bin_path, free_port, wait_until, Child};

/// Prints why a test is skipped (shown with `--nocapture` and in CI logs).
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}
