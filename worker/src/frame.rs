//! The frames of the manager<->worker pipes: `u32 header_len | u32 body_len` (big-endian),
//! a UTF-8 JSON header, then a raw body.
//!
//! Lengths are checked against limits before anything is allocated, and large bodies are
//! read in steps, so garbage on the pipe costs an error, not a huge allocation.

use std::io::{self, Read};

/// Length of the fixed prefix that precedes every frame.
pub const PREFIX_LEN: usize = 8;

/// The largest header either side accepts (16 MiB). Headers carry captured stdout and
/// stderr, which the worker caps at 1 MiB each, so a larger one means a desynchronised
/// stream.
pub const MAX_HEADER_LEN: u32 = 16 << 20;

/// Bodies up to this size are read into a buffer allocated at once; larger ones grow as
/// their bytes actually arrive.
const EAGER_BODY_LEN: usize = 1 << 20;

/// Why a frame could not be encoded or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame header of {len} bytes is over the limit of {limit} bytes")]
    HeaderTooLarge { len: u64, limit: u64 },
    #[error("frame body of {len} bytes is over the limit of {limit} bytes")]
    BodyTooLarge { len: u64, limit: u64 },
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("reading a frame: {0}")]
    Io(#[from] io::Error),
}

/// The lengths a frame announces in its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramePrefix {
    pub header_len: u32,
    pub body_len: u32,
}

/// One whole frame as read from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The JSON header, undecoded.
    pub header: Vec<u8>,
    pub body: Vec<u8>,
}

/// Appends one frame to `out`: the prefix, `header`, then the concatenation of `body`.
///
/// The body comes in parts so that a task's source and payload need not be joined first.
pub fn encode_frame_into(
    out: &mut Vec<u8>,
    header: &[u8],
    body: &[&[u8]],
) -> Result<(), FrameError> {
    let header_len = header.len() as u64;
    if header_len > u64::from(MAX_HEADER_LEN) {
        return Err(FrameError::HeaderTooLarge {
            len: header_len,
            limit: MAX_HEADER_LEN.into(),
        });
    }
    let body_len: u64 = body.iter().map(|part| part.len() as u64).sum();
    if body_len > u64::from(u32::MAX) {
        return Err(FrameError::BodyTooLarge {
            len: body_len,
            limit: u32::MAX.into(),
        });
    }
    out.reserve(PREFIX_LEN + header.len() + body_len as usize);
    out.extend_from_slice(&(header_len as u32).to_be_bytes());
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    out.extend_from_slice(header);
    for part in body {
        out.extend_from_slice(part);
    }
    Ok(())
}

/// One frame as a new buffer; see [`encode_frame_into`].
pub fn encode_frame(header: &[u8], body: &[&[u8]]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_frame_into(&mut out, header, body)?;
    Ok(out)
}

