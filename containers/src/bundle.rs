//! OCI bundle generation: `config.json` (runtime spec) from a
//! [`ContainerConfig`], built with oci-spec's types.
//!
//! Defaults every container gets: its own PID, IPC, UTS and mount
//! namespaces (network: its own, or the slice port's namespace), Docker's
//! default capability set, `no_new_privileges`, the default seccomp
//! profile ([`crate::seccomp`]), masked and read-only kernel paths, a
//! cgroup under `mecvisor/`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder,
    Spec, UserBuilder,
};

use oci_spec::OciSpecError;

use crate::config::ContainerConfig;

/// Capabilities a container process gets (Docker's default set).
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::AuditWrite,
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Mknod,
    Capability::NetBindService,
    Capability::NetRaw,
    Capability::Setfcap,
    Capability::Setgid,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysChroot,
];

/// CFS period used with the CPU quota.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// oci-spec refused a value.
    #[error("building the runtime spec: {0}")]
    Spec(#[from] OciSpecError),
    /// Writing config.json failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The cgroup of a container, relative to the cgroup root(s).
pub fn cgroup_path(id: &str) -> String {
    format!("/mecvisor/{id}")
}

/// The runtime spec for container `id` with its root file system at `rootfs`.
pub fn spec(id: &str, config: &ContainerConfig, rootfs: &Path) -> Result<Spec, BundleError> {
    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(config.args.clone())
        .env(config.env.clone())
        .cwd(PathBuf::from(&config.cwd))
        .user(
            UserBuilder::default()
                .uid(config.uid)
                .gid(config.gid)
                .build()?,
        )
        .no_new_privileges(true)
        .capabilities(capabilities)
        // No rlimits: the container inherits the agent's (a fixed value
        // above the box's hard limit would make every start fail).
        .rlimits(Vec::new())
        .build()?;

    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_hostname(Some(config.hostname.clone()));
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs.to_path_buf())
            .readonly(config.read_only_root)
            .build()?,
    ));
    spec.set_mounts(Some(mounts(config)?));
    spec.set_linux(Some(linux(id, config)?));
    Ok(spec)
}

fn mounts(config: &ContainerConfig) -> Result<Vec<Mount>, BundleError> {
    let mut mounts = oci_spec::runtime::get_default_mounts();
    if config.user_namespace.is_some() {
        // sysfs cannot be mounted from a user namespace that does not own
        // the network namespace; bind the host's read-only instead.
        for m in &mut mounts {
            if m.destination() == Path::new("/sys") {
                *m = MountBuilder::default()
                    .destination("/sys")
                    .typ("none")
                    .source("/sys")
                    .options(vec![
                        "rbind".into(),
                        "nosuid".into(),
                        "noexec".into(),
                        "nodev".into(),
                        "ro".into(),
                    ])
                    .build()?;
            }
        }
        mounts.retain(|m| m.destination() != Path::new("/sys/fs/cgroup"));
    }
    for bind in &config.mounts {
        let mut options = vec!["rbind".to_string(), "nosuid".into(), "nodev".into()];
        options.push(if bind.read_only { "ro" } else { "rw" }.into());
        mounts.push(
            MountBuilder::default()
                .destination(&bind.target)
                .typ("bind")
                .source(&bind.source)
                .options(options)
                .build()?,
        );
    }
    Ok(mounts)
}

