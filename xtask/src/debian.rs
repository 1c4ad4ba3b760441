//! Facts about the host's Debian package sources, shared by the recipes that
//! fetch Debian packages (`deb --verify-install`, `images`).

use std::process::Command;

use anyhow::{bail, Result};

use crate::shell;

/// One Debian archive the host's apt uses: its URI and suites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// Base URI, ending in `/debian` or `/debian-security`.
    pub uri: String,
    /// Suites, e.g. `bookworm`, `bookworm-updates`.
    pub suites: Vec<String>,
}

/// The Debian archives (main and security) named in the host's apt sources,
/// so fresh roots and images come from the same place as every other package
/// on this machine.
pub fn host_archives() -> Result<Vec<Archive>> {
    let mut texts = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path.extension().is_some_and(|e| e == "sources") {
                texts.push(std::fs::read_to_string(path).unwrap_or_default());
            }
        }
    }
    let one_line = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let mut archives = Vec::new();
    for text in &texts {
        archives.extend(parse_deb822(text));
    }
    archives.extend(parse_one_line(&one_line));
    archives.retain(|a| a.uri.ends_with("/debian") || a.uri.ends_with("/debian-security"));
    if archives.iter().all(|a| !a.uri.ends_with("/debian")) {
        bail!("no Debian archive found in /etc/apt/sources.list(.d)");
    }
    Ok(archives)
}

/// The main Debian mirror (the first `/debian` archive).
pub fn host_debian_mirror() -> Result<String> {
    let archives = host_archives()?;
    let main = archives.iter().find(|a| a.uri.ends_with("/debian"));
    match main {
        Some(archive) => Ok(archive.uri.clone()),
        None => bail!("no Debian archive found in /etc/apt/sources.list(.d)"),
    }
}

/// Installs the host packages in `packages` that are missing (apt-get), or
/// fails naming them when `no_install` is set or installs are forbidden
/// (`--no-install`).
pub fn ensure_packages(packages: &[&str], no_install: bool) -> Result<()> {
    let no_install = no_install || !crate::installs_allowed();
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|pkg| !installed(pkg))
        .collect();
    if missing.is_empty() {
        println!("apt packages present: {}", packages.join(" "));
        return Ok(());
    }
    if no_install {
        bail!("missing apt packages (--no-install): {}", missing.join(" "));
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "missing apt packages {} and not root to install them \
             (`cargo xtask test --skip lab` runs everything but the edge box lab)",
            missing.join(" ")
        );
    }
    println!("installing missing apt packages: {}", missing.join(" "));
    shell::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    shell::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// True when dpkg reports `pkg` as installed.
fn installed(pkg: &str) -> bool {
    shell::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|status| status.contains("install ok installed"))
        .unwrap_or(false)
}

fn parse_deb822(text: &str) -> Vec<Archive> {
    let mut archives = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.trim().strip_prefix(name).map(str::trim))
                .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let types = field("Types:");
        if !types.iter().any(|t| t == "deb") {
            continue;
        }
        let suites = field("Suites:");
        for uri in field("URIs:") {
            archives.push(Archive {
                uri: uri.trim_end_matches('/').to_string(),
                suites: suites.clone(),
            });
        }
    }
    archives
}

fn parse_one_line(text: &str) -> Vec<Archive> {
    let mut archives: Vec<Archive> = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut words = rest.split_whitespace().skip_while(|w| !w.contains("://"));
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        let uri = uri.trim_end_matches('/').to_string();
        match archives.iter_mut().find(|a| a.uri == uri) {
            Some(archive) => archive.suites.push(suite.to_string()),
            None => archives.push(Archive {
                uri,
                suites: vec![suite.to_string()],
            }),
        }
    }
    archives
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_source_formats() {
        let deb822 = "Types: deb\nURIs: http://m.invalid/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb-src\nURIs: http://m.invalid/src\nSuites: x\n\n\
                      Types: deb\nURIs: http://m.invalid/debian-security/\nSuites: bookworm-security\n";
        assert_eq!(
            parse_deb822(deb822),
            vec![
                Archive {
                    uri: "http://m.invalid/debian".into(),
                    suites: vec!["bookworm".into(), "bookworm-updates".into()],
                },
                Archive {
                    uri: "http://m.invalid/debian-security".into(),
                    suites: vec!["bookworm-security".into()],
                },
            ]
        );
        let one = "# c\ndeb [arch=amd64] http://m.invalid/debian bookworm main\n\
                   deb http://m.invalid/debian bookworm-updates main\n";
        assert_eq!(
            parse_one_line(one),
            vec![Archive {
                uri: "http://m.invalid/debian".into(),
                suites: vec!["bookworm".into(), "bookworm-updates".into()],
            }]
        );
    }
}
