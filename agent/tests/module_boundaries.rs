//! The agent's module boundaries, checked on its source: the runtime
//! interface (`src/runtimes/mod.rs`) is a leaf that names no runtime, no
//! runtime reaches into another, and only the assembly (`src/assembly.rs`)
//! knows the concrete runtimes. So there is no import cycle between the
//! interface and the runtimes, and a new runtime is one module beside the
//! others plus one line in the assembly.
//!
//! References are read from code lines (comments dropped) as paths:
//! `crate::runtimes::<name>` anywhere, `super::<name>` inside a runtime.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("listing the agent's source") {
            let path = entry.expect("listing the agent's source").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The file's code without `//` comments (doc comments included).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("reading a source file")
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names that follow `prefix` in `code` (`crate::runtimes::vms::x` ->
/// `vms`; `crate::runtimes::{A, b}` -> `A`, `b`).
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        let parts: Vec<&str> = match rest.strip_prefix('{') {
            Some(inner) => inner[..inner.find('}').unwrap_or(inner.len())]
                .split(',')
                .collect(),
            None => vec![rest],
        };
        for part in parts {
            let name: String = part
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// The concrete runtimes: every module under `src/runtimes/` but the
/// interface itself.
fn runtimes() -> BTreeSet<String> {
    std::fs::read_dir(src().join("runtimes"))
        .expect("listing src/runtimes")
        .map(|e| e.expect("listing src/runtimes").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "mod.rs"))
        .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .collect()
}

/// The runtime a file belongs to, if any.
fn owner(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src().join("runtimes")).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "mod").then_some(name)
}

#[test]
fn the_runtimes_are_what_the_test_expects() {
    let found = runtimes();
    for name in ["containers", "slices", "unsupported", "vms"] {
        assert!(found.contains(name), "no runtime {name} in {found:?}");
    }
}

#[test]
fn the_runtime_interface_names_no_runtime() {
    let interface = code(&src().join("runtimes/mod.rs"));
    let crate_refs = names_after(&interface, "crate::");
    assert!(
        crate_refs.is_empty(),
        "runtimes/mod.rs must be a leaf; it refers to crate::{crate_refs:?}"
    );
    let runtime_refs: BTreeSet<String> = names_after(&interface, "super::")
        .into_iter()
        .chain(names_after(&interface, "self::"))
        .collect();
    assert!(
        runtime_refs.is_empty(),
        "runtimes/mod.rs refers to {runtime_refs:?}"
    );
    // Beyond declaring them, the interface uses a runtime only to fill
    // in the default (everything unsupported).
    let used: Vec<String> = runtimes()
        .into_iter()
        .filter(|name| name != "unsupported")
        .filter(|name| interface.contains(&format!("{name}::")))
        .collect();
    assert!(used.is_empty(), "runtimes/mod.rs uses {used:?}");
}

#[test]
fn no_runtime_reaches_into_another() {
    let runtimes = runtimes();
    let mut problems = Vec::new();
    for path in rust_files(&src().join("runtimes")) {
        let Some(me) = owner(&path) else { continue };
        let code = code(&path);
        let mut refs = names_after(&code, "crate::runtimes::");
        // `super::` from a runtime's own submodule names its own items.
        if path.parent() == Some(&src().join("runtimes")) || path.ends_with("mod.rs") {
            refs.extend(names_after(&code, "super::"));
        }
        for name in refs {
            if runtimes.contains(&name) && name != me {
                problems.push(format!("{} uses runtime {name}", path.display()));
            }
        }
        for outside in ["assembly", "reconciler", "agent", "link"] {
            if names_after(&code, "crate::").contains(outside) {
                problems.push(format!("{} reaches into crate::{outside}", path.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn only_the_assembly_knows_the_concrete_runtimes() {
    let runtimes = runtimes();
    let mut problems = Vec::new();
    for path in rust_files(&src()) {
        if owner(&path).is_some()
            || path.starts_with(src().join("runtimes"))
            || path.ends_with("assembly.rs")
        {
            continue;
        }
        let code = code(&path);
        for name in names_after(&code, "crate::runtimes::")
            .into_iter()
            .chain(names_after(&code, "edge_agent::runtimes::"))
        {
            // The tests of the reconciler fill unsupported kinds in.
            let test_unsupported = name == "unsupported" && path.ends_with("reconciler/tests.rs");
            // `edge-agent logs` reads a VM's console where its VMM wrote it.
            let vm_console = name == "vms" && path.ends_with("cli/logs.rs");
            if runtimes.contains(&name) && !test_unsupported && !vm_console {
                problems.push(format!("{} uses runtime {name}", path.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_reader_of_references_finds_paths_and_groups() {
    let code =
        "use crate::runtimes::{Runtime, vms::VmRuntime};\nlet x = crate::runtimes::slices::f();";
    assert_eq!(
        names_after(code, "crate::runtimes::"),
        ["Runtime", "slices", "vms"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
