//! Checks on the repository's documents, run with xtask's tests: every
//! relative link in the README, the docs and the other top-level documents
//! resolves to a file or directory in the repository, and nothing in the
//! sources or documents refers to the `shared/` directory beside the
//! repository except the optional advisory snapshot's lookup and its
//! documentation.

use std::path::{Path, PathBuf};

use crate::workspace_root;

/// The documents whose links are checked: the top-level ones, `docs/`,
/// and every crate's and recipe's README.
fn documents() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut out = Vec::new();
    for dir in [
        root.clone(),
        root.join("docs"),
        root.join("cross"),
        root.join("images"),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The targets of the Markdown links `[text](target)` in `text`.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].trim().to_string());
        rest = &after[end..];
    }
    out
}

/// Whether a link target leaves the repository (a URL or a mail address)
/// or stays in the same page (`#anchor`).
fn external(target: &str) -> bool {
    target.starts_with("http://")
        || target.starts_with("https://")
        || target.starts_with("mailto:")
        || target.starts_with('#')
}

/// Every broken relative link of `doc` as `doc: target`.
fn broken_links(doc: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(doc).unwrap_or_default();
    let dir = doc.parent().unwrap_or(Path::new("."));
    link_targets(&text)
        .into_iter()
        .filter(|t| !external(t))
        .filter(|t| {
            let path = t.split('#').next().unwrap_or_default();
            !path.is_empty() && !dir.join(path).exists()
        })
        .map(|t| format!("{}: {t}", doc.display()))
        .collect()
}

/// Every `.rs`, `.md` and `.toml` file of the repository (no `target/`,
/// no `.git/`).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != ".git" {
                sources(&path, out);
            }
        } else if path
            .extension()
            .is_some_and(|e| e == "rs" || e == "md" || e == "toml")
        {
            out.push(path);
        }
    }
}

#[test]
fn every_link_in_the_documents_resolves() {
    let docs = documents();
    assert!(
        docs.iter().any(|d| d.ends_with("README.md"))
            && docs.iter().any(|d| d.ends_with("docs/design.md")),
        "the README and docs/design.md are checked: {docs:?}"
    );
    let broken: Vec<String> = docs.iter().flat_map(|d| broken_links(d)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn only_the_advisory_lookup_refers_to_the_shared_directory() {
    let root = workspace_root();
    let needle = concat!("../", "shared");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut found = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&root).unwrap_or(&path);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            // The advisory snapshot's lookup and its documentation name
            // the advisory database on the same line.
            if line.contains(needle) && !line.contains("advisory") {
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references to {needle}:\n{}",
        found.join("\n")
    );
}

#[test]
fn links_are_read_with_their_anchors_and_urls_told_apart() {
    let text = "see [a](docs/a.md#x), [b](https://x.org/) and [c](#here) ([d](../e))";
    assert_eq!(
        link_targets(text),
        ["docs/a.md#x", "https://x.org/", "#here", "../e"]
    );
    assert!(external("https://x.org/") && external("#here"));
    assert!(!external("docs/a.md#x"));
}
