//! Air-gapped imports: an OCI layout directory, an oci-archive and a
//! docker-archive of an image the test builds; then archives that lie
//! about their blobs or are cut short, which must leave the store as it
//! was.

use std::path::Path;

use content_store::{ContentStore, RegistryAccess, StoreOptions};
use mecvisor_e2e::oci::{
    write_docker_archive, write_oci_archive, write_oci_layout, LayerCompression, TestImage,
};

fn image() -> TestImage {
    TestImage::busybox(LayerCompression::Zstd).with_layer(
        &[("etc/site", b"air-gapped\n", 0o644)],
        LayerCompression::Gzip,
    )
}

fn blob_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("blobs/sha256"))
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn imports_layouts_and_both_archive_formats() {
    let work = tempfile::tempdir().expect("tempdir");
    let image = image();
    let layout = work.path().join("layout");
    write_oci_layout(&layout, &image, "v1");
    let oci = work.path().join("site.tar");
    write_oci_archive(&oci, &image, "v2");
    let docker = work.path().join("docker.tar");
    write_docker_archive(&docker, &image, "registry.example/edge/site:v3");

    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(StoreOptions::at(dir.path())).expect("store");
    let cases = [
        (
            layout.as_path(),
            Some("edge/site"),
            "docker.io/edge/site:v1",
        ),
        (oci.as_path(), None, "docker.io/import/site:v2"),
        (docker.as_path(), None, "registry.example/edge/site:v3"),
    ];
    for (path, repository, name) in cases {
        let names = store.import(path, repository).expect("import");
        assert_eq!(names.len(), 1);
        assert_eq!(names[0].0, name);
        let image = store
            .resolve_local(name)
            .expect("resolve")
            .expect("present");
        let root = store.rootfs(&image).expect("unpack");
        assert_eq!(
            std::fs::read(root.join("etc/site")).expect("file"),
            b"air-gapped\n",
            "{name}"
        );
        assert!(root.join("bin/busybox").is_file());
    }
    // OCI imports keep the image's own digest.
    let oci_image = store
        .resolve_local("docker.io/import/site:v2")
        .expect("resolve")
        .expect("present");
    assert_eq!(oci_image.digest.to_string(), image.digest());
    // Nothing outside what the images reference stays behind (index.json,
    // oci-layout, docker's manifest.json).
    let referenced = store
        .gc(&[
            "docker.io/edge/site:v1",
            "docker.io/import/site:v2",
            "registry.example/edge/site:v3",
        ])
        .expect("gc");
    assert_eq!(referenced.blobs_removed, 0, "{referenced:?}");
}

/// An imported tag is served from the store without asking its registry
/// (an air-gapped site has none to ask): a listener on the host the name
/// points at sees no connection, while a tag that was pulled would be
/// looked up there.
#[test]
fn an_imported_tag_is_used_without_asking_the_registry() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let host = format!(
        "127.0.0.1:{}",
        listener.local_addr().expect("address").port()
    );
    let name = format!("{host}/edge/site:v3");
    let work = tempfile::tempdir().expect("tempdir");
    let docker = work.path().join("docker.tar");
    write_docker_archive(&docker, &image(), &name);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = StoreOptions::at(dir.path());
    options.registries.registries.insert(
        host,
        RegistryAccess {
            plain_http: true,
            ..RegistryAccess::default()
        },
    );
    options.registries.read_timeout_secs = 2;
    let store = ContentStore::open(options).expect("store");
    store.import(&docker, None).expect("import");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ensured = runtime.block_on(store.ensure(&name)).expect("ensure");
    let local = store
        .resolve_local(&name)
        .expect("resolve")
        .expect("present");
    assert_eq!(ensured.digest, local.digest);
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the registry was asked for an imported tag: {other:?}"),
    }
}

