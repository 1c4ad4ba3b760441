//! Pulls from a real registry on loopback (Debian's docker-registry) with
//! images the tests build: by tag and digest, gzip and zstd layers,
//! multi-platform indexes, basic auth, TLS with a CA bundle, resumed
//! downloads across a store reopen (an agent restart), offline
//! resolution, and everything a registry can do wrong: corrupt and
//! truncated blobs, hangs, garbage. Skips when docker-registry is missing.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use content_store::{ContentStore, Platform, RegistryAccess, StoreOptions};
use mecvisor_e2e::oci::{push, push_index, LayerCompression, TestImage};
use mecvisor_e2e::registry::{Registry, RegistryOptions};

fn store_for(dir: &Path, registry: Option<&Registry>, access: RegistryAccess) -> ContentStore {
    let mut options = StoreOptions::at(dir);
    if let Some(r) = registry {
        let access = RegistryAccess {
            plain_http: !r.is_tls(),
            ..access
        };
        options.registries.registries.insert(r.host(), access);
    }
    options.registries.read_timeout_secs = 3;
    options.registries.connect_timeout_secs = 3;
    ContentStore::open(options).expect("open store")
}

/// A store that reaches `registry` over plain HTTP and picks `arch` from indexes.
fn store_for_arch(dir: &Path, registry: &Registry, arch: &str) -> ContentStore {
    let mut options = StoreOptions::at(dir);
    options.registries.registries.insert(
        registry.host(),
        RegistryAccess {
            plain_http: true,
            ..RegistryAccess::default()
        },
    );
    options.platform = Platform {
        architecture: arch.into(),
        os: "linux".into(),
        variant: None,
    };
    ContentStore::open(options).expect("store")
}

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs/sha256")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn pulls_by_tag_and_digest_and_works_offline() {
    let Some(mut registry) = Registry::start(RegistryOptions::default()) else {
        return;
    };
    let gzip = TestImage::busybox(LayerCompression::Gzip);
    let zstd = TestImage::busybox(LayerCompression::Zstd).with_layer(
        &[("etc/motd", b"zstd layer\n", 0o644)],
        LayerCompression::Zstd,
    );
    push(&registry, "apps/gzip", "v1", &gzip);
    let zstd_digest = push(&registry, "apps/zstd", "v1", &zstd);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_for(dir.path(), Some(&registry), RegistryAccess::default());

    let by_tag = format!("{}/apps/gzip:v1", registry.host());
    let image = store.ensure(&by_tag).await.expect("pull by tag");
    assert_eq!(image.digest.to_string(), gzip.digest());
    let run = image.config.config.clone().expect("run config");
    assert_eq!(run.cmd, Some(vec!["/bin/sh".to_string()]));
    let root = store.rootfs(&image).expect("unpack");
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).expect("link"),
        Path::new("/bin/busybox")
    );

    let by_digest = format!("{}/apps/zstd@{zstd_digest}", registry.host());
    let image = store.ensure(&by_digest).await.expect("pull by digest");
    let root = store.rootfs(&image).expect("unpack zstd");
    assert_eq!(
        std::fs::read(root.join("etc/motd")).expect("motd"),
        b"zstd layer\n"
    );

    // Registry gone: digest references resolve from the store, tags fall
    // back to the digest pulled last, and a reopened store (agent restart)
    // does the same.
    registry.stop();
    let downloaded = store.bytes_downloaded();
    store.ensure(&by_digest).await.expect("digest offline");
    store.ensure(&by_tag).await.expect("tag offline falls back");
    assert_eq!(store.bytes_downloaded(), downloaded, "nothing fetched");
    drop(store);
    let reopened = store_for(dir.path(), Some(&registry), RegistryAccess::default());
    let image = reopened.ensure(&by_tag).await.expect("tag after restart");
    assert_eq!(image.digest.to_string(), gzip.digest());
    let missing = format!("{}/apps/never:v1", registry.host());
    let err = reopened
        .ensure(&missing)
        .await
        .expect_err("unknown offline")
        .to_string();
    assert!(err.contains("apps/never"), "{err}");
}

