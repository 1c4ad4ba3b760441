//! Debian's cloud kernel as used by the images: the kernel image and the
//! closure of the modules a recipe asks for, with their load order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::tree::FileTree;
use crate::cross::Arch;
use crate::shell;

/// A kernel package unpacked into a temp dir.
pub struct UnpackedKernel {
    dir: tempfile::TempDir,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The unpacked `lib/modules` directory.
    modules: PathBuf,
}

/// One line of a recipe's module list: a module wanted on some architectures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedModule {
    /// Module name as `modprobe` takes it.
    pub name: String,
    /// Architectures it is wanted on; all when empty.
    pub arches: Vec<String>,
}

/// Parses a module list: one module per line, optionally followed by the
/// architectures (`x86_64`, `aarch64`) it applies to; `#` starts a comment.
pub fn parse_module_list(text: &str) -> Result<Vec<WantedModule>> {
    let mut wanted = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let arches: Vec<String> = words.map(str::to_string).collect();
        if let Some(bad) = arches
            .iter()
            .find(|a| !["x86_64", "aarch64"].contains(&a.as_str()))
        {
            bail!("line {}: unknown architecture {bad:?}", n + 1);
        }
        wanted.push(WantedModule {
            name: name.to_string(),
            arches,
        });
    }
    Ok(wanted)
}

/// The modules of a selection: files to ship, and what the init loads.
#[derive(Debug, Default)]
pub struct ModuleSelection {
    /// Paths relative to `/lib/modules/<release>/` of every module shipped.
    pub files: BTreeSet<String>,
    /// The `modules.dep` lines of the shipped modules.
    pub dep_lines: Vec<String>,
    /// Names the init should `modprobe`, in list order (built-ins left out).
    pub load: Vec<String>,
    /// Wanted modules that are built into the kernel.
    pub builtin: Vec<String>,
}

impl UnpackedKernel {
    /// Unpacks the kernel .deb at `deb`.
    pub fn unpack(deb: &Path) -> Result<Self> {
        let dir = super::apt::unpack(deb)?;
        let modules = super::apt::unpacked_path(dir.path(), "lib/modules")
            .with_context(|| format!("{} has no lib/modules", deb.display()))?;
        let release = std::fs::read_dir(&modules)
            .with_context(|| format!("{} has no lib/modules", deb.display()))?
            .flatten()
            .find_map(|e| e.file_name().to_str().map(str::to_string))
            .with_context(|| format!("{} has no kernel release dir", deb.display()))?;
        // The .deb ships no modules.dep (its postinst runs depmod): make one.
        // depmod -b <base> reads <base>/lib/modules/<release>.
        let base = modules
            .parent()
            .and_then(Path::parent)
            .context("modules directory has no parent")?;
        shell::output(Command::new("depmod").arg("-b").arg(base).arg(&release))?;
        Ok(UnpackedKernel {
            dir,
            release,
            modules,
        })
    }

    /// The compressed kernel image (`/boot/vmlinuz-<release>`).
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("boot/vmlinuz-{}", self.release))
    }

    fn modules_dir(&self) -> PathBuf {
        self.modules.join(&self.release)
    }

    /// Resolves the wanted modules for `arch` to files, following
    /// `modules.dep`; a module that is neither loadable nor built in is an error.
    pub fn select(&self, wanted: &[WantedModule], arch: Arch) -> Result<ModuleSelection> {
        let dir = self.modules_dir();
        let deps_text = std::fs::read_to_string(dir.join("modules.dep"))
            .context("reading the kernel's modules.dep")?;
        let builtin_text = std::fs::read_to_string(dir.join("modules.builtin"))
            .context("reading the kernel's modules.builtin")?;
        let mut deps: BTreeMap<String, (String, Vec<String>, String)> = BTreeMap::new();
        for line in deps_text.lines() {
            let Some((file, rest)) = line.split_once(':') else {
                continue;
            };
            let needs = rest.split_whitespace().map(str::to_string).collect();
            deps.insert(
                module_name(file),
                (file.to_string(), needs, line.to_string()),
            );
        }
        let builtin: BTreeSet<String> = builtin_text.lines().map(module_name).collect();

        let mut selection = ModuleSelection::default();
        for module in wanted {
            if !module.arches.is_empty() && !module.arches.iter().any(|a| a == arch.name()) {
                continue;
            }
            let name = module.name.replace('-', "_");
            if builtin.contains(&name) {
                selection.builtin.push(module.name.clone());
                continue;
            }
            let Some((file, needs, _)) = deps.get(&name) else {
                bail!(
                    "module {} is neither built into {} nor shipped with it",
                    module.name,
                    self.release
                );
            };
            selection.load.push(module.name.clone());
            let mut todo: Vec<String> = needs.clone();
            todo.push(file.clone());
            while let Some(file) = todo.pop() {
                if selection.files.insert(file.clone()) {
                    if let Some((_, more, _)) = deps.get(&module_name(&file)) {
                        todo.extend(more.iter().cloned());
                    }
                }
            }
        }
        selection.dep_lines = deps
            .values()
            .filter(|(file, _, _)| selection.files.contains(file))
            .map(|(_, _, line)| line.clone())
            .collect();
        Ok(selection)
    }

    /// Adds the selected modules, a matching `modules.dep` and the load list
    /// (`/etc/modules-load`) to `tree`.
    pub fn add_modules(&self, tree: &mut FileTree, selection: &ModuleSelection) -> Result<()> {
        let dir = self.modules_dir();
        let base = format!("lib/modules/{}", self.release);
        for file in &selection.files {
            tree.file_from(&format!("{base}/{file}"), 0o644, &dir.join(file))?;
        }
        let mut dep = selection.dep_lines.join("\n");
        dep.push('\n');
        tree.file(&format!("{base}/modules.dep"), 0o644, dep.into_bytes())?;
        let mut load = selection.load.join("\n");
        load.push('\n');
        tree.file("etc/modules-load", 0o644, load.into_bytes())
    }
}

/// `kernel/net/8021q/8021q.ko` -> `8021q`; dashes become underscores.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_lists_name_arches() {
        let list = parse_module_list("# c\nkvm_amd x86_64 # AMD\n\n8021q\n").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].arches, vec!["x86_64".to_string()]);
        assert!(list[1].arches.is_empty());
        assert!(parse_module_list("kvm sparc\n").is_err());
    }

    #[test]
    fn module_names_from_paths() {
        assert_eq!(module_name("kernel/net/8021q/8021q.ko"), "8021q");
        assert_eq!(module_name("kernel/drivers/x/nf-tables.ko.xz"), "nf_tables");
    }
}
