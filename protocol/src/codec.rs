//! CBOR encoding and bounded decoding of every wire message.

use minicbor::{Decode, Encode};

/// Largest message either side accepts; anything bigger is refused unread.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message exceeds [`MAX_MESSAGE_BYTES`].
    #[error("message of {size} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Size received.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The bytes are not a valid CBOR encoding of the expected type.
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    /// A valid value was followed by extra bytes.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes a value as CBOR.
pub fn encode<T: Encode<()>>(value: &T) -> Vec<u8> {
    // Infallible: Vec's writer cannot fail and the derived `Encode` impls of
    // this crate's types raise no custom errors.
    minicbor::to_vec(value).expect("CBOR encoding into a Vec cannot fail")
}

/// Decodes a value from untrusted bytes: size-checked, whole input consumed.
pub fn decode<T>(bytes: &[u8]) -> Result<T, DecodeError>
where
    T: for<'b> Decode<'b, ()>,
{
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let mut decoder = minicbor::Decoder::new(bytes);
    let value = decoder
        .decode::<T>()
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let rest = bytes.len() - decoder.position();
    if rest != 0 {
        return Err(DecodeError::TrailingBytes(rest));
    }
    Ok(value)
}