#[tokio::test]
async fn picks_this_platform_from_an_index() {
    let Some(registry) = Registry::start(RegistryOptions::default()) else {
        return;
    };
    let amd = TestImage::busybox(LayerCompression::Gzip)
        .with_config(|c| c["architecture"] = "amd64".into());
    let arm = TestImage::busybox(LayerCompression::Gzip)
        .with_config(|c| c["architecture"] = "arm64".into())
        .with_layer(&[("etc/arch", b"arm64\n", 0o644)], LayerCompression::Gzip);
    push_index(
        &registry,
        "multi",
        "v1",
        &[(&amd, "amd64"), (&arm, "arm64")],
    );
    let reference = format!("{}/multi:v1", registry.host());
    for (arch, expected) in [("amd64", amd.digest()), ("arm64", arm.digest())] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_for_arch(dir.path(), &registry, arch);
        let image = store.ensure(&reference).await.expect("pull index");
        assert_eq!(image.digest.to_string(), expected, "{arch}");
        assert!(store.resolve_local(&reference).expect("resolve").is_some());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_for_arch(dir.path(), &registry, "riscv64");
    let err = store
        .ensure(&reference)
        .await
        .expect_err("no riscv64")
        .to_string();
    assert!(
        err.contains("no image for linux/riscv64") && err.contains("linux/arm64"),
        "{err}"
    );
}

#[tokio::test]
async fn basic_auth_and_tls_with_a_ca_bundle() {
    let options = RegistryOptions {
        basic_auth: Some(("edge".into(), "s3cret".into())),
        tls: true,
    };
    let Some(registry) = Registry::start(options) else {
        return;
    };
    let image = TestImage::busybox(LayerCompression::Gzip);
    push(&registry, "private/app", "v1", &image);
    let reference = format!("{}/private/app:v1", registry.host());
    let ca = registry.ca_pem().expect("ca").to_path_buf();

    let dir = tempfile::tempdir().expect("tempdir");
    let anonymous = store_for(
        dir.path(),
        Some(&registry),
        RegistryAccess {
            ca_file: Some(ca.clone()),
            ..Default::default()
        },
    );
    let err = anonymous
        .ensure(&reference)
        .await
        .expect_err("needs credentials")
        .to_string();
    assert!(
        err.to_lowercase().contains("not authorized") || err.contains("401"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let no_ca = store_for(
        dir.path(),
        Some(&registry),
        RegistryAccess {
            username: Some("edge".into()),
            password: Some("s3cret".into()),
            ..Default::default()
        },
    );
    let err = no_ca
        .ensure(&reference)
        .await
        .expect_err("unknown CA")
        .to_string();
    assert!(err.contains(&registry.host()), "{err}");
    assert_eq!(blob_files(dir.path()), 0);

    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_for(
        dir.path(),
        Some(&registry),
        RegistryAccess {
            username: Some("edge".into()),
            password: Some("s3cret".into()),
            ca_file: Some(ca),
            plain_http: false,
        },
    );
    let pulled = store
        .ensure(&reference)
        .await
        .expect("pull with credentials and CA");
    assert_eq!(pulled.digest.to_string(), image.digest());
}

/// A layer big enough that resuming matters.
fn big_image() -> TestImage {
    let mut noise = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in noise.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    TestImage::busybox(LayerCompression::Gzip)
        .with_layer(&[("srv/blob.bin", &noise, 0o644)], LayerCompression::None)
}

#[tokio::test]
async fn resumes_a_partial_download_after_a_restart() {
    let Some(registry) = Registry::start(RegistryOptions::default()) else {
        return;
    };
    let image = big_image();
    push(&registry, "big", "v1", &image);
    let layer = image.layers.last().expect("layer");
    let dir = tempfile::tempdir().expect("tempdir");
    // What an agent killed mid-download leaves behind: the first part of
    // the blob in ingest/.
    let half = layer.bytes.len() / 2;
    std::fs::create_dir_all(dir.path().join("ingest")).expect("ingest dir");
    std::fs::write(
        dir.path()
            .join(format!("ingest/sha256-{}.partial", layer.hex())),
        &layer.bytes[..half],
    )
    .expect("partial");
    let store = store_for(dir.path(), Some(&registry), RegistryAccess::default());
    let reference = format!("{}/big:v1", registry.host());
    let pulled = store.ensure(&reference).await.expect("pull");
    let other: u64 = image
        .blobs()
        .filter(|b| b.digest != layer.digest)
        .map(|b| b.bytes.len() as u64)
        .sum();
    assert_eq!(
        store.bytes_downloaded(),
        other + (layer.bytes.len() - half) as u64,
        "only the missing half of the big layer is fetched"
    );
    let stored = std::fs::read(dir.path().join("blobs/sha256").join(layer.hex())).expect("blob");
    assert!(stored == layer.bytes, "resumed blob is byte-identical");
    assert!(store
        .rootfs(&pulled)
        .expect("unpack")
        .join("srv/blob.bin")
        .is_file());

    // A partial file that is garbage: refused at the digest check, thrown
    // away, and the next attempt downloads the whole blob.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("ingest")).expect("ingest dir");
    let partial = dir
        .path()
        .join(format!("ingest/sha256-{}.partial", layer.hex()));
    std::fs::write(&partial, vec![0xAAu8; half]).expect("garbage partial");
    let store = store_for(dir.path(), Some(&registry), RegistryAccess::default());
    let err = store
        .ensure(&reference)
        .await
        .expect_err("garbage prefix")
        .to_string();
    assert!(err.contains("hashes to"), "{err}");
    assert!(!partial.exists(), "bad partial removed");
    assert!(!dir.path().join("blobs/sha256").join(layer.hex()).exists());
    store.ensure(&reference).await.expect("clean retry");
}

#[tokio::test]
async fn corrupt_and_truncated_blobs_are_refused() {
    let Some(registry) = Registry::start(RegistryOptions::default()) else {
        return;
    };
    let image = TestImage::busybox(LayerCompression::Gzip);
    push(&registry, "victim", "v1", &image);
    let layer = &image.layers[0];
    let data = registry.blob_data_path(&layer.digest);
    let reference = format!("{}/victim:v1", registry.host());

    // Same length, different bytes.
    let mut flipped = layer.bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    std::fs::write(&data, &flipped).expect("corrupt");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_for(dir.path(), Some(&registry), RegistryAccess::default());
    let err = store
        .ensure(&reference)
        .await
        .expect_err("corrupt")
        .to_string();
    assert!(err.contains(&layer.digest), "{err}");
    assert!(!dir.path().join("blobs/sha256").join(layer.hex()).exists());
    assert!(store.resolve_local(&reference).expect("resolve").is_none());

    // Cut short.
    std::fs::write(&data, &layer.bytes[..layer.bytes.len() / 3]).expect("truncate");
    let err = store
        .ensure(&reference)
        .await
        .expect_err("truncated")
        .to_string();
    assert!(err.contains(&layer.digest), "{err}");
    assert!(!dir.path().join("blobs/sha256").join(layer.hex()).exists());

    // Put right again: the same store pulls it.
    std::fs::write(&data, &layer.bytes).expect("restore");
    store.ensure(&reference).await.expect("good again");
}

/// A "registry" that accepts connections and then does something wrong.
fn bad_server(reply: Option<&'static [u8]>) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let host = listener.local_addr().expect("addr").to_string();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).ok();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request);
            match reply {
                Some(bytes) => {
                    let _ = conn.write_all(bytes);
                }
                None => std::thread::sleep(Duration::from_secs(8)),
            }
        }
    });
    (host, handle)
}

