//! The one encoding for Rust <-> Rust messages: MessagePack with named fields, so that a
//! field added later is ignored by an older peer rather than shifting every position.

use serde::{de::DeserializeOwned, Serialize};

/// A frame that could not be decoded as the expected message. Peers log and drop these;
/// they never panic on them.
#[derive(Debug, thiserror::Error)]
#[error("malformed frame ({len} bytes): {source}")]
pub struct DecodeError {
    len: usize,
    #[source]
    source: rmp_serde::decode::Error,
}

/// Encodes a message. Encoding our own types cannot fail (no maps with non-string keys,
/// no unrepresentable values), so this returns the bytes directly.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(message).expect("protocol messages always encode")
}

/// Appends a message's encoding to `out`, so that a caller that frames messages (a
/// length, a checksum) writes each one once, into its own buffer.
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, message: &T) {
    rmp_serde::encode::write_named(out, message).expect("protocol messages always encode");
}

/// Decodes a message received from another process.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(frame).map_err(|source| DecodeError {
        len: frame.len(),
        source,
    })
}