#[test]
fn lying_or_truncated_archives_change_nothing() {
    let work = tempfile::tempdir().expect("tempdir");
    let image = image();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(StoreOptions::at(dir.path())).expect("store");
    let good = work.path().join("good");
    write_oci_layout(&good, &image, "v1");
    store.import(&good, Some("edge/good")).expect("baseline");
    let before = blob_names(dir.path());

    // A layer blob whose content does not match its name.
    let tampered = work.path().join("tampered");
    write_oci_layout(
        &tampered,
        &image
            .clone()
            .with_layer(&[("etc/evil", b"1\n", 0o644)], LayerCompression::Gzip),
        "v1",
    );
    let victim = tampered.join("blobs/sha256").join(image.layers[0].hex());
    let mut bytes = std::fs::read(&victim).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::remove_file(&victim).expect("rm");
    std::fs::write(&victim, bytes).expect("tamper");
    let err = store
        .import(&tampered, Some("edge/bad"))
        .expect_err("tampered")
        .to_string();
    assert!(err.contains("hashes to"), "{err}");
    assert_eq!(
        blob_names(dir.path()),
        before,
        "no blob of the failed import stays"
    );
    assert!(store
        .resolve_local("docker.io/edge/bad:v1")
        .expect("resolve")
        .is_none());

    // A manifest that names a blob the archive lacks.
    let missing = work.path().join("missing");
    write_oci_layout(
        &missing,
        &image
            .clone()
            .with_layer(&[("etc/more", b"2\n", 0o644)], LayerCompression::Gzip),
        "v1",
    );
    let extra = image
        .clone()
        .with_layer(&[("etc/more", b"2\n", 0o644)], LayerCompression::Gzip);
    std::fs::remove_file(
        missing
            .join("blobs/sha256")
            .join(extra.layers.last().expect("layer").hex()),
    )
    .expect("rm");
    let err = store
        .import(&missing, Some("edge/missing"))
        .expect_err("missing blob")
        .to_string();
    assert!(err.contains("does not contain"), "{err}");
    assert_eq!(blob_names(dir.path()), before);

    // Archives cut short, and bytes that are no archive at all.
    let docker = work.path().join("docker.tar");
    write_docker_archive(
        &docker,
        &image
            .clone()
            .with_layer(&[("etc/x", b"3\n", 0o644)], LayerCompression::None),
        "edge/cut:v1",
    );
    let full = std::fs::read(&docker).expect("read");
    for cut in [full.len() / 3, full.len() * 2 / 3, full.len() - 700] {
        let truncated = work.path().join(format!("cut-{cut}.tar"));
        std::fs::write(&truncated, &full[..cut]).expect("write");
        let err = store
            .import(&truncated, None)
            .expect_err("truncated")
            .to_string();
        assert!(err.contains("cut-"), "{err}");
        assert_eq!(blob_names(dir.path()), before, "cut at {cut}");
    }
    let garbage = work.path().join("garbage.tar");
    std::fs::write(
        &garbage,
        b"this is not a tar archive at all, just some words",
    )
    .expect("write");
    let err = store
        .import(&garbage, None)
        .expect_err("garbage")
        .to_string();
    assert!(err.contains("garbage.tar"), "{err}");
    assert_eq!(blob_names(dir.path()), before);
}

#[test]
fn trees_in_use_and_half_written_trees_are_handled() {
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    write_oci_layout(&layout, &image(), "v1");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(StoreOptions::at(dir.path())).expect("store");
    let names = store.import(&layout, Some("edge/site")).expect("import");
    let image = store
        .resolve_local(&names[0].0)
        .expect("resolve")
        .expect("present");
    let root = store.rootfs(&image).expect("unpack");

    // A power cut after the rename but before the completion mark: the
    // tree is not trusted, it is unpacked again.
    let complete = root.parent().expect("image dir").join("complete");
    std::fs::remove_file(&complete).expect("drop the mark");
    std::fs::remove_file(root.join("etc/site")).expect("damage the tree");
    let again = store.rootfs(&image).expect("unpack again");
    assert_eq!(
        std::fs::read(again.join("etc/site")).expect("file"),
        b"air-gapped\n"
    );
    assert!(complete.is_file());

    // A container's overlay over the tree keeps it through a collection
    // that no longer wants the image (and the import no longer pins it).
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED (overlay part): needs root to mount");
        return;
    }
    let names_file = dir.path().join("refs.json");
    std::fs::write(&names_file, "{}").expect("forget the names");
    let (upper, workdir, target) = (
        work.path().join("upper"),
        work.path().join("work"),
        work.path().join("merged"),
    );
    for d in [&upper, &workdir, &target] {
        std::fs::create_dir_all(d).expect("dir");
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        again.display(),
        upper.display(),
        workdir.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .expect("overlay");
    let kept = store.gc(&[]);
    let after_mounted = again.join("etc/site").is_file();
    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).expect("umount");
    let kept = kept.expect("gc");
    assert!(
        after_mounted,
        "the tree a container runs from stays: {kept:?}"
    );
    assert_eq!(kept.rootfs_removed, 0, "{kept:?}");
    let gone = store.gc(&[]).expect("gc after the container");
    assert_eq!(gone.rootfs_removed, 1, "{gone:?}");
    assert!(!again.exists());
}
