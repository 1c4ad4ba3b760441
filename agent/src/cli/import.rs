//! `edge-agent import`: an OCI image layout, oci-archive or `docker save`
//! tarball into the agent's content store, for air-gapped sites. Every
//! blob is verified; a bad archive changes nothing.

use std::path::Path;
use std::process::ExitCode;

use crate::config;

/// Imports `path` (naming images whose archive gives only a tag with
/// `name`) into the content store of the agent configured at `config`,
/// printing `name<TAB>digest` per image.
pub fn run(path: &Path, name: Option<&str>, config: &Path) -> ExitCode {
    let config = match config::Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    super::ensure_trust_anchor(&config);
    let mut options = content_store::StoreOptions::at(&config.content.dir);
    options.registries = config.content.registries.clone();
    let imported =
        content_store::ContentStore::open(options).and_then(|store| store.import(path, name));
    match imported {
        Ok(names) => {
            for (name, digest) in names {
                println!("{name}\t{digest}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
