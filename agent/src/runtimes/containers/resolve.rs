//! Turns a workload spec and its image's config into the fully resolved
//! [`ContainerConfig`] a bundle is made from, Docker's way: the
//! workload's `command` replaces the image's Entrypoint (and drops its
//! Cmd), `args` replaces Cmd; environment variables override the image's
//! by name; the user is looked up in the image's /etc/passwd and
//! /etc/group.

use std::path::{Path, PathBuf};

use containers::{BindMount, ContainerConfig, IdMapping, Limits};
use content_store::RunConfig;
use mecvisor_protocol::{ContainerSpec, WorkloadSpec};

/// Default PATH when neither image nor workload sets one.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// First host id of user namespace ranges, and their size.
const USERNS_BASE: u32 = 1_000_000;
const USERNS_SIZE: u32 = 65_536;
const USERNS_SLOTS: u32 = 1024;

/// Resolves `workload` (a container) with its image's run config and
/// unpacked root file system; `volumes` is the directory holding the
/// workload's volume directories (created here).
pub fn container_config(
    workload: &WorkloadSpec,
    container: &ContainerSpec,
    image: Option<&RunConfig>,
    rootfs: &Path,
    volumes: &Path,
) -> Result<ContainerConfig, String> {
    let image = image.cloned().unwrap_or_default();
    let entrypoint = if container.command.is_empty() {
        image.entrypoint.clone().unwrap_or_default()
    } else {
        container.command.clone()
    };
    let cmd = if !container.args.is_empty() {
        container.args.clone()
    } else if container.command.is_empty() {
        image.cmd.clone().unwrap_or_default()
    } else {
        Vec::new()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(
            "nothing to run: the image has no Entrypoint or Cmd and the workload gives no command"
                .into(),
        );
    }

    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    for var in &container.env {
        let prefix = format!("{}=", var.name);
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{}={}", var.name, var.value));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }

    let user = container
        .user
        .clone()
        .or(image.user.clone())
        .filter(|u| !u.is_empty());
    let (uid, gid) = match &user {
        Some(user) => resolve_user(user, rootfs)?,
        None => (0, 0),
    };
    let cwd = container
        .working_dir
        .clone()
        .or(image.working_dir.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".into());

    let userns = container.user_namespace.then(|| IdMapping {
        host_id: USERNS_BASE + slot(&workload.name) * USERNS_SIZE,
        size: USERNS_SIZE,
    });
    let mut mounts = Vec::new();
    for volume in &container.volumes {
        let source = volumes.join(&volume.name);
        std::fs::create_dir_all(&source)
            .map_err(|e| format!("creating volume {}: {e}", source.display()))?;
        if let Some(map) = userns {
            // Owned by the container's root, an unprivileged id outside
            // (host root is unmapped inside: it would get EACCES).
            std::os::unix::fs::chown(&source, Some(map.host_id), Some(map.host_id))
                .map_err(|e| format!("volume {}: {e}", source.display()))?;
        }
        mounts.push(BindMount {
            source,
            target: volume.path.clone(),
            read_only: volume.read_only,
        });
    }
    let cpu_millis = workload.resources.cpu_millis;
    let limits = Limits {
        memory_bytes: u64::from(workload.resources.memory_mib) << 20,
        cpu_millis,
        cpu_shares: if cpu_millis > 0 {
            (u64::from(cpu_millis) * 1024 / 1000).max(2)
        } else {
            0
        },
        pids: container.pids_limit.map_or(0, i64::from),
    };
    let stop_signal = image
        .stop_signal
        .as_deref()
        .map(|s| s.trim_start_matches("SIG").to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "TERM".into());
    let mut config = ContainerConfig::new(args);
    config.env = env;
    config.cwd = cwd;
    config.uid = uid;
    config.gid = gid;
    config.hostname = workload.name.clone();
    config.read_only_root = container.read_only_root;
    config.mounts = mounts;
    config.limits = limits;
    config.user_namespace = userns;
    config.stop_signal = stop_signal;
    config.stop_timeout_s = container.stop_timeout_s.unwrap_or(10);
    Ok(config)
}

/// A stable per-workload slot, so two workloads in user namespaces get
/// different host id ranges (most of the time; 1024 slots).
fn slot(name: &str) -> u32 {
    name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    }) % USERNS_SLOTS
}

/// `uid`, `uid:gid`, `user`, `user:group` -> numeric ids, names looked up
/// in the image.
fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32), String> {
    let (name, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_table(rootfs, "etc/passwd");
    let entry = passwd.iter().find(|f| {
        f.first().map(String::as_str) == Some(name) || f.get(2).map(String::as_str) == Some(name)
    });
    let uid = match name.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry
            .and_then(|f| f.get(2))
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| format!("user {name:?} is not in the image's /etc/passwd"))?,
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => read_table(rootfs, "etc/group")
                .iter()
                .find(|f| f.first().map(String::as_str) == Some(g))
                .and_then(|f| f.get(2))
                .and_then(|g| g.parse().ok())
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
        None => entry
            .and_then(|f| f.get(3))
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
    };
    Ok((uid, gid))
}

/// Largest /etc/passwd or /etc/group read from an image.
const MAX_TABLE_BYTES: u64 = 1 << 20;

