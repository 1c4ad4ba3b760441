//! Pulls from a real registry with token authentication (Debian's
//! docker-registry with `auth: token`, tokens from the fixture's own token
//! server): the registry answers 401 with a `Bearer` challenge, the store
//! gets a token from the realm with its basic credentials and pulls with
//! it, over plain HTTP and over TLS. Without credentials, or with a wrong
//! password, the pull fails naming the registry and stores nothing. Skips
//! when docker-registry is missing.

use std::path::Path;

use content_store::{ContentStore, RegistryAccess, StoreOptions};
use mecvisor_e2e::oci::{push, LayerCompression, TestImage};
use mecvisor_e2e::registry::{Registry, RegistryOptions};

const USER: &str = "edge";
const PASSWORD: &str = "t0ken pass";

fn store_for(dir: &Path, registry: &Registry, access: RegistryAccess) -> ContentStore {
    let mut options = StoreOptions::at(dir);
    let access = RegistryAccess {
        plain_http: !registry.is_tls(),
        ..access
    };
    options
        .registries
        .registries
        .insert(registry.host(), access);
    options.registries.read_timeout_secs = 5;
    options.registries.connect_timeout_secs = 5;
    ContentStore::open(options).expect("open store")
}

fn credentials(user: &str, password: &str) -> RegistryAccess {
    RegistryAccess {
        username: Some(user.into()),
        password: Some(password.into()),
        ..RegistryAccess::default()
    }
}

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs/sha256")).map_or(0, |d| d.count())
}

fn token_registry() -> Option<Registry> {
    Registry::start_with_token_auth(
        RegistryOptions::default(),
        (USER.to_string(), PASSWORD.to_string()),
    )
}

