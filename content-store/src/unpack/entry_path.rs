//! Lexical checks of entry paths and link targets, before any filesystem call.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::error::Refusal;

/// A checked entry path: relative to the root, no `.`, `..` or empty
/// components. Empty means the root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EntryPath {
    comps: Vec<OsString>,
}

impl EntryPath {
    /// Checks a path from a tar header (or a hardlink target).
    ///
    /// Leading `/` and `./` are stripped (tar tools strip them too, and a
    /// layer's paths are relative to the image root anyway); `.` and empty
    /// components are dropped; a `..` component anywhere is refused, even
    /// when it would stay inside the root (`a/../b`): no tool writes those.
    pub(super) fn parse(raw: &[u8]) -> Result<Self, Refusal> {
        if raw.contains(&0) {
            return Err(Refusal::NulByte);
        }
        let mut comps = Vec::new();
        for comp in raw.split(|b| *b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => return Err(Refusal::PathLeavesRoot),
                name => comps.push(OsStr::from_bytes(name).to_owned()),
            }
        }
        Ok(Self { comps })
    }

    /// True for the root itself (`/`, `./`, ``).
    pub(super) fn is_root(&self) -> bool {
        self.comps.is_empty()
    }

    /// The last component; `None` for the root.
    pub(super) fn name(&self) -> Option<&OsStr> {
        self.comps.last().map(OsString::as_os_str)
    }

    /// The parent's components (empty for a child of the root).
    pub(super) fn parent_comps(&self) -> &[OsString] {
        self.comps.split_last().map_or(&[], |(_, parent)| parent)
    }

    /// The parent, as a path.
    pub(super) fn parent(&self) -> EntryPath {
        Self {
            comps: self.parent_comps().to_vec(),
        }
    }

    /// This path with `name` appended.
    pub(super) fn join(&self, name: &OsStr) -> EntryPath {
        let mut comps = self.comps.clone();
        comps.push(name.to_owned());
        Self { comps }
    }

    /// The relative path (`a/b/c`; empty for the root).
    pub(super) fn to_path(&self) -> PathBuf {
        self.comps.iter().collect()
    }

    /// This path and each of its ancestors except the root, deepest first.
    pub(super) fn self_and_ancestors(&self) -> impl Iterator<Item = PathBuf> + '_ {
        (1..=self.comps.len())
            .rev()
            .map(|n| self.comps[..n].iter().collect())
    }
}

/// Checks a symlink target for `link` (an entry path).
///
/// Relative targets are resolved lexically from the link's directory and
/// refused if they climb above the root (`a/b -> ../../../etc`). Absolute
/// targets (`bin/sh -> /bin/busybox`) are normal in images and allowed: they
/// are meant to be resolved inside the container's root at run time, never
/// against the host's. Whoever reads files from the unpacked tree on the
/// host must therefore resolve paths beneath the root (e.g. `openat2` with
/// `RESOLVE_IN_ROOT`), which is also what this unpacker does.
pub(super) fn check_symlink_target(link: &EntryPath, target: &[u8]) -> Result<(), Refusal> {
    if target.is_empty() {
        return Err(Refusal::EmptyLinkTarget);
    }
    if target.contains(&0) {
        return Err(Refusal::NulByte);
    }
    if target.starts_with(b"/") {
        return Ok(());
    }
    let mut depth = link.parent_comps().len();
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| Refusal::SymlinkLeavesRoot {
                        target: String::from_utf8_lossy(target).into_owned(),
                    })?;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Checks a hardlink target: a path inside the root (a leading `/` is
/// stripped like for entry names), without `..`.
pub(super) fn parse_hardlink_target(target: &[u8]) -> Result<EntryPath, Refusal> {
    let lossy = || String::from_utf8_lossy(target).into_owned();
    if target.is_empty() {
        return Err(Refusal::EmptyLinkTarget);
    }
    match EntryPath::parse(target) {
        Ok(path) if path.is_root() => Err(Refusal::HardlinkTargetNotFile { target: lossy() }),
        Ok(path) => Ok(path),
        Err(Refusal::PathLeavesRoot) => Err(Refusal::HardlinkLeavesRoot { target: lossy() }),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> EntryPath {
        EntryPath::parse(raw.as_bytes()).expect("valid path")
    }

    #[test]
    fn strips_leading_slash_and_dots() {
        assert_eq!(path("/a/./b//c/").to_path(), PathBuf::from("a/b/c"));
        assert_eq!(path("./a").to_path(), PathBuf::from("a"));
        assert!(path("./").is_root());
        assert!(path("/").is_root());
    }

    #[test]
    fn refuses_dotdot_anywhere() {
        for raw in ["..", "../x", "a/../b", "a/..", "/../etc/passwd"] {
            assert_eq!(
                EntryPath::parse(raw.as_bytes()),
                Err(Refusal::PathLeavesRoot),
                "{raw}"
            );
        }
        assert_eq!(EntryPath::parse(b"a\0b"), Err(Refusal::NulByte));
    }

    #[test]
    fn symlink_targets() {
        let link = path("a/b");
        assert!(check_symlink_target(&link, b"../c").is_ok());
        assert!(check_symlink_target(&link, b"/etc/passwd").is_ok());
        assert!(check_symlink_target(&link, b"./x/../../y").is_ok());
        assert!(check_symlink_target(&link, b"../../etc").is_err());
        assert!(check_symlink_target(&path("x"), b"..").is_err());
        assert!(check_symlink_target(&link, b"").is_err());
    }

    #[test]
    fn hardlink_targets() {
        assert_eq!(
            parse_hardlink_target(b"/etc/passwd").map(|p| p.to_path()),
            Ok(PathBuf::from("etc/passwd"))
        );
        assert!(matches!(
            parse_hardlink_target(b"../x"),
            Err(Refusal::HardlinkLeavesRoot { .. })
        ));
        assert!(parse_hardlink_target(b"/").is_err());
    }
}