/// Store options reaching `host` over plain HTTP.
fn plain_http_options(dir: &Path, host: &str) -> StoreOptions {
    let mut options = StoreOptions::at(dir);
    options.registries.registries.insert(
        host.to_string(),
        RegistryAccess {
            plain_http: true,
            ..Default::default()
        },
    );
    options
}

#[tokio::test]
async fn a_hanging_or_garbage_registry_fails_cleanly() {
    let (host, _hang) = bad_server(None);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = plain_http_options(dir.path(), &host);
    options.registries.read_timeout_secs = 1;
    let store = ContentStore::open(options).expect("store");
    let started = Instant::now();
    let err = store
        .ensure(&format!("{host}/app:v1"))
        .await
        .expect_err("hang")
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(err.contains(&host), "{err}");
    assert_eq!(blob_files(dir.path()), 0);

    let garbage: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 27\r\nConnection: close\r\n\r\n{\"schemaVersion\": \"banana\"}";
    let (host, _garbage) = bad_server(Some(garbage));
    let dir = tempfile::tempdir().expect("tempdir");
    let options = plain_http_options(dir.path(), &host);
    let store = ContentStore::open(options).expect("store");
    let err = store
        .ensure(&format!("{host}/app:v1"))
        .await
        .expect_err("garbage")
        .to_string();
    assert!(err.contains("app"), "{err}");
    assert_eq!(blob_files(dir.path()), 0);
}

/// A registry that answers every request with a manifest that never ends
/// (no Content-Length) or one announced as 1 GiB: refused once past the
/// bound (4 MiB), quickly, with nothing stored.
#[tokio::test]
async fn an_oversized_manifest_is_refused() {
    for announced in [None, Some(1u64 << 30)] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        std::thread::spawn(move || {
            while let Ok((mut conn, _)) = listener.accept() {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request);
                let length =
                    announced.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n{length}Connection: close\r\n\r\n{{\"schemaVersion\": 2, \"pad\": \""
                );
                if conn.write_all(head.as_bytes()).is_err() {
                    continue;
                }
                let filler = [b'x'; 64 * 1024];
                // Up to 64 MiB per connection, or until the client hangs up.
                for _ in 0..1024 {
                    if conn.write_all(&filler).is_err() {
                        break;
                    }
                    counter.fetch_add(filler.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let options = plain_http_options(dir.path(), &host);
        let store = ContentStore::open(options).expect("store");
        let err = store
            .ensure(&format!("{host}/app:v1"))
            .await
            .expect_err("an oversized manifest")
            .to_string();
        assert!(err.contains("larger than the 4194304 bytes"), "{err}");
        assert!(err.contains(&host), "{err}");
        assert_eq!(blob_files(dir.path()), 0);
        // The client stopped reading near the bound, not at the server's end.
        let total = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            total < 48 << 20,
            "read {total} bytes of an oversized manifest"
        );
    }
}

#[tokio::test]
async fn gc_keeps_what_is_wanted_and_removes_the_rest() {
    let Some(registry) = Registry::start(RegistryOptions::default()) else {
        return;
    };
    let keep = TestImage::busybox(LayerCompression::Gzip);
    let drop_me = TestImage::busybox(LayerCompression::Gzip)
        .with_layer(&[("etc/extra", b"x\n", 0o644)], LayerCompression::Gzip);
    push(&registry, "keep", "v1", &keep);
    push(&registry, "drop", "v1", &drop_me);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_for(dir.path(), Some(&registry), RegistryAccess::default());
    let keep_ref = format!("{}/keep:v1", registry.host());
    let drop_ref = format!("{}/drop:v1", registry.host());
    let kept = store.ensure(&keep_ref).await.expect("pull");
    let dropped = store.ensure(&drop_ref).await.expect("pull");
    store.rootfs(&kept).expect("unpack");
    store.rootfs(&dropped).expect("unpack");
    let stray = dir.path().join(
        "ingest/sha256-0000000000000000000000000000000000000000000000000000000000000000.partial",
    );
    std::fs::write(&stray, b"abandoned").expect("stray partial");

    let report = store.gc(&[&keep_ref]).expect("gc");
    // The dropped image's manifest, config and extra layer go (its base
    // layer is the kept image's too).
    assert_eq!(report.blobs_removed, 3, "{report:?}");
    assert_eq!(report.rootfs_removed, 1, "{report:?}");
    assert_eq!(report.partials_removed, 1, "{report:?}");
    assert_eq!(report.names_removed, 1, "{report:?}");
    assert!(store.resolve_local(&keep_ref).expect("resolve").is_some());
    assert!(store.resolve_local(&drop_ref).expect("resolve").is_none());
    assert_eq!(
        store.gc(&[&keep_ref]).expect("gc again"),
        content_store::GcReport::default()
    );
}

#[tokio::test]
async fn a_blob_above_the_size_bound_is_refused_before_download() {
    let Some(registry) = Registry::start(RegistryOptions::default()) else {
        return;
    };
    let image = TestImage::busybox(LayerCompression::Gzip);
    push(&registry, "big-layer", "v1", &image);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = StoreOptions::at(dir.path());
    options.registries.registries.insert(
        registry.host(),
        RegistryAccess {
            plain_http: true,
            ..RegistryAccess::default()
        },
    );
    options.registries.max_blob_bytes = 64 * 1024;
    let store = ContentStore::open(options).expect("store");
    let err = store
        .ensure(&format!("{}/big-layer:v1", registry.host()))
        .await
        .expect_err("layer above the bound")
        .to_string();
    assert!(err.contains("max_blob_bytes"), "{err}");
    // Only the small config came; nothing of the layer.
    assert_eq!(store.bytes_downloaded(), image.config.bytes.len() as u64);
    assert!(std::fs::read_dir(dir.path().join("ingest"))
        .expect("ingest")
        .next()
        .is_none());
    assert!(!dir
        .path()
        .join("blobs/sha256")
        .join(image.layers[0].hex())
        .exists());
}
