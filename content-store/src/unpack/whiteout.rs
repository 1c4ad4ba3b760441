//! OCI whiteout names (`.wh.<name>`, `.wh..wh..opq`): see the image spec's
//! layer.md, "Whiteouts".

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::error::Refusal;

/// Prefix of every whiteout file name.
const PREFIX: &[u8] = b".wh.";
/// Marks its directory opaque: lower layers' children are hidden.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`), which carries no
/// meaning for the flattened tree.
const META_PREFIX: &[u8] = b".wh..wh.";

/// What an entry's file name means.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Kind<'a> {
    /// An ordinary entry.
    Plain,
    /// `.wh.<name>`: remove `<name>` of the lower layers.
    Whiteout(&'a OsStr),
    /// `.wh..wh..opq`: hide every lower-layer child of the directory.
    Opaque,
    /// AUFS metadata, skipped (as Docker and containerd do).
    AufsMeta,
}

/// Classifies the last component of an entry path.
pub(super) fn classify(name: &OsStr) -> Result<Kind<'_>, Refusal> {
    let bytes = name.as_bytes();
    if bytes == OPAQUE {
        return Ok(Kind::Opaque);
    }
    if bytes.starts_with(META_PREFIX) {
        return Ok(Kind::AufsMeta);
    }
    let Some(target) = bytes.strip_prefix(PREFIX) else {
        return Ok(Kind::Plain);
    };
    if matches!(target, b"" | b"." | b"..") {
        return Err(Refusal::BadWhiteout {
            name: name.to_string_lossy().into_owned(),
        });
    }
    Ok(Kind::Whiteout(OsStr::from_bytes(target)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str) -> Result<Kind<'_>, Refusal> {
        classify(OsStr::new(name))
    }

    #[test]
    fn classifies() {
        assert_eq!(kind("etc"), Ok(Kind::Plain));
        assert_eq!(kind(".wh.foo"), Ok(Kind::Whiteout(OsStr::new("foo"))));
        assert_eq!(
            kind(".wh..bashrc"),
            Ok(Kind::Whiteout(OsStr::new(".bashrc")))
        );
        assert_eq!(kind(".wh..wh..opq"), Ok(Kind::Opaque));
        assert_eq!(kind(".wh..wh.plnk"), Ok(Kind::AufsMeta));
        for bad in [".wh.", ".wh..", ".wh..."] {
            assert!(kind(bad).is_err(), "{bad}");
        }
    }
}
