//! Debian tools for the lab boxes' payload disk, e.g. iperf3 for the
//! shaping tests: the program and the shared libraries it needs, unpacked
//! from the architecture's own packages (through the private apt root and
//! the content-addressed store), started through the packaged dynamic
//! loader by a wrapper script, since the box has no glibc of its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::apt::{unpacked_path, AptRoot, PackageInfo};
use super::cas::Cas;
use super::{apt_root, images_dir};
use crate::cross::Arch;
use crate::shell;

/// Unpacks package `package` with the `lib*` packages it depends on into
/// `<payload>/<package>-root/` and writes a wrapper `<payload>/<program>`
/// for each of `programs`.
pub fn unpack_tool(arch: Arch, package: &str, programs: &[&str], payload: &Path) -> Result<()> {
    let (cas, root) = open_store(arch)?;
    let packages = fetch_with_libraries(&root, &cas, package)?;
    let tree = extract(&cas, &packages, &payload.join(format!("{package}-root")))?;
    let triplet = match arch {
        Arch::X86_64 => "x86_64-linux-gnu",
        Arch::Aarch64 => "aarch64-linux-gnu",
    };
    let loader_name = match arch {
        Arch::X86_64 => "ld-linux-x86-64.so.2",
        Arch::Aarch64 => "ld-linux-aarch64.so.1",
    };
    let loader = unpacked_path(&tree, &format!("lib/{triplet}/{loader_name}"))
        .with_context(|| format!("no {loader_name} in {}", tree.display()))?;
    for program in programs {
        let binary = ["bin", "sbin"]
            .iter()
            .find_map(|dir| unpacked_path(&tree, &format!("{dir}/{program}")))
            .with_context(|| format!("no {program} in {}", tree.display()))?;
        let relative = |p: &Path| -> Result<String> {
            Ok(p.strip_prefix(payload)
                .with_context(|| format!("{} outside {}", p.display(), payload.display()))?
                .display()
                .to_string())
        };
        let wrapper = format!(
            "#!/bin/sh\n# {program} from Debian's {} packages ({}), with its own loader and libraries.\n\
             here=$(dirname \"$0\")\n\
             exec \"$here/{}\" --library-path \"$here/{package}-root/lib/{triplet}:$here/{package}-root/usr/lib/{triplet}\" \"$here/{}\" \"$@\"\n",
            arch.debian(),
            packages
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            relative(&loader)?,
            relative(&binary)?,
        );
        let path = payload.join(program);
        std::fs::write(&path, wrapper).with_context(|| format!("writing {}", path.display()))?;
        let mut permissions = std::fs::metadata(&path)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&path, permissions)
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    Ok(())
}

/// Unpacks package `package` alone (no dependencies, no wrapper) into
/// `<payload>/<package>-root/`, e.g. an architecture-independent data
/// package such as firmware; returns that directory.
pub fn unpack_data(arch: Arch, package: &str, payload: &Path) -> Result<PathBuf> {
    let (cas, root) = open_store(arch)?;
    let info = root.fetch(&cas, package)?;
    extract(&cas, &[info], &payload.join(format!("{package}-root")))
}

/// The content-addressed store and the private apt root of `arch`.
fn open_store(arch: Arch) -> Result<(Cas, AptRoot)> {
    let cas = Cas::open(&images_dir())?;
    let root = apt_root(arch, &crate::debian::host_archives()?, false)?;
    Ok((cas, root))
}

/// Unpacks `packages` (blobs in `cas`) into a fresh directory `tree`;
/// returns `tree`.
fn extract(cas: &Cas, packages: &[PackageInfo], tree: &Path) -> Result<PathBuf> {
    if tree.exists() {
        std::fs::remove_dir_all(tree).with_context(|| format!("clearing {}", tree.display()))?;
    }
    std::fs::create_dir_all(tree).with_context(|| format!("creating {}", tree.display()))?;
    for info in packages {
        shell::output(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(cas.blob_path(&info.sha256))
                .arg(tree),
        )
        .with_context(|| format!("unpacking {} into {}", info.name, tree.display()))?;
    }
    Ok(tree.to_path_buf())
}

/// Fetches `package` and, transitively, the shared-library packages it
/// depends on (first alternatives only) into the store; returns them,
/// `package` first.
pub fn fetch_with_libraries(root: &AptRoot, cas: &Cas, package: &str) -> Result<Vec<PackageInfo>> {
    let mut queue = vec![package.to_string()];
    let mut seen = BTreeSet::new();
    let mut packages = Vec::new();
    while let Some(name) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let info = root.fetch(cas, &name)?;
        queue.extend(library_depends(&info.depends));
        packages.push(info);
    }
    Ok(packages)
}

/// Library packages whose names do not start with `lib`.
const OTHER_LIBRARIES: [&str; 1] = ["zlib1g"];

/// The shared-library packages (`lib*`, zlib) among a `Depends:` field's
/// first alternatives.
fn library_depends(depends: &str) -> Vec<String> {
    depends
        .split(',')
        .filter_map(|clause| clause.split('|').next())
        .map(|dep| dep.split_whitespace().next().unwrap_or_default())
        .map(|dep| dep.split(':').next().unwrap_or_default().to_string())
        .filter(|dep| dep.starts_with("lib") || OTHER_LIBRARIES.contains(&dep.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_library_packages_are_followed() {
        let deps = "libc6 (>= 2.34), libiperf0 (= 3.12-1+deb12u1), adduser, debconf (>= 0.5) | debconf-2.0, libsctp1:any";
        assert_eq!(
            library_depends(deps),
            vec!["libc6", "libiperf0", "libsctp1"]
        );
    }
}