/// Colon-separated lines of a small file of the image (absent: none),
/// opened beneath the image's root without following any symlink (an
/// image's `etc -> /etc` must not make the agent read the host's files)
/// and read up to [`MAX_TABLE_BYTES`].
fn read_table(root: &Path, relative: &str) -> Vec<Vec<String>> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    let Ok(dir) = std::fs::File::open(root) else {
        return Vec::new();
    };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let Ok(fd) = openat2(&dir, relative, how) else {
        return Vec::new();
    };
    let mut text = String::new();
    let _ = std::fs::File::from(fd)
        .take(MAX_TABLE_BYTES)
        .read_to_string(&mut text);
    text.lines()
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

/// Where a workload's volumes live.
pub fn volumes_dir(state: &Path, workload: &str) -> PathBuf {
    state.join("volumes").join(workload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mecvisor_protocol::{EnvVar, Resources, RestartPolicy, VolumeSpec, WorkloadKind};

    fn workload(container: ContainerSpec) -> WorkloadSpec {
        WorkloadSpec {
            name: "web".into(),
            kind: WorkloadKind::Container(container),
            slice: None,
            resources: Resources {
                cpu_millis: 250,
                memory_mib: 64,
            },
            restart: RestartPolicy::Always,
            allow: Vec::new(),
            port_qos: None,
            address: None,
        }
    }

    fn image() -> RunConfig {
        RunConfig {
            user: Some("app".into()),
            env: Some(vec!["PATH=/bin".into(), "MODE=image".into()]),
            entrypoint: Some(vec!["/bin/server".into()]),
            cmd: Some(vec!["--port".into(), "80".into()]),
            working_dir: Some("/srv".into()),
            stop_signal: Some("SIGQUIT".into()),
        }
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nvideo:x:44:app\n",
        )
        .expect("group");
        dir
    }

    #[test]
    fn image_defaults_apply_and_workload_settings_win() {
        let root = rootfs();
        let volumes = tempfile::tempdir().expect("tempdir");
        let spec = ContainerSpec {
            image: "x".into(),
            args: vec!["--port".into(), "8080".into()],
            env: vec![EnvVar {
                name: "MODE".into(),
                value: "edge".into(),
            }],
            volumes: vec![VolumeSpec {
                name: "data".into(),
                path: "/data".into(),
                read_only: false,
            }],
            pids_limit: Some(32),
            ..ContainerSpec::default()
        };
        let w = workload(spec.clone());
        let c = container_config(&w, &spec, Some(&image()), root.path(), volumes.path())
            .expect("resolve");
        assert_eq!(c.args, ["/bin/server", "--port", "8080"]);
        assert_eq!(c.env, ["PATH=/bin", "MODE=edge"]);
        assert_eq!((c.uid, c.gid), (1000, 1000));
        assert_eq!(c.cwd, "/srv");
        assert_eq!(c.stop_signal, "QUIT");
        assert_eq!(c.hostname, "web");
        assert_eq!(c.limits.memory_bytes, 64 << 20);
        assert_eq!(c.limits.cpu_shares, 256);
        assert_eq!(c.limits.pids, 32);
        assert!(volumes.path().join("data").is_dir());
        assert_eq!(c.mounts[0].target, "/data");
    }

    #[test]
    fn command_replaces_entrypoint_and_drops_cmd() {
        let root = rootfs();
        let volumes = tempfile::tempdir().expect("tempdir");
        let spec = ContainerSpec {
            image: "x".into(),
            command: vec!["/bin/sh".into(), "-c".into(), "sleep 1".into()],
            user: Some("1000:video".into()),
            ..ContainerSpec::default()
        };
        let c = container_config(
            &workload(spec.clone()),
            &spec,
            Some(&image()),
            root.path(),
            volumes.path(),
        )
        .expect("resolve");
        assert_eq!(c.args, ["/bin/sh", "-c", "sleep 1"]);
        assert_eq!((c.uid, c.gid), (1000, 44));
    }

    #[test]
    fn a_symlinked_etc_never_reads_host_files() {
        let host = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            host.path().join("passwd"),
            "hostonly:x:4242:4242::/:/bin/sh\n",
        )
        .expect("passwd");
        let image = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(host.path(), image.path().join("etc")).expect("symlink");
        let err = resolve_user("hostonly", image.path()).expect_err("must not resolve");
        assert!(err.contains("hostonly"), "{err}");
        assert_eq!(resolve_user("4242", image.path()), Ok((4242, 0)));
    }

    #[test]
    fn unknown_users_and_empty_commands_are_refused() {
        let root = rootfs();
        let volumes = tempfile::tempdir().expect("tempdir");
        let spec = ContainerSpec {
            image: "x".into(),
            user: Some("nobody-here".into()),
            ..ContainerSpec::default()
        };
        let err = container_config(
            &workload(spec.clone()),
            &spec,
            Some(&image()),
            root.path(),
            volumes.path(),
        )
        .expect_err("unknown user");
        assert!(err.contains("nobody-here"), "{err}");
        let spec = ContainerSpec {
            image: "x".into(),
            ..ContainerSpec::default()
        };
        let err = container_config(
            &workload(spec.clone()),
            &spec,
            None,
            root.path(),
            volumes.path(),
        )
        .expect_err("nothing to run");
        assert!(err.contains("nothing to run"), "{err}");
    }
}
