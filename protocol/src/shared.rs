//! Decoding a frame whose task payloads and results share the frame's memory.
//!
//! A frame from the link arrives as one [`Bytes`] buffer. Decoded the ordinary way, every
//! payload is copied out of it into a buffer of its own: for 1 MiB arguments, one more
//! copy of each on its way to a worker. [`decode_shared`] instead makes each payload (and
//! each result) a slice of the frame: the frame's memory is freed once the last task
//! that came in it is gone.
//!
//! A slice keeps the whole frame alive, so only fields of at least [`SHARE_MIN`] bytes
//! share it: a frame of two thousand queued no-op tasks, each holding it by a 20-byte
//! argument, would keep every other field of every task in memory too (a million queued
//! tasks took 990 MiB instead of 756 MiB). Smaller fields are copied.
//!
//! The frame is handed to the decoder of those fields through a thread-local set for the
//! length of one (synchronous) decode. A field decoded without it, or from other input
//! (another format, a frame that is not `Bytes`), is copied as before.

use crate::codec::DecodeError;
use crate::tagged::{decode_message, TaggedMessage};
use bytes::Bytes;
use serde::de::{Deserializer, Error, SeqAccess, Visitor};
use std::cell::RefCell;
use std::fmt;

/// Fields at least this large share the frame; smaller ones are copied.
pub const SHARE_MIN: usize = 4096;

thread_local! {
    static FRAME: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// [`decode_message`], with payloads and results that share `frame`'s memory.
pub fn decode_shared<T: TaggedMessage>(frame: &Bytes) -> Result<T, DecodeError> {
    /// Clears the frame however the decode ends.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            FRAME.with(|current| current.borrow_mut().take());
        }
    }
    FRAME.with(|current| *current.borrow_mut() = Some(frame.clone()));
    let _reset = Reset;
    decode_message(frame)
}

/// The `Bytes` of a field: a slice of the frame being decoded by [`decode_shared`] when
/// the decoder lends the field's bytes from it, else a copy. For
/// `#[serde(deserialize_with = "...")]`.
pub fn bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_byte_buf(SharedBytes)
}

struct SharedBytes;

impl<'de> Visitor<'de> for SharedBytes {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(FRAME.with(|current| match &*current.borrow() {
            Some(frame) if v.len() >= SHARE_MIN && within(frame, v) => frame.slice_ref(v),
            _ => Bytes::copy_from_slice(v),
        }))
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Bytes::from(bytes))
    }
}

/// Whether `part` lies inside `whole`'s memory.
fn within(whole: &Bytes, part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    at >= start && at + part.len() <= start + whole.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::link::ServiceMessage;
    use crate::task::{test_task, TaskSpec};

    fn task(payload: &[u8]) -> TaskSpec {
        test_task(Bytes::copy_from_slice(payload))
    }

    fn inside(frame: &Bytes, part: &Bytes) -> bool {
        within(frame, part)
    }

    #[test]
    fn payloads_decoded_from_a_shared_frame_are_slices_of_it() {
        let sent = ServiceMessage::Tasks {
            tasks: vec![task(&[7; 100_000]), task(&[8; SHARE_MIN])],
        };
        let frame = Bytes::from(encode(&sent));
        let ServiceMessage::Tasks { tasks } = decode_shared(&frame).unwrap() else {
            panic!("not tasks")
        };
        assert_eq!(
            ServiceMessage::Tasks {
                tasks: tasks.clone()
            },
            sent
        );
        assert!(tasks.iter().all(|t| inside(&frame, &t.payload)));
        // The ordinary decode copies, and nothing of the frame is left for it to share.
        let ServiceMessage::Tasks { tasks } = decode::<ServiceMessage>(&frame).unwrap() else {
            panic!("not tasks")
        };
        assert!(tasks.iter().all(|t| !inside(&frame, &t.payload)));
    }

    #[test]
    fn small_payloads_are_copied_so_they_do_not_keep_the_frame() {
        let sent = ServiceMessage::Tasks {
            tasks: vec![task(b"{\"args\":[]}"), task(&[1; SHARE_MIN - 1])],
        };
        let frame = Bytes::from(encode(&sent));
        let ServiceMessage::Tasks { tasks } = decode_shared(&frame).unwrap() else {
            panic!("not tasks")
        };
        assert!(tasks.iter().all(|t| !inside(&frame, &t.payload)));
        assert_eq!(ServiceMessage::Tasks { tasks }, sent);
    }

    #[test]
    fn a_malformed_frame_is_an_error_and_leaves_nothing_behind() {
        let frame = Bytes::from_static(&[0x81, 0xa4, b't', b'y', b'p', b'e', 0xa5]);
        assert!(decode_shared::<ServiceMessage>(&frame).is_err());
        assert!(FRAME.with(|current| current.borrow().is_none()));
    }
}