#[tokio::test]
async fn pulls_with_a_bearer_token_from_the_realm() {
    let Some(registry) = token_registry() else {
        return;
    };
    // The registry itself wants a token: basic credentials are not enough.
    let challenge = registry
        .agent()
        .get(registry.url("/v2/"))
        .header(
            "Authorization",
            "Basic ZWRnZTp0MGtlbiBwYXNz", // edge:t0ken pass
        )
        .call()
        .expect("GET /v2/");
    assert_eq!(challenge.status(), 401);
    let www_authenticate = challenge
        .headers()
        .get("WWW-Authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let realm = registry.token_realm().expect("token realm");
    assert!(
        www_authenticate.starts_with("Bearer ") && www_authenticate.contains(&realm),
        "{www_authenticate}"
    );

    let image = TestImage::busybox(LayerCompression::Gzip).with_layer(
        &[("etc/motd", b"token auth\n", 0o644)],
        LayerCompression::Zstd,
    );
    let digest = push(&registry, "private/app", "v1", &image);
    assert_eq!(digest, image.digest());
    let pushed = registry.tokens_issued();
    assert!(pushed > 0, "push went through the token flow");

    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_for(dir.path(), &registry, credentials(USER, PASSWORD));
    let reference = format!("{}/private/app:v1", registry.host());
    let pulled = store.ensure(&reference).await.expect("pull with a token");
    assert_eq!(pulled.digest.to_string(), image.digest());
    assert!(
        registry.tokens_issued() > pushed,
        "the store got its own token ({} issued in all, {pushed} for the push)",
        registry.tokens_issued()
    );
    let root = store.rootfs(&pulled).expect("unpack");
    assert_eq!(
        std::fs::read(root.join("etc/motd")).expect("motd"),
        b"token auth\n"
    );
    assert!(root.join("bin/busybox").is_file());

    // By digest too, from a fresh store.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_for(dir.path(), &registry, credentials(USER, PASSWORD));
    let by_digest = format!("{}/private/app@{digest}", registry.host());
    let pulled = store.ensure(&by_digest).await.expect("pull by digest");
    assert_eq!(pulled.digest.to_string(), image.digest());
}

#[tokio::test]
async fn no_credentials_or_a_wrong_password_get_nothing() {
    let Some(registry) = token_registry() else {
        return;
    };
    let image = TestImage::busybox(LayerCompression::Gzip);
    push(&registry, "private/app", "v1", &image);
    let reference = format!("{}/private/app:v1", registry.host());
    let by_digest = format!("{}/private/app@{}", registry.host(), image.digest());

    // The token server itself refuses them.
    let challenge = format!(
        "Bearer realm=\"{}\",service=\"mecvisor-test-registry\",scope=\"repository:private/app:pull\"",
        registry.token_realm().expect("token realm")
    );
    let refused = registry
        .fetch_token(&challenge, Some((USER, "wrong")))
        .expect_err("wrong password");
    assert!(refused.contains("401"), "{refused}");
    let refused = registry
        .fetch_token(&challenge, None)
        .expect_err("no credentials");
    assert!(refused.contains("401"), "{refused}");
    let token = registry
        .fetch_token(&challenge, Some((USER, PASSWORD)))
        .expect("right password");

    // The registry checks the token: its signature (made by the token
    // server's key, certificate in `x5c`) and its scope.
    let manifest = |path: &str, token: &str| {
        registry
            .agent()
            .get(registry.url(path))
            .header("Authorization", format!("Bearer {token}"))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .call()
            .expect("GET manifest")
            .status()
            .as_u16()
    };
    assert_eq!(manifest("/v2/private/app/manifests/v1", &token), 200);
    let (signed, signature) = token.rsplit_once('.').expect("a JWT");
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let forged = format!("{signed}.{flipped}{}", &signature[1..]);
    assert_eq!(manifest("/v2/private/app/manifests/v1", &forged), 401);
    let other = registry
        .fetch_token(
            &challenge.replace("private/app", "other/app"),
            Some((USER, PASSWORD)),
        )
        .expect("token for another repository");
    assert_eq!(manifest("/v2/private/app/manifests/v1", &other), 401);

    for (name, access) in [
        ("anonymous", RegistryAccess::default()),
        ("wrong password", credentials(USER, "wrong")),
        ("wrong user", credentials("intruder", PASSWORD)),
    ] {
        for reference in [&reference, &by_digest] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = store_for(dir.path(), &registry, access.clone());
            let err = store.ensure(reference).await.expect_err(name).to_string();
            assert!(err.contains(&registry.host()), "{name}: {err}");
            assert!(
                err.to_lowercase().contains("not authorized")
                    || err.contains("401")
                    || err.to_lowercase().contains("unauthorized")
                    || err.to_lowercase().contains("authentication failure"),
                "{name}: {err}"
            );
            assert_eq!(blob_files(dir.path()), 0, "{name}: no blob stored");
            assert!(
                store.resolve_local(reference).expect("resolve").is_none(),
                "{name}: nothing resolvable"
            );
        }
    }
}

#[tokio::test]
async fn token_auth_over_tls_with_a_ca_bundle() {
    let options = RegistryOptions {
        tls: true,
        ..RegistryOptions::default()
    };
    let Some(registry) =
        Registry::start_with_token_auth(options, (USER.to_string(), PASSWORD.to_string()))
    else {
        return;
    };
    let image = TestImage::busybox(LayerCompression::Zstd);
    push(&registry, "tls/app", "v1", &image);
    let issued = registry.tokens_issued();
    assert!(issued > 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_for(
        dir.path(),
        &registry,
        RegistryAccess {
            ca_file: Some(registry.ca_pem().expect("ca").to_path_buf()),
            ..credentials(USER, PASSWORD)
        },
    );
    let reference = format!("{}/tls/app:v1", registry.host());
    let pulled = store.ensure(&reference).await.expect("pull over TLS");
    assert_eq!(pulled.digest.to_string(), image.digest());
    assert!(registry.tokens_issued() > issued);
}
