//! Container output on disk: one line per record, `<RFC 3339 time>
//! <stdout|stderr> <text>`, in `container.log`, rotated to
//! `container.log.1` .. `.N` when it passes a size bound, so a chatty
//! container can never fill the box's disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// File name of the current log.
pub const LOG_FILE: &str = "container.log";

/// Size bounds of a container's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Rotate when the current file would grow past this.
    pub max_file_bytes: u64,
    /// Rotated files kept besides the current one.
    pub rotated_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_file_bytes: 1 << 20,
            rotated_files: 3,
        }
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Appends lines to a container's log directory, rotating by size.
pub struct LogWriter {
    dir: PathBuf,
    limits: LogLimits,
    file: File,
    size: u64,
    /// Incomplete last line per stream, completed by the next read.
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending) the log in `dir`.
    pub fn open(dir: &Path, limits: LogLimits) -> io::Result<LogWriter> {
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_FILE))?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            limits,
            file,
            size,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Adds bytes read from a stream; complete lines are written, a
    /// trailing partial line waits for the rest (or [`LogWriter::flush_partial`]).
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let slot = stream as usize;
        self.pending[slot].extend_from_slice(bytes);
        while let Some(end) = self.pending[slot].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending[slot].drain(..=end).collect();
            self.record(stream, &line[..line.len() - 1])?;
        }
        // A line longer than a whole file is cut so it cannot defeat rotation.
        let cap = (self.limits.max_file_bytes / 2).max(1024) as usize;
        if self.pending[slot].len() > cap {
            let line = std::mem::take(&mut self.pending[slot]);
            self.record(stream, &line)?;
        }
        Ok(())
    }

    /// Writes out partial lines (at the end of the streams).
    pub fn flush_partial(&mut self) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut self.pending[stream as usize]);
            if !line.is_empty() {
                self.record(stream, &line)?;
            }
        }
        Ok(())
    }

    /// Writes one record of the monitor itself (e.g. the exit status).
    pub fn note(&mut self, text: &str) -> io::Result<()> {
        let mut line = format!("{} mecvisor {text}\n", rfc3339(SystemTime::now())).into_bytes();
        self.rotate_for(line.len() as u64)?;
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        line.clear();
        Ok(())
    }

    fn record(&mut self, stream: Stream, text: &[u8]) -> io::Result<()> {
        let mut line = format!("{} {} ", rfc3339(SystemTime::now()), stream.as_str()).into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        self.rotate_for(line.len() as u64)?;
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate_for(&mut self, incoming: u64) -> io::Result<()> {
        if self.size == 0 || self.size + incoming <= self.limits.max_file_bytes {
            return Ok(());
        }
        let current = self.dir.join(LOG_FILE);
        if self.limits.rotated_files == 0 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.limits.rotated_files).rev() {
                let from = rotated(&self.dir, n);
                if from.exists() {
                    fs::rename(&from, rotated(&self.dir, n + 1))?;
                }
            }
            fs::rename(&current, rotated(&self.dir, 1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&current)?;
        }
        self.size = 0;
        Ok(())
    }
}

fn rotated(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{LOG_FILE}.{n}"))
}

/// The log files of a container, oldest first.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=64)
        .rev()
        .map(|n| rotated(dir, n))
        .filter(|p| p.exists())
        .collect();
    let current = dir.join(LOG_FILE);
    if current.exists() {
        out.push(current);
    }
    out
}

/// The last `tail` lines of a container's logs (all when `None`).
pub fn read(dir: &Path, tail: Option<usize>) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    for file in files(dir) {
        let text = fs::read(&file)?;
        lines.extend(String::from_utf8_lossy(&text).lines().map(str::to_string));
    }
    if let Some(n) = tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    Ok(lines)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time (UTC).
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_times() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn splits_lines_per_stream_and_keeps_partials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LogWriter::open(dir.path(), LogLimits::default()).expect("open");
        w.write(Stream::Stdout, b"hel").expect("write");
        w.write(Stream::Stderr, b"oops\n").expect("write");
        w.write(Stream::Stdout, b"lo\nwor").expect("write");
        w.flush_partial().expect("flush");
        let lines = read(dir.path(), None).expect("read");
        let texts: Vec<&str> = lines
            .iter()
            .map(|l| l.split_once(' ').expect("time").1)
            .collect();
        assert_eq!(texts, ["stderr oops", "stdout hello", "stdout wor"]);
    }

    #[test]
    fn rotation_bounds_the_disk_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = LogLimits {
            max_file_bytes: 4096,
            rotated_files: 2,
        };
        let mut w = LogWriter::open(dir.path(), limits).expect("open");
        for i in 0..2000 {
            w.write(
                Stream::Stdout,
                format!("line {i:05} of output\n").as_bytes(),
            )
            .expect("write");
        }
        let files = files(dir.path());
        assert_eq!(files.len(), 3, "{files:?}");
        let total: u64 = files
            .iter()
            .map(|f| fs::metadata(f).expect("meta").len())
            .sum();
        assert!(total <= 3 * 4096, "{total}");
        let last = read(dir.path(), Some(1)).expect("read");
        assert!(last[0].ends_with("line 01999 of output"), "{last:?}");
        let all = read(dir.path(), None).expect("read");
        let numbers: Vec<u32> = all
            .iter()
            .map(|l| {
                l.split_whitespace()
                    .nth(3)
                    .expect("n")
                    .parse()
                    .expect("number")
            })
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "oldest first, no gaps"
        );
    }
}
