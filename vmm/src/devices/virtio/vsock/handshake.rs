//! The line a host process writes first on a connection to the device's
//! Unix socket to reach a guest port: exactly `CONNECT <port>\n`, the
//! port in decimal (a u32), within [`MAX_LINE`] bytes. Anything else
//! closes the connection.

/// Longest handshake line, newline included.
pub(super) const MAX_LINE: usize = 32;

const PREFIX: &[u8] = b"CONNECT ";

/// What the bytes read so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Line {
    /// A good line so far, without its end.
    Incomplete,
    /// A good line of `len` bytes (newline included) for guest `port`.
    Connect {
        /// The guest port.
        port: u32,
        /// Bytes of the line.
        len: usize,
    },
    /// Not a handshake line.
    Malformed,
}

/// Parses the first bytes of a connection.
pub(super) fn parse(bytes: &[u8]) -> Line {
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        let prefix_so_far = bytes.len().min(PREFIX.len());
        let digits_so_far = bytes.get(PREFIX.len()..).unwrap_or_default();
        return if bytes.len() >= MAX_LINE
            || bytes[..prefix_so_far] != PREFIX[..prefix_so_far]
            || !digits_so_far.iter().all(u8::is_ascii_digit)
        {
            Line::Malformed
        } else {
            Line::Incomplete
        };
    };
    if end >= MAX_LINE {
        return Line::Malformed;
    }
    let Some(digits) = bytes[..end].strip_prefix(PREFIX) else {
        return Line::Malformed;
    };
    let port = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(digits).ok()?.parse::<u32>().ok())
        .flatten();
    match port {
        Some(port) => Line::Connect { port, len: end + 1 },
        None => Line::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_handshake_lines() {
        assert_eq!(
            parse(b"CONNECT 1024\n"),
            Line::Connect {
                port: 1024,
                len: 13
            }
        );
        assert_eq!(
            parse(b"CONNECT 4294967295\nrest"),
            Line::Connect {
                port: u32::MAX,
                len: 19
            }
        );
        for partial in [&b""[..], b"CONN", b"CONNECT ", b"CONNECT 12"] {
            assert_eq!(parse(partial), Line::Incomplete, "{partial:?}");
        }
        for bad in [
            &b"connect 1\n"[..],
            b"CONNECT\n",
            b"CONNECT \n",
            b"CONNECT 4294967296\n",
            b"CONNECT -1\n",
            b"CONNECT 1 \n",
            b"CONNECT 1\r\n",
            b"CONNECTX",
            b"CONNECT 12a",
            &[b'9'; 40],
            b"CONNECT 000000000000000000000001\n",
        ] {
            assert_eq!(parse(bad), Line::Malformed, "{bad:?}");
        }
    }
}
