//! The line protocol, free of sockets: [`LineReader`] splits a byte stream
//! into request lines (at most [`MAX_LINE`](crate::MAX_LINE) bytes each),
//! [`parse`] turns one line into a [`Request`], and [`Reply`] is what the
//! server answers.

use std::fmt;
use std::io::{self, Read};
use std::time::Duration;

use crate::MAX_LINE;

/// A request from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `HEALTH`: is the guest up, and for how long.
    Health,
    /// `POWEROFF`: sync and power the guest off.
    PowerOff,
}

/// Why a line is refused; the connection is closed after the `ERR` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// More than [`MAX_LINE`](crate::MAX_LINE) bytes without a newline.
    TooLong,
    /// A line that is no known request.
    Unknown,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong => write!(f, "line longer than {MAX_LINE} bytes"),
            LineError::Unknown => f.write_str("unknown request"),
        }
    }
}

/// Parses one request line (without its `\n`): exactly `HEALTH` or
/// `POWEROFF`, nothing around them.
pub fn parse(line: &[u8]) -> Result<Request, LineError> {
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    match line {
        b"HEALTH" => Ok(Request::Health),
        b"POWEROFF" => Ok(Request::PowerOff),
        _ => Err(LineError::Unknown),
    }
}

/// What the server answers, and what it does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Write the line and read the next request.
    Continue(String),
    /// Write the line and close the connection.
    Close(String),
    /// Write the line, then power the guest off.
    PowerOff(String),
}

impl Reply {
    /// The bytes to write, newline included.
    pub fn line(&self) -> &str {
        match self {
            Reply::Continue(line) | Reply::Close(line) | Reply::PowerOff(line) => line,
        }
    }
}

/// The reply to one line read from the host (`Err` for a line that was too
/// long), given the guest's uptime (or why it could not be read).
pub fn respond(line: Result<&[u8], LineError>, uptime: io::Result<Duration>) -> Reply {
    match line.and_then(parse) {
        Ok(Request::Health) => match uptime {
            Ok(uptime) => Reply::Continue(format!("OK {}\n", uptime.as_secs())),
            Err(e) => Reply::Close(format!("ERR uptime unknown: {e}\n")),
        },
        Ok(Request::PowerOff) => Reply::PowerOff("OK\n".to_string()),
        Err(e) => Reply::Close(format!("ERR {e}\n")),
    }
}

/// What [`LineReader::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A whole line, without its `\n`.
    Line(Vec<u8>),
    /// More than [`MAX_LINE`](crate::MAX_LINE) bytes came without a newline.
    TooLong,
    /// The peer closed its side (a partial last line is dropped).
    End,
}

/// Splits what a reader yields into lines, reading no more than it needs
/// to find the next newline or to tell a line is too long.
pub struct LineReader<R> {
    inner: R,
    buffer: Vec<u8>,
}

impl<R: Read> LineReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        LineReader {
            inner,
            buffer: Vec::with_capacity(2 * MAX_LINE),
        }
    }

    /// The wrapped reader (to write replies to the same stream).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next line; errors (a read timeout among them) are the reader's.
    pub fn next_line(&mut self) -> io::Result<Next> {
        let mut chunk = [0u8; 2 * MAX_LINE];
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                if end > MAX_LINE {
                    return Ok(Next::TooLong);
                }
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                return Ok(Next::Line(line));
            }
            if self.buffer.len() > MAX_LINE {
                return Ok(Next::TooLong);
            }
            let n = match self.inner.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(Next::End);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Next> {
        let mut reader = LineReader::new(input);
        let mut out = Vec::new();
        loop {
            let next = reader.next_line().expect("read");
            let more = matches!(next, Next::Line(_));
            out.push(next);
            if !more {
                return out;
            }
        }
    }

    #[test]
    fn requests_are_exact_words() {
        assert_eq!(parse(b"HEALTH"), Ok(Request::Health));
        assert_eq!(parse(b"POWEROFF"), Ok(Request::PowerOff));
        for other in [
            &b""[..],
            b"health",
            b"HEALTH ",
            b" HEALTH",
            b"HEALTH\r",
            b"POWEROFF now",
            b"\xff\xfe",
        ] {
            assert_eq!(parse(other), Err(LineError::Unknown), "{other:?}");
        }
        assert_eq!(parse(&[b'A'; MAX_LINE + 1]), Err(LineError::TooLong));
    }

    #[test]
    fn replies_to_each_line() {
        let up = || Ok(Duration::from_millis(42_900));
        assert_eq!(
            respond(Ok(b"HEALTH"), up()),
            Reply::Continue("OK 42\n".into())
        );
        assert_eq!(
            respond(Ok(b"POWEROFF"), up()),
            Reply::PowerOff("OK\n".into())
        );
        assert_eq!(
            respond(Ok(b"REBOOT"), up()),
            Reply::Close("ERR unknown request\n".into())
        );
        assert_eq!(
            respond(Err(LineError::TooLong), up()),
            Reply::Close("ERR line longer than 64 bytes\n".into())
        );
        let unreadable = respond(Ok(b"HEALTH"), Err(io::Error::other("no /proc")));
        assert_eq!(
            unreadable,
            Reply::Close("ERR uptime unknown: no /proc\n".into())
        );
        assert!(unreadable.line().ends_with('\n'));
    }

    #[test]
    fn splits_lines_and_keeps_what_follows() {
        assert_eq!(
            lines(b"HEALTH\nPOWEROFF\npartial"),
            [
                Next::Line(b"HEALTH".to_vec()),
                Next::Line(b"POWEROFF".to_vec()),
                Next::End
            ]
        );
        assert_eq!(lines(b"\n"), [Next::Line(Vec::new()), Next::End]);
    }

    #[test]
    fn a_line_of_64_bytes_passes_and_65_do_not() {
        let mut exact = vec![b'x'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(lines(&exact)[0], Next::Line(vec![b'x'; MAX_LINE]));
        let mut over = vec![b'x'; MAX_LINE + 1];
        over.push(b'\n');
        assert_eq!(lines(&over), [Next::TooLong]);
        // No newline at all: refused once more than MAX_LINE bytes came,
        // without waiting for the rest.
        assert_eq!(lines(&[b'x'; 10 * MAX_LINE]), [Next::TooLong]);
    }
}
