//! Building and reading raw netlink attributes: the parts of nf_tables and tc messages
//! that no crate in the tree decodes (nf_tables objects, HTB and mirred
//! options).

const NLA_TYPE_MASK: u16 = 0x3fff;
/// Flag on a nested attribute's type.
pub const NLA_F_NESTED: u16 = 0x8000;

/// Netlink attributes being built.
#[derive(Default)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    /// Adds an attribute with raw `value`.
    pub fn bytes(mut self, kind: u16, value: &[u8]) -> Attrs {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    /// Adds a NUL-terminated string.
    pub fn string(self, kind: u16, value: &str) -> Attrs {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.bytes(kind, &bytes)
    }

    /// Adds a big-endian u32.
    pub fn be32(self, kind: u16, value: u32) -> Attrs {
        self.bytes(kind, &value.to_be_bytes())
    }

    /// Adds a nested attribute.
    pub fn nest(self, kind: u16, inner: Attrs) -> Attrs {
        self.bytes(kind | NLA_F_NESTED, &inner.0)
    }

    /// The encoded attributes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Why bytes from the kernel could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed netlink message: {0}")]
pub struct Malformed(pub &'static str);

/// Iterates over attributes: (type without flags, value).
pub fn attributes(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, Malformed> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < 4 {
            return Err(Malformed("truncated attribute header"));
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Err(Malformed("attribute length"));
        }
        out.push((kind, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

/// The value of attribute `kind`, if present.
pub fn find(attrs: &[(u16, &[u8])], kind: u16) -> Option<Vec<u8>> {
    attrs
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.to_vec())
}

/// A NUL-terminated string attribute's text.
pub fn text(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}
