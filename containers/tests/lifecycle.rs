//! The container lifecycle with the real runc (Debian's), on a busybox
//! image the test builds and imports through the content store: run,
//! logs, adoption by a second manager (an agent restart), exit codes,
//! OOM kills, stop escalation, read-only roots, volumes, seccomp, removal.
//! Needs root and runc; skips with the reason otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containers::{
    BindMount, ContainerConfig, LogLimits, Manager, ManagerConfig, MonitorCommand, Observation,
    OciRuntime, Started,
};
use content_store::{ContentStore, StoreOptions};
use mecvisor_e2e::oci::{write_oci_layout, LayerCompression, TestImage};

/// A state directory, an image root, and cleanup of every container on drop.
struct Fixture {
    dir: tempfile::TempDir,
    image_root: PathBuf,
    ids: Vec<String>,
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (runc, cgroups, mounts)".into());
    }
    if std::process::Command::new("runc")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("runc is not installed (apt-get install runc)".into());
    }
    None
}

impl Fixture {
    fn new() -> Option<Fixture> {
        if let Some(why) = skip_reason() {
            println!("SKIPPED: {why}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("mv-containers-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let layout = dir.path().join("layout");
        write_oci_layout(
            &layout,
            &TestImage::busybox(LayerCompression::Gzip),
            "latest",
        );
        let store =
            ContentStore::open(StoreOptions::at(dir.path().join("content"))).expect("store");
        let names = store.import(&layout, Some("test/busybox")).expect("import");
        let image = store
            .resolve_local(&names[0].0)
            .expect("resolve")
            .expect("image present");
        let image_root = store.rootfs(&image).expect("unpack");
        Some(Fixture {
            dir,
            image_root,
            ids: Vec::new(),
        })
    }

    fn manager(&self) -> Manager {
        Manager::new(ManagerConfig {
            state: self.dir.path().join("state"),
            runtime: OciRuntime::new("runc", self.dir.path().join("runc")),
            monitor: MonitorCommand {
                program: env!("CARGO_BIN_EXE_mecvisor-container-monitor").into(),
                prefix: Vec::new(),
            },
            logs: LogLimits::default(),
            start_timeout: Duration::from_secs(20),
        })
        .expect("manager")
    }

    fn id(&mut self, name: &str) -> String {
        let id = format!("t{}-{name}", std::process::id());
        self.ids.push(id.clone());
        id
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let manager = self.manager();
        for id in &self.ids {
            if let Err(e) = manager.remove(id) {
                eprintln!("cleanup of {id}: {e}");
            }
        }
    }
}

fn sh(script: &str) -> ContainerConfig {
    let mut config = ContainerConfig::new(vec!["/bin/sh".into(), "-c".into(), script.into()]);
    config.stop_timeout_s = 2;
    config
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn exited(manager: &Manager, id: &str) -> containers::ExitRecord {
    let mut record = None;
    wait_for(
        "the container to exit",
        Duration::from_secs(20),
        || match manager.observe(id).expect("observe") {
            Observation::Exited(r) => {
                record = Some(r);
                true
            }
            _ => false,
        },
    );
    record.expect("exit record")
}

fn log_text(manager: &Manager, id: &str) -> String {
    containers::logs::read(&manager.dir(id).logs(), None)
        .expect("logs")
        .join("\n")
}

#[test]
fn runs_logs_and_is_adopted_by_a_new_manager() {
    let Some(mut fx) = Fixture::new() else { return };
    let id = fx.id("web");
    let manager = fx.manager();
    let config = sh("echo hello from $(hostname); echo oops >&2; exec sleep 300");
    let started = manager.run(&id, &config, &fx.image_root).expect("run");
    let Started::Created { pid, .. } = started else {
        panic!("expected a new container, got {started:?}")
    };
    assert!(pid > 0);
    assert_eq!(
        manager.observe(&id).expect("observe"),
        Observation::Running { pid }
    );
    wait_for("both log lines", Duration::from_secs(10), || {
        let text = log_text(&manager, &id);
        text.contains("stdout hello from container") && text.contains("stderr oops")
    });

    // An agent restart: a new manager over the same state adopts it as it runs.
    let again = fx.manager();
    assert_eq!(
        again.run(&id, &config, &fx.image_root).expect("run again"),
        Started::Adopted { pid }
    );
    assert_eq!(
        again.observe(&id).expect("observe"),
        Observation::Running { pid }
    );

    // A changed config replaces it.
    let changed = sh("exec sleep 301");
    let Started::Created { pid: new_pid, .. } =
        again.run(&id, &changed, &fx.image_root).expect("replace")
    else {
        panic!("a changed config must recreate the container")
    };
    assert_ne!(new_pid, pid);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "old process gone"
    );

    // sleep as PID 1 ignores SIGTERM: stop escalates to SIGKILL.
    let exit = again.stop(&id).expect("stop").expect("exit record");
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    again.remove(&id).expect("remove");
    assert!(!again.dir(&id).path().exists());
    assert_eq!(again.observe(&id).expect("observe"), Observation::Missing);
}

#[test]
fn exit_codes_and_oom_kills_are_recorded() {
    let Some(mut fx) = Fixture::new() else { return };
    let manager = fx.manager();

    let id = fx.id("fails");
    manager
        .run(&id, &sh("echo bye; exit 3"), &fx.image_root)
        .expect("run");
    let exit = exited(&manager, &id);
    assert_eq!(exit.code, Some(3), "{exit:?}");
    assert!(!exit.success() && !exit.oom_killed);
    assert!(log_text(&manager, &id).contains("stdout bye"));
    assert!(log_text(&manager, &id).contains("mecvisor exited with code 3"));

    let id = fx.id("hog");
    let mut hog = sh("exec dd if=/dev/zero of=/dev/null bs=64M count=4");
    hog.limits.memory_bytes = 16 << 20;
    manager.run(&id, &hog, &fx.image_root).expect("run");
    let exit = exited(&manager, &id);
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert!(
        exit.describe().contains("OOM-killed"),
        "{}",
        exit.describe()
    );

    let id = fx.id("ok");
    manager
        .run(&id, &sh("exit 0"), &fx.image_root)
        .expect("run");
    assert!(exited(&manager, &id).success());
}

#[test]
fn read_only_root_volumes_and_seccomp() {
    let Some(mut fx) = Fixture::new() else { return };
    let manager = fx.manager();
    let volume = fx.dir.path().join("volumes/data");
    std::fs::create_dir_all(&volume).expect("volume dir");
    let id = fx.id("locked");
    let mut config = sh(
        "touch /rootfile 2>/dev/null && echo root-writable || echo root-readonly; \
         echo kept > /data/file; \
         unshare -U true 2>&1 || echo unshare-refused; \
         cat /proc/self/status | grep NoNewPrivs",
    );
    config.read_only_root = true;
    config.mounts.push(BindMount {
        source: volume.clone(),
        target: "/data".into(),
        read_only: false,
    });
    manager.run(&id, &config, &fx.image_root).expect("run");
    let exit = exited(&manager, &id);
    assert!(exit.error.is_none(), "{exit:?}");
    let text = log_text(&manager, &id);
    assert!(text.contains("root-readonly"), "{text}");
    assert!(text.contains("unshare-refused"), "{text}");
    assert!(
        text.contains("NoNewPrivs:\t1") || text.contains("NoNewPrivs: 1"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(volume.join("file")).expect("volume file"),
        "kept\n"
    );

    // A recreated container starts from the image again, volume intact.
    manager.remove(&id).expect("remove");
    let id2 = fx.id("locked2");
    let mut reader = sh("cat /data/file; ls /rootfile 2>&1 || true");
    reader.mounts = config.mounts.clone();
    manager.run(&id2, &reader, &fx.image_root).expect("run");
    exited(&manager, &id2);
    let text = log_text(&manager, &id2);
    assert!(text.contains("stdout kept"), "{text}");
}

#[test]
fn a_missing_executable_fails_to_start_with_the_reason() {
    let Some(mut fx) = Fixture::new() else { return };
    let manager = fx.manager();
    let id = fx.id("broken");
    let err = manager
        .run(
            &id,
            &ContainerConfig::new(vec!["/bin/no-such-program".into()]),
            &fx.image_root,
        )
        .expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("no-such-program"), "{text}");
}

/// Both runtimes Debian ships, driven through the same calls: a container
/// neither knows is reported gone (`None`), not an error, and deleting it
/// succeeds. (runc says "container does not exist"; crun names the state
/// file it could not open.) Needs neither root nor cgroups.
#[test]
fn an_unknown_container_is_gone_for_runc_and_crun() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut tried = 0;
    for program in ["runc", "crun"] {
        let runtime = OciRuntime::new(program, root.path().join(program));
        if runtime.version().is_err() {
            eprintln!("SKIPPED for {program}: not installed (apt-get install {program})");
            continue;
        }
        tried += 1;
        assert!(
            runtime
                .state("nobody")
                .expect("state of an unknown container")
                .is_none(),
            "{program}"
        );
        runtime
            .delete("nobody")
            .expect("deleting an unknown container");
    }
    if tried == 0 {
        eprintln!("SKIPPED: neither runc nor crun is installed");
    }
}