/// Reads a frame prefix and checks the header length. `Ok(None)` is a clean end of the
/// stream (no byte of a new frame); an end after some of its bytes is [`FrameError::Truncated`].
pub fn read_prefix<R: Read>(reader: &mut R) -> Result<Option<FramePrefix>, FrameError> {
    let mut prefix = [0u8; PREFIX_LEN];
    let mut filled = 0;
    while filled < PREFIX_LEN {
        match reader.read(&mut prefix[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let header_len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let body_len = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if header_len > MAX_HEADER_LEN {
        return Err(FrameError::HeaderTooLarge {
            len: header_len.into(),
            limit: MAX_HEADER_LEN.into(),
        });
    }
    Ok(Some(FramePrefix {
        header_len,
        body_len,
    }))
}

/// Reads exactly `len` bytes. Memory grows with the bytes that arrive, so a bogus length
/// followed by an early end of stream allocates little.
pub fn read_exact_vec<R: Read>(reader: &mut R, len: usize) -> Result<Vec<u8>, FrameError> {
    if len <= EAGER_BODY_LEN {
        let mut buf = vec![0u8; len];
        reader.read_exact(&mut buf).map_err(truncated_at_eof)?;
        return Ok(buf);
    }
    let mut buf = Vec::with_capacity(EAGER_BODY_LEN);
    reader.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(FrameError::Truncated);
    }
    Ok(buf)
}

/// Reads and throws away `len` bytes: the body of a frame that is over its limit, so the
/// stream stays in step.
pub fn skip_bytes<R: Read>(reader: &mut R, len: u64) -> Result<(), FrameError> {
    let skipped = io::copy(&mut reader.take(len), &mut io::sink())?;
    if skipped != len {
        return Err(FrameError::Truncated);
    }
    Ok(())
}

/// Reads one whole frame whose body is at most `max_body` bytes; `Ok(None)` at a clean
/// end of the stream. A body over the limit is an error and is left unread.
pub fn read_frame<R: Read>(reader: &mut R, max_body: u32) -> Result<Option<Frame>, FrameError> {
    let Some(prefix) = read_prefix(reader)? else {
        return Ok(None);
    };
    if prefix.body_len > max_body {
        return Err(FrameError::BodyTooLarge {
            len: prefix.body_len.into(),
            limit: max_body.into(),
        });
    }
    let header = read_exact_vec(reader, prefix.header_len as usize)?;
    let body = read_exact_vec(reader, prefix.body_len as usize)?;
    Ok(Some(Frame { header, body }))
}

fn truncated_at_eof(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips() {
        let bytes = encode_frame(br#"{"op":"task"}"#, &[b"def f(): pass\n", b"{}"]).unwrap();
        assert_eq!(&bytes[..8], &[0, 0, 0, 13, 0, 0, 0, 16]);
        let frame = read_frame(&mut &bytes[..], 1024).unwrap().unwrap();
        assert_eq!(frame.header, br#"{"op":"task"}"#);
        assert_eq!(frame.body, b"def f(): pass\n{}");
    }

    #[test]
    fn frames_follow_one_another_and_end_cleanly() {
        let mut bytes = encode_frame(b"{}", &[]).unwrap();
        encode_frame_into(&mut bytes, b"[1]", &[b"xy"]).unwrap();
        let mut reader = &bytes[..];
        assert_eq!(read_frame(&mut reader, 10).unwrap().unwrap().header, b"{}");
        let second = read_frame(&mut reader, 10).unwrap().unwrap();
        assert_eq!(
            (second.header, second.body),
            (b"[1]".to_vec(), b"xy".to_vec())
        );
        assert!(read_frame(&mut reader, 10).unwrap().is_none());
    }

    #[test]
    fn an_end_inside_a_frame_is_truncated() {
        let bytes = encode_frame(b"{}", &[b"body"]).unwrap();
        for cut in 1..bytes.len() {
            let err = read_frame(&mut &bytes[..cut], 10).unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn a_garbage_header_length_is_refused_before_allocating() {
        let garbage = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, b'x'];
        let err = read_frame(&mut &garbage[..], 10).unwrap_err();
        assert!(matches!(
            err,
            FrameError::HeaderTooLarge {
                len: 4294967295,
                ..
            }
        ));
        assert!(err.to_string().contains("over the limit of 16777216 bytes"));
    }

    #[test]
    fn a_body_over_the_limit_is_refused_and_left_unread() {
        let bytes = encode_frame(b"{}", &[&[7u8; 100]]).unwrap();
        let mut reader = &bytes[..];
        let err = read_frame(&mut reader, 99).unwrap_err();
        assert_eq!(
            err.to_string(),
            "frame body of 100 bytes is over the limit of 99 bytes"
        );
        assert_eq!(reader.len(), 102);
    }

    #[test]
    fn a_huge_announced_body_that_never_arrives_is_truncated() {
        let mut bytes = vec![0, 0, 0, 2, 0x7f, 0xff, 0xff, 0xff];
        bytes.extend_from_slice(b"{}short");
        let err = read_frame(&mut &bytes[..], u32::MAX).unwrap_err();
        assert!(matches!(err, FrameError::Truncated));
    }

    #[test]
    fn encoding_refuses_a_header_over_the_limit() {
        let header = vec![b' '; MAX_HEADER_LEN as usize + 1];
        assert!(matches!(
            encode_frame(&header, &[]),
            Err(FrameError::HeaderTooLarge { .. })
        ));
    }

    #[test]
    fn skipping_keeps_the_stream_in_step() {
        let mut bytes = vec![1u8; 5];
        bytes.extend(encode_frame(b"{}", &[]).unwrap());
        let mut reader = &bytes[..];
        skip_bytes(&mut reader, 5).unwrap();
        assert_eq!(read_frame(&mut reader, 0).unwrap().unwrap().header, b"{}");
        assert!(matches!(
            skip_bytes(&mut reader, 1),
            Err(FrameError::Truncated)
        ));
    }
}
