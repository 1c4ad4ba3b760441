//! Reading the agent's JSON log (`edge-agent run --log-format json`): one
//! object per line, `timestamp` (RFC 3339, UTC) and `fields` (`message`
//! and the event's fields), as tracing-subscriber writes them.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::procs::{tail, wait_for, Proc};

/// An agent's log file read from a mark on.
pub(super) struct AgentLog {
    path: PathBuf,
    /// Where the lines of interest start (bytes).
    mark: u64,
}

/// One log event.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Event {
    /// Nanoseconds since the Unix epoch.
    pub(super) at: i128,
    /// The event's `fields` (with `message`).
    pub(super) fields: Value,
}

impl Event {
    fn message(&self) -> &str {
        self.fields["message"].as_str().unwrap_or_default()
    }

    fn field_str(&self, name: &str) -> Option<&str> {
        self.fields[name].as_str()
    }
}

impl AgentLog {
    /// The log at `path`, marked at its current end.
    pub(super) fn new(path: &Path) -> AgentLog {
        let mut log = AgentLog {
            path: path.to_path_buf(),
            mark: 0,
        };
        log.set_mark();
        log
    }

    /// Only what is logged from now on counts.
    pub(super) fn set_mark(&mut self) {
        self.mark = std::fs::metadata(&self.path).map_or(0, |m| m.len());
    }

    /// The complete JSON lines written since the mark (other lines, e.g. a
    /// panic message, are skipped).
    fn events(&self) -> Result<Vec<Event>> {
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.mark))
            .with_context(|| format!("seeking in {}", self.path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        Ok(String::from_utf8_lossy(&bytes[..complete])
            .lines()
            .filter_map(parse_line)
            .collect())
    }

    /// Waits until the agent logged `new desired state` of `generation` and
    /// after it `container running` of `container`; returns the time
    /// between the two log timestamps.
    pub(super) fn desired_to_running(
        &self,
        generation: u64,
        container: &str,
        timeout: Duration,
        agent: &mut Proc,
    ) -> Result<Duration> {
        let what = format!(
            "the agent to log `container running` of {container} (generation {generation})"
        );
        let result = wait_for(&what, timeout, Duration::from_millis(10), |note| {
            agent.ensure_running()?;
            let events = self.events()?;
            *note = format!("{} events since the apply", events.len());
            Ok(desired_to_running(&events, generation, container))
        });
        result.and_then(|d| d).with_context(|| {
            format!(
                "last lines of {}:\n{}",
                self.path.display(),
                tail(&self.path, 15)
            )
        })
    }

    /// Waits until the agent logged `container removed` of `container`.
    pub(super) fn wait_removed(
        &self,
        container: &str,
        timeout: Duration,
        agent: &mut Proc,
    ) -> Result<()> {
        let what = format!("the agent to log `container removed` of {container}");
        wait_for(&what, timeout, Duration::from_millis(10), |_| {
            agent.ensure_running()?;
            Ok(self
                .events()?
                .iter()
                .any(|e| e.message() == "container removed" && e.field_str("id") == Some(container))
                .then_some(()))
        })
        .with_context(|| {
            format!(
                "last lines of {}:\n{}",
                self.path.display(),
                tail(&self.path, 15)
            )
        })
    }
}

/// The time from `new desired state` of `generation` to the first
/// `container running` of `container` after it, once both were logged.
fn desired_to_running(
    events: &[Event],
    generation: u64,
    container: &str,
) -> Option<Result<Duration>> {
    let received = events.iter().position(|e| {
        e.message() == "new desired state" && e.fields["generation"].as_u64() == Some(generation)
    })?;
    let running = events[received..].iter().find(|e| {
        e.message() == "container running" && e.field_str("container") == Some(container)
    })?;
    Some(nanos_between(events[received].at, running.at))
}

/// `later - earlier` as a duration; fails when the log went backwards.
fn nanos_between(earlier: i128, later: i128) -> Result<Duration> {
    let nanos = later - earlier;
    if nanos < 0 {
        bail!("the agent logged `container running` {nanos} ns before the desired state");
    }
    Ok(Duration::from_nanos(
        u64::try_from(nanos).unwrap_or(u64::MAX),
    ))
}

/// One JSON log line with a readable timestamp.
fn parse_line(line: &str) -> Option<Event> {
    let value: Value = serde_json::from_str(line).ok()?;
    let at = parse_rfc3339(value["timestamp"].as_str()?)?;
    Some(Event {
        at,
        fields: value.get("fields").cloned().unwrap_or(Value::Null),
    })
}

/// Nanoseconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS[.fraction]`
/// followed by `Z` or `±HH:MM`.
fn parse_rfc3339(text: &str) -> Option<i128> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        digits
            .bytes()
            .all(|d| d.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: i128 = 0;
    if b[i] == b'.' {
        let start = i + 1;
        let end = start + b[start..].iter().take_while(|d| d.is_ascii_digit()).count();
        if end == start {
            return None;
        }
        // Nanosecond precision; further digits are dropped.
        let digits = &text[start..end.min(start + 9)];
        nanos = i128::from(digits.parse::<i64>().ok()?) * 10i128.pow(9 - digits.len() as u32);
        i = end;
    }
    let offset_s: i64 = match b.get(i)? {
        b'Z' | b'z' if b.len() == i + 1 => 0,
        sign @ (b'+' | b'-') if b.len() == i + 6 && b[i + 3] == b':' => {
            let minutes = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(i128::from(seconds) * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_epoch_nanoseconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.123456Z"),
            Some(1_709_251_199_123_456_000)
        );
        assert_eq!(
            parse_rfc3339("2024-03-01T01:00:00+01:00"),
            parse_rfc3339("2024-03-01T00:00:00Z")
        );
        assert_eq!(parse_rfc3339("2024-03-01 00:00:00"), None);
        assert_eq!(parse_rfc3339("not a time at all, no"), None);
    }

    #[test]
    fn desired_to_running_is_read_from_json_lines() {
        let lines = [
            "not json",
            r#"{"timestamp":"2024-05-01T10:00:00.100000Z","level":"INFO","fields":{"message":"new desired state","generation":7,"hash":"x"},"target":"edge_agent::reconciler"}"#,
            r#"{"timestamp":"2024-05-01T10:00:00.110000Z","level":"INFO","fields":{"message":"container running","container":"other","pid":1},"target":"edge_agent::containers"}"#,
            r#"{"timestamp":"2024-05-01T10:00:00.142500Z","level":"INFO","fields":{"message":"container running","container":"bench","pid":2},"target":"edge_agent::containers"}"#,
        ];
        let events: Vec<Event> = lines.iter().filter_map(|l| parse_line(l)).collect();
        assert_eq!(events.len(), 3);
        let took = desired_to_running(&events, 7, "bench")
            .expect("both logged")
            .expect("in order");
        assert_eq!(took, Duration::from_micros(42_500));
        assert!(desired_to_running(&events, 8, "bench").is_none());
        assert!(desired_to_running(&events[..2], 7, "bench").is_none());
    }
}
