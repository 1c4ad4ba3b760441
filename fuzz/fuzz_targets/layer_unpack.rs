//! Untrusted layer blobs: a tar (or, keyed off the first byte, a gzip or
//! zstd stream) applied onto a fresh root. Whatever the bytes, nothing may
//! appear or change outside that root.
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use content_store::unpack::{apply_layer, Compression, Limits};
use libfuzzer_sys::fuzz_target;

/// What the canary file next to the root holds.
const CANARY: &[u8] = b"outside the root";

fuzz_target!(|data: &[u8]| {
    // Gzip and zstd streams start with these bytes; anything else is a tar.
    let compression = match data.first() {
        Some(0x1f) => Compression::Gzip,
        Some(0x28) => Compression::Zstd,
        _ => Compression::None,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let canary = dir.path().join("canary");
    fs::create_dir(&root).expect("root");
    fs::create_dir(&canary).expect("canary dir");
    fs::write(canary.join("file"), CANARY).expect("canary file");
    let limits = Limits {
        max_bytes: 64 * 1024 * 1024,
        max_entries: 10_000,
    };
    let _ = apply_layer(data, compression, &root, &limits);

    assert_eq!(
        names(dir.path()),
        ["canary", "root"],
        "created next to the root"
    );
    assert_eq!(names(&canary), ["file"], "created in the canary dir");
    let meta = fs::symlink_metadata(canary.join("file")).expect("canary meta");
    assert!(
        meta.is_file() && meta.nlink() == 1,
        "canary replaced or linked"
    );
    assert_eq!(fs::read(canary.join("file")).expect("canary"), CANARY);
});

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
