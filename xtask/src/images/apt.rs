//! Fetching Debian packages of any architecture without touching the host's
//! apt state: a private apt root per architecture (its own sources list,
//! package lists and archive cache) under `target/images/apt/<arch>/`.
//!
//! Trust comes from Debian's own chain: apt checks the archive's signed
//! Release file with the host's Debian keyring, and the SHA-256 of each .deb
//! against the signed package index; the content-addressed store then
//! refuses any file whose digest differs from the index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use super::cas::{Cas, Digest256};
use crate::debian::Archive;
use crate::shell;

/// Package lists older than this are refreshed before use.
const LISTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The Debian keyring apt checks the archives' Release files with.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// What the package index says about one package.
#[derive(Debug, Clone)]
pub struct PackageInfo {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the .deb, from the signed index.
    pub sha256: Digest256,
    /// The `Depends:` field, as written.
    pub depends: String,
}

/// A private apt root for one Debian architecture.
pub struct AptRoot {
    dir: PathBuf,
    arch: &'static str,
}

impl AptRoot {
    /// Opens the root for `arch` (Debian name), writing its sources list from
    /// the host's archives and fetching package lists when they are missing,
    /// older than a week, or `refresh` is set.
    pub fn open(
        dir: &Path,
        arch: &'static str,
        archives: &[Archive],
        refresh: bool,
    ) -> Result<Self> {
        // etc/empty stands for apt's SourceParts and PreferencesParts
        // directories: it must exist, or every apt call warns.
        for sub in [
            "etc/empty",
            "lists/partial",
            "archives/partial",
            "cache",
            "download",
        ] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        let mut sources = String::new();
        for archive in archives {
            for suite in &archive.suites {
                sources.push_str(&format!(
                    "deb [arch={arch} signed-by={KEYRING}] {} {suite} main\n",
                    archive.uri
                ));
            }
        }
        let list = dir.join("etc/sources.list");
        let changed = std::fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str());
        if changed {
            std::fs::write(&list, &sources)
                .with_context(|| format!("writing {}", list.display()))?;
        }
        let root = AptRoot {
            dir: dir.to_path_buf(),
            arch,
        };
        if refresh || changed || root.lists_age().is_none_or(|age| age > LISTS_MAX_AGE) {
            root.update()?;
        }
        Ok(root)
    }

    /// Downloads the package lists; the freshness stamp is written only
    /// after a complete update.
    pub fn update(&self) -> Result<()> {
        println!("images: fetching {} package lists", self.arch);
        let stamp = self.dir.join("lists/.updated");
        let _ = std::fs::remove_file(&stamp);
        shell::run(self.apt("apt-get").args(["-q", "update"]))?;
        std::fs::write(&stamp, b"").with_context(|| format!("writing {}", stamp.display()))
    }

    /// The index entry of `name` (the candidate version).
    pub fn show(&self, name: &str) -> Result<PackageInfo> {
        let text = shell::output(
            self.apt("apt-cache")
                .args(["show", "--no-all-versions", name]),
        )
        .with_context(|| format!("package {name} ({}) is not in the index", self.arch))?;
        parse_stanza(&text).with_context(|| format!("index entry of {name} ({})", self.arch))
    }

    /// The package `name` as a blob in `cas` (downloaded only when missing);
    /// returns its index entry and the blob's digest.
    pub fn fetch(&self, cas: &Cas, name: &str) -> Result<PackageInfo> {
        let info = self.show(name)?;
        if cas.check(&info.sha256, &format!("package {name}"))? {
            return Ok(info);
        }
        println!(
            "images: downloading {name} {} ({})",
            info.version, self.arch
        );
        let download = self.dir.join("download");
        let mut attempt = self.download(&download, name);
        if attempt.is_err() {
            // The mirror drops superseded versions: refresh the lists once.
            self.update()?;
            attempt = self.download(&download, name);
        }
        let file = attempt?;
        // After a refresh the candidate may be a newer version.
        let info = if file
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains(&info.version.replace(':', "%3a")))
        {
            info
        } else {
            self.show(name)?
        };
        cas.put_file(&file, Some(&info.sha256))?;
        Ok(info)
    }

    fn download(&self, into: &Path, name: &str) -> Result<PathBuf> {
        // Start empty: a file left by an interrupted or refused run must not
        // be taken for this download.
        if into.exists() {
            std::fs::remove_dir_all(into)
                .with_context(|| format!("clearing {}", into.display()))?;
        }
        std::fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
        shell::run(
            self.apt("apt-get")
                .current_dir(into)
                .args(["-q", "download", name]),
        )?;
        let prefix = format!("{name}_");
        let found = std::fs::read_dir(into)
            .with_context(|| format!("listing {}", into.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            });
        match found {
            Some(path) => Ok(path),
            None => bail!("apt-get download {name} left no .deb in {}", into.display()),
        }
    }

    fn lists_age(&self) -> Option<Duration> {
        let modified = std::fs::metadata(self.dir.join("lists/.updated"))
            .and_then(|m| m.modified())
            .ok()?;
        SystemTime::now().duration_since(modified).ok()
    }

    /// An apt command confined to this root.
    fn apt(&self, program: &str) -> Command {
        let dir = self.dir.display();
        let mut cmd = Command::new(program);
        for option in [
            format!("Dir::Etc::SourceList={dir}/etc/sources.list"),
            format!("Dir::Etc::SourceParts={dir}/etc/empty"),
            format!("Dir::State::Lists={dir}/lists"),
            format!("Dir::State::status={dir}/status"),
            // Host pinning and default-release settings do not apply here.
            "Dir::Etc::Preferences=/dev/null".to_string(),
            format!("Dir::Etc::PreferencesParts={dir}/etc/empty"),
            "APT::Default-Release=".to_string(),
            format!("Dir::Cache={dir}/cache"),
            // Named explicitly: hosts (e.g. container images) often switch
            // the binary cache off, which makes every query reparse the lists.
            "Dir::Cache::pkgcache=pkgcache.bin".to_string(),
            "Dir::Cache::srcpkgcache=srcpkgcache.bin".to_string(),
            format!("Dir::Cache::Archives={dir}/archives"),
            format!("APT::Architecture={}", self.arch),
            format!("APT::Architectures::={}", self.arch),
            // Downloads land in our own directory, which _apt may not enter.
            "APT::Sandbox::User=root".to_string(),
        ] {
            cmd.arg("-o").arg(option);
        }
        cmd
    }
}

