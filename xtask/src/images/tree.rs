//! A file tree assembled in memory, written out as an initramfs (cpio newc)
//! or an OCI layer (ustar). Every entry is owned by root with mtime 0, so
//! the same inputs always give the same bytes (and the same digest).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with this mode (permission bits).
    Dir(u32),
    /// A regular file with this mode and content.
    File(u32, Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device node (major, minor), mode 0600; initramfs only.
    CharDevice(u32, u32),
}

/// Paths (relative, `/`-separated, no leading slash) to entries, sorted so a
/// directory always comes before what it holds.
#[derive(Debug, Default)]
pub struct FileTree {
    entries: BTreeMap<String, Node>,
}

impl FileTree {
    /// An empty tree.
    pub fn new() -> Self {
        FileTree::default()
    }

    /// Adds a directory (and its parents), mode 0755.
    pub fn dir(&mut self, path: &str) -> Result<()> {
        self.dir_with_mode(path, 0o755)
    }

    /// Adds a directory with this mode (e.g. 0o1777 for /tmp).
    pub fn dir_with_mode(&mut self, path: &str, mode: u32) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        match self.entries.get(&path) {
            None | Some(Node::Dir(_)) => {
                self.entries.insert(path, Node::Dir(mode & 0o7777));
                Ok(())
            }
            Some(_) => bail!("{path} is already a file or link in the tree"),
        }
    }

    /// Adds a file with this content and mode (parents created).
    pub fn file(&mut self, path: &str, mode: u32, bytes: Vec<u8>) -> Result<()> {
        self.leaf(path, Node::File(mode & 0o7777, bytes))
    }

    /// Adds a file with the content of a file on the host.
    pub fn file_from(&mut self, path: &str, mode: u32, source: &Path) -> Result<()> {
        let bytes =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        self.file(path, mode, bytes)
    }

    /// Adds a symbolic link (parents created).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.leaf(path, Node::Symlink(target.to_string()))
    }

    /// Adds a character device node, e.g. `dev/console` (5, 1), which the
    /// kernel needs before anything can mount devtmpfs.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> Result<()> {
        self.leaf(path, Node::CharDevice(major, minor))
    }

    /// Adds the directories, regular files (with their permission bits) and
    /// symlinks below the host directory `source` at the same paths, except
    /// those for which `skip` (given the relative path) is true.
    pub fn add_host_tree(&mut self, source: &Path, skip: &dyn Fn(&str) -> bool) -> Result<()> {
        self.add_host_dir(source, "", skip)
    }

    fn add_host_dir(
        &mut self,
        dir: &Path,
        prefix: &str,
        skip: &dyn Fn(&str) -> bool,
    ) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{prefix}{name}");
            if skip(&path) {
                continue;
            }
            let meta = entry
                .path()
                .symlink_metadata()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                self.dir_with_mode(&path, mode)?;
                self.add_host_dir(&entry.path(), &format!("{path}/"), skip)?;
            } else if meta.is_file() {
                self.file_from(&path, mode, &entry.path())?;
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path())
                    .with_context(|| format!("reading {}", entry.path().display()))?;
                self.symlink(&path, &target.to_string_lossy())?;
            } else {
                bail!(
                    "{} is neither file, directory nor symlink",
                    entry.path().display()
                );
            }
        }
        Ok(())
    }

    /// The entries in archive order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.entries.iter().map(|(p, n)| (p.as_str(), n))
    }

    fn leaf(&mut self, path: &str, node: Node) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        if let Some(old) = self.entries.get(&path) {
            if *old != node {
                bail!("{path} is added twice with different content");
            }
        }
        self.entries.insert(path, node);
        Ok(())
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), Node::Dir(0o755));
                }
                Some(Node::Dir(_)) => {}
                Some(_) => bail!("{parent} is a file or link, cannot hold {path}"),
            }
        }
        Ok(())
    }
}

fn normalize(path: &str) -> Result<String> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        bail!("bad path in file tree: {path:?}");
    }
    Ok(trimmed.to_string())
}

/// Writes the tree as a cpio "newc" archive (what the kernel unpacks as an
/// initramfs).
pub fn to_cpio_newc(tree: &FileTree) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, (path, node)) in (1u32..).zip(tree.entries()) {
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
            Node::Dir(mode) => (0o040000 | mode, &[], (0, 0)),
            Node::File(mode, bytes) => (0o100000 | mode, bytes, (0, 0)),
            Node::Symlink(target) => (0o120777, target.as_bytes(), (0, 0)),
            Node::CharDevice(major, minor) => (0o020600, &[], (*major, *minor)),
        };
        cpio_entry(&mut out, ino, mode, path, data, rdev);
    }
    cpio_entry(&mut out, 0, 0, "TRAILER!!!", &[], (0, 0));
    out
}