fn linux(id: &str, config: &ContainerConfig) -> Result<oci_spec::runtime::Linux, BundleError> {
    let mut resources = LinuxResourcesBuilder::default();
    let limits = &config.limits;
    if limits.memory_bytes > 0 {
        let bytes = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()?,
        );
    }
    let mut cpu = LinuxCpuBuilder::default();
    if limits.cpu_millis > 0 {
        cpu = cpu
            .quota(i64::from(limits.cpu_millis) * CPU_PERIOD_US as i64 / 1000)
            .period(CPU_PERIOD_US);
    }
    if limits.cpu_shares > 0 {
        cpu = cpu.shares(limits.cpu_shares);
    }
    resources = resources.cpu(cpu.build()?);
    if limits.pids > 0 {
        resources = resources.pids(LinuxPidsBuilder::default().limit(limits.pids).build()?);
    }

    let mut namespaces: Vec<LinuxNamespace> = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<_, _>>()?;
    let mut network = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    if let Some(path) = &config.network_namespace {
        network = network.path(path.clone());
    }
    namespaces.push(network.build()?);

    let mut linux = LinuxBuilder::default()
        .cgroups_path(PathBuf::from(cgroup_path(id)))
        .resources(resources.build()?)
        .seccomp(crate::seccomp::default_profile())
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths());
    if let Some(map) = config.user_namespace {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()?,
        );
        let mapping = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(map.host_id)
            .size(map.size)
            .build()?;
        linux = linux
            .uid_mappings(vec![mapping])
            .gid_mappings(vec![mapping]);
    }
    Ok(linux.namespaces(namespaces).build()?)
}

/// Writes `config.json` into `bundle`.
pub fn write(bundle: &Path, spec: &Spec) -> Result<(), BundleError> {
    let path = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(spec).map_err(|e| BundleError::Write {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::write(&path, json).map_err(|source| BundleError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BindMount, IdMapping, Limits};

    fn json(config: &ContainerConfig) -> serde_json::Value {
        let spec = spec("web", config, Path::new("/var/lib/x/rootfs")).expect("spec");
        serde_json::to_value(&spec).expect("json")
    }

    #[test]
    fn limits_namespaces_and_hardening_land_in_the_spec() {
        let mut config =
            ContainerConfig::new(vec!["/bin/sh".into(), "-c".into(), "sleep 1".into()]);
        config.limits = Limits {
            memory_bytes: 16 << 20,
            cpu_millis: 500,
            cpu_shares: 512,
            pids: 64,
        };
        config.read_only_root = true;
        config.network_namespace = Some("/run/mecvisor/netns/web".into());
        config.mounts.push(BindMount {
            source: "/var/lib/mecvisor/volumes/web/data".into(),
            target: "/data".into(),
            read_only: false,
        });
        let v = json(&config);
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 16 << 20);
        assert_eq!(r["memory"]["swap"], 16 << 20);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["cpu"]["shares"], 512);
        assert_eq!(r["pids"]["limit"], 64);
        assert_eq!(v["linux"]["cgroupsPath"], "/mecvisor/web");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        let caps = v["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("caps");
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        let net = v["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .find(|n| n["type"] == "network")
            .expect("network namespace")
            .clone();
        assert_eq!(net["path"], "/run/mecvisor/netns/web");
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let data = v["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == "/data")
            .expect("volume")
            .clone();
        assert_eq!(data["source"], "/var/lib/mecvisor/volumes/web/data");
        assert!(data["options"]
            .as_array()
            .expect("options")
            .iter()
            .any(|o| o == "rbind"));
    }

    #[test]
    fn user_namespace_maps_ids_and_binds_sys() {
        let mut config = ContainerConfig::new(vec!["/bin/true".into()]);
        config.user_namespace = Some(IdMapping {
            host_id: 100_000,
            size: 65_536,
        });
        let v = json(&config);
        assert_eq!(v["linux"]["uidMappings"][0]["hostID"], 100_000);
        assert_eq!(v["linux"]["gidMappings"][0]["size"], 65_536);
        assert!(v["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .any(|n| n["type"] == "user"));
        let sys = v["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == "/sys")
            .expect("sys")
            .clone();
        assert_eq!(sys["type"], "none");
    }

    #[test]
    fn no_limits_means_no_limit_entries() {
        let v = json(&ContainerConfig::new(vec!["/bin/true".into()]));
        let r = &v["linux"]["resources"];
        assert!(r["memory"].is_null(), "{r}");
        assert!(r["pids"].is_null(), "{r}");
        assert!(v["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .all(|n| n["path"].is_null()));
    }
}
