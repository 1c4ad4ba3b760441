//! Entry metadata: mode, owner, mtime.

use std::io::Read;

use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::error::{At, Refusal, UnpackError};

/// What an entry says about its file besides the contents.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    /// Permission bits incl. setuid, setgid and sticky.
    pub(super) mode: Mode,
    /// Numeric owner.
    pub(super) uid: Uid,
    /// Numeric group.
    pub(super) gid: Gid,
    /// Modification time (also used as access time).
    pub(super) mtime: TimeSpec,
}

impl Meta {
    /// Reads the metadata of `entry` (named `name` in errors). A PAX `mtime`
    /// record, when present, gives sub-second precision; PAX `uid`/`gid`
    /// records were already applied by the tar reader.
    pub(super) fn of<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Self, UnpackError> {
        let tar_err = |source| UnpackError::Tar {
            at: At::Entry(name.to_owned()),
            source,
        };
        let header = entry.header();
        let mode = Mode::from_bits_truncate(header.mode().map_err(tar_err)? & 0o7777);
        let uid = id(header.uid().map_err(tar_err)?, name)?;
        let gid = id(header.gid().map_err(tar_err)?, name)?;
        let secs = i64::try_from(header.mtime().map_err(tar_err)?).unwrap_or(i64::MAX);
        let mut mtime = TimeSpec::new(secs, 0);
        if let Some(records) = entry.pax_extensions().map_err(tar_err)? {
            for record in records.flatten() {
                if record.key_bytes() == b"mtime" {
                    if let Some(precise) = parse_pax_time(record.value_bytes()) {
                        mtime = precise;
                    }
                }
            }
        }
        Ok(Self {
            mode,
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            mtime,
        })
    }
}

/// A Linux uid/gid; `u32::MAX` means "unchanged" to `chown` and is refused.
fn id(raw: u64, name: &str) -> Result<u32, UnpackError> {
    u32::try_from(raw)
        .ok()
        .filter(|id| *id != u32::MAX)
        .ok_or_else(|| UnpackError::refused(name, Refusal::IdOutOfRange(raw)))
}

/// Parses a PAX time (`1700000000.123456789`, `-1.5`); `None` if malformed.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut secs: i64 = whole.parse().ok()?;
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut nanos: i64 = digits.parse().ok()?;
    if negative {
        secs = -secs;
        if nanos > 0 {
            secs -= 1;
            nanos = 1_000_000_000 - nanos;
        }
    }
    Some(TimeSpec::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(t("1.1234567899"), Some((1, 123_456_789)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("x"), None);
        assert_eq!(t(""), None);
        assert_eq!(t("99999999999999999999"), None);
    }
}