fn cpio_entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8], rdev: (u32, u32)) {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out, 4);
    out.extend_from_slice(data);
    pad(out, 4);
}

/// Writes the tree as a POSIX ustar archive (an uncompressed OCI layer).
pub fn to_ustar(tree: &FileTree) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (path, node) in tree.entries() {
        let (name, mode, kind, data, link): (String, u32, u8, &[u8], &str) = match node {
            Node::Dir(mode) => (format!("{path}/"), *mode, b'5', &[], ""),
            Node::File(mode, bytes) => (path.to_string(), *mode, b'0', bytes, ""),
            Node::Symlink(target) => (path.to_string(), 0o777, b'2', &[], target),
            Node::CharDevice(..) => bail!("{path}: device nodes have no place in an OCI layer"),
        };
        let mut header = [0u8; 512];
        let (prefix, short) = split_ustar_name(&name)?;
        header[..short.len()].copy_from_slice(short.as_bytes());
        octal(&mut header[100..108], u64::from(mode));
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 0);
        header[156] = kind;
        if link.len() > 100 {
            bail!("link target of {path} is longer than 100 bytes");
        }
        header[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[265..269].copy_from_slice(b"root");
        header[297..301].copy_from_slice(b"root");
        header[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        octal(&mut header[148..155], u64::from(sum));
        header[155] = b' ';
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        pad(&mut out, 512);
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}

/// Splits a name into ustar's 155-byte prefix and 100-byte name fields.
fn split_ustar_name(name: &str) -> Result<(&str, &str)> {
    if name.len() <= 100 {
        return Ok(("", name));
    }
    for (i, _) in name.match_indices('/') {
        let (prefix, rest) = (&name[..i], &name[i + 1..]);
        if prefix.len() <= 155 && !rest.is_empty() && rest.len() <= 100 {
            return Ok((prefix, rest));
        }
    }
    bail!("path {name} is too long for a ustar header")
}

/// Writes `value` as zero-padded octal, NUL-terminated, into `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn pad(out: &mut Vec<u8>, to: usize) {
    while !out.len().is_multiple_of(to) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample() -> FileTree {
        let mut tree = FileTree::new();
        tree.file("bin/busybox", 0o755, b"#!fake\n".to_vec())
            .unwrap();
        tree.symlink("bin/sh", "busybox").unwrap();
        tree.dir("var/lib/mecvisor").unwrap();
        tree.file("init", 0o755, b"echo hi\n".to_vec()).unwrap();
        tree
    }

    #[test]
    fn refuses_escaping_paths_and_conflicts() {
        let mut tree = sample();
        assert!(tree.file("../etc/passwd", 0o644, vec![]).is_err());
        assert!(tree.file("bin/busybox", 0o755, b"other".to_vec()).is_err());
        assert!(tree.file("bin/sh/x", 0o644, vec![]).is_err());
        assert!(tree
            .file("bin/busybox", 0o755, b"#!fake\n".to_vec())
            .is_ok());
    }

    #[test]
    fn same_tree_same_bytes() {
        assert_eq!(to_cpio_newc(&sample()), to_cpio_newc(&sample()));
        assert_eq!(to_ustar(&sample()).unwrap(), to_ustar(&sample()).unwrap());
    }

    /// The real cpio and tar read what we write (skips when they are missing).
    #[test]
    fn gnu_cpio_and_tar_list_the_archives() {
        let dir = tempfile::tempdir().unwrap();
        let cpio = dir.path().join("a.cpio");
        std::fs::write(&cpio, to_cpio_newc(&sample())).unwrap();
        let tar = dir.path().join("a.tar");
        std::fs::write(&tar, to_ustar(&sample()).unwrap()).unwrap();
        let expected = ["bin", "bin/busybox", "bin/sh", "init", "var", "var/lib"];
        if let Ok(out) = Command::new("cpio").args(["-it", "-F"]).arg(&cpio).output() {
            let listed = String::from_utf8_lossy(&out.stdout);
            for name in expected {
                assert!(listed.lines().any(|l| l == name), "{name} not in {listed}");
            }
        } else {
            eprintln!("skipping cpio check: cpio not installed");
        }
        let out = Command::new("tar").arg("-tvf").arg(&tar).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(listed.contains("bin/sh -> busybox"), "{listed}");
        assert!(
            listed.contains("-rwxr-xr-x root/root         7 1970-01-01"),
            "{listed}"
        );
    }
}