/// Unpacks a .deb's files into a fresh temp dir (`dpkg-deb -x`).
pub fn unpack(deb: &Path) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    shell::output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()))?;
    Ok(dir)
}

/// `root/<path>` if it exists, else `root/usr/<path>`: packages of
/// merged-/usr releases (trixie on) ship `/bin`, `/lib` under `/usr`.
pub fn unpacked_path(root: &Path, path: &str) -> Option<PathBuf> {
    [root.join(path), root.join("usr").join(path)]
        .into_iter()
        .find(|p| p.exists())
}

/// Parses one `apt-cache show` stanza.
fn parse_stanza(text: &str) -> Result<PackageInfo> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with(' ') {
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields
                .entry(key.trim().to_string())
                .or_insert_with(|| value.trim().to_string());
        }
    }
    let field = |name: &str| {
        fields
            .get(name)
            .cloned()
            .with_context(|| format!("no {name} field"))
    };
    let sha256 = field("SHA256")?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("SHA256 field {sha256:?} is not 64 hex digits");
    }
    Ok(PackageInfo {
        name: field("Package")?,
        version: field("Version")?,
        sha256: sha256.to_ascii_lowercase(),
        depends: fields.get("Depends").cloned().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_it_needs() {
        let text = "Package: linux-image-cloud-arm64\nSource: linux-signed-arm64 (6.1.192+2)\n\
                    Version: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-arm64 (= 6.1.192-2)\n\
                    Description: x\n more\nSHA256: 481AB54A27246579AADEB372315C56DE02F2FE0CBA4E09B387946269FFF2F415\n";
        let info = parse_stanza(text).unwrap();
        assert_eq!(info.name, "linux-image-cloud-arm64");
        assert_eq!(info.version, "6.1.192-2");
        assert!(info
            .depends
            .starts_with("linux-image-6.1.0-56-cloud-arm64 "));
        assert!(info.sha256.starts_with("481ab54a"));
        assert!(parse_stanza("Package: x\nVersion: 1\nSHA256: zz\n").is_err());
    }
}
