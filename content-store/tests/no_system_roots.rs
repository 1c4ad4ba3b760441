//! A box without any CA certificate (the emulated edge boxes have none):
//! opening the store must not bring the agent down (reqwest cannot build
//! its verifier then, and oci-client used to panic), plain-HTTP registries
//! still work and HTTPS ones fail with an error. Its own test binary: it
//! points SSL_CERT_FILE and SSL_CERT_DIR at nothing for the whole process.

use content_store::{ContentStore, RegistryAccess, StoreOptions};
use mecvisor_e2e::oci::{push, LayerCompression, TestImage};
use mecvisor_e2e::registry::{Registry, RegistryOptions};

#[tokio::test]
async fn without_system_roots_the_store_opens_and_pulls_over_http() {
    let Some(registry) = Registry::start(RegistryOptions::default()) else {
        return;
    };
    let image = TestImage::busybox(LayerCompression::Gzip);
    push(&registry, "plain", "v1", &image);
    // SAFETY: set before any thread of this test binary reads the
    // environment (one test in this binary; the registry runs as a child
    // process).
    unsafe {
        std::env::set_var("SSL_CERT_FILE", "/nonexistent/mecvisor-no-roots.pem");
        std::env::set_var("SSL_CERT_DIR", "/nonexistent/mecvisor-no-roots");
    }
    // What edge-agent does first thing: a trust anchor that trusts nothing.
    let anchors = tempfile::tempdir().expect("tempdir");
    let anchor = content_store::trust_anchor_file(anchors.path())
        .expect("write")
        .expect("no system roots here now");
    // SAFETY: as above.
    unsafe { std::env::set_var("SSL_CERT_FILE", &anchor) };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = StoreOptions::at(dir.path());
    options.registries.registries.insert(
        registry.host(),
        RegistryAccess {
            plain_http: true,
            ..RegistryAccess::default()
        },
    );
    let store = ContentStore::open(options).expect("opens without system roots");
    let pulled = store
        .ensure(&format!("{}/plain:v1", registry.host()))
        .await
        .expect("plain HTTP pull");
    assert_eq!(pulled.digest.to_string(), image.digest());

    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(StoreOptions::at(dir.path())).expect("opens");
    let err = store
        .ensure(&format!("{}/plain:v1", registry.host()))
        .await
        .expect_err("HTTPS cannot be verified")
        .to_string();
    assert!(err.contains(&registry.host()), "{err}");
}
