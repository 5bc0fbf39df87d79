//! Decoding the busiest messages without serde's buffering of tagged enums.
//!
//! The messages are internally tagged enums (`{"type": "tasks", "tasks": [...]}`). serde
//! cannot know where the tag lies in a map, so it first copies the whole message into a
//! tree of its own (every task, every payload) and then decodes the variant from that
//! copy: two passes and two copies of every payload, at every hop. Our encoder always
//! writes the tag first, so [`decode_message`] reads it from the frame's first bytes and
//! decodes the variants that carry tasks and results straight into their fields. Any
//! other variant, or a frame whose tag is not first, takes the ordinary path.

use crate::codec::{decode, DecodeError};
use crate::ids::TaskId;
use crate::interchange::{InterchangeMessage, ManagerMessage};
use crate::link::{AgentMessage, ServiceMessage};
use crate::task::{TaskResult, TaskSpec};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A message whose busiest variants [`decode_message`] decodes directly.
pub trait TaggedMessage: DeserializeOwned {
    /// Decodes the variant named `tag` from the whole frame, if it is one of the busy
    /// ones (the frame's `type` key is ignored as an unknown field).
    fn decode_variant(tag: &str, frame: &[u8]) -> Option<Result<Self, DecodeError>>;
}

/// Decodes a message, taking the direct path for the variants that carry tasks or
/// results. Same result as [`decode`], without its buffering.
pub fn decode_message<T: TaggedMessage>(frame: &[u8]) -> Result<T, DecodeError> {
    match leading_tag(frame).and_then(|tag| T::decode_variant(tag, frame)) {
        Some(decoded) => decoded,
        None => decode(frame),
    }
}

/// The value of the `type` key when it is the first key of the top-level map.
fn leading_tag(frame: &[u8]) -> Option<&str> {
    let mut at = match *frame.first()? {
        0x80..=0x8f => 1,
        0xde => 3,
        0xdf => 5,
        _ => return None,
    };
    let key = read_str(frame, &mut at)?;
    if key != "type" {
        return None;
    }
    read_str(frame, &mut at)
}

/// A MessagePack string at `*at`, moving `*at` past it.
fn read_str<'a>(frame: &'a [u8], at: &mut usize) -> Option<&'a str> {
    let marker = *frame.get(*at)?;
    let (len, header) = match marker {
        0xa0..=0xbf => (usize::from(marker & 0x1f), 1),
        0xd9 => (usize::from(*frame.get(*at + 1)?), 2),
        0xda => (
            usize::from(u16::from_be_bytes(
                frame.get(*at + 1..*at + 3)?.try_into().ok()?,
            )),
            3,
        ),
        _ => return None,
    };
    let start = *at + header;
    let text = std::str::from_utf8(frame.get(start..start + len)?).ok()?;
    *at = start + len;
    Some(text)
}

#[derive(Deserialize)]
struct Tasks {
    tasks: Vec<TaskSpec>,
}

#[derive(Deserialize)]
struct Results {
    results: Vec<TaskResult>,
}

#[derive(Deserialize)]
struct TaskIds {
    task_ids: Vec<TaskId>,
}

/// Decodes the body struct `B` from the frame and builds the variant from it.
fn body<B: DeserializeOwned, T>(
    frame: &[u8],
    variant: impl FnOnce(B) -> T,
) -> Option<Result<T, DecodeError>> {
    Some(decode::<B>(frame).map(variant))
}

impl TaggedMessage for ServiceMessage {
    fn decode_variant(tag: &str, frame: &[u8]) -> Option<Result<Self, DecodeError>> {
        match tag {
            "tasks" => body(frame, |b: Tasks| ServiceMessage::Tasks { tasks: b.tasks }),
            "results-stored" => body(frame, |b: TaskIds| ServiceMessage::ResultsStored {
                task_ids: b.task_ids,
            }),
            _ => None,
        }
    }
}

impl TaggedMessage for AgentMessage {
    fn decode_variant(tag: &str, frame: &[u8]) -> Option<Result<Self, DecodeError>> {
        match tag {
            "results" => body(frame, |b: Results| AgentMessage::Results {
                results: b.results,
            }),
            "tasks-accepted" => body(frame, |b: TaskIds| AgentMessage::TasksAccepted {
                task_ids: b.task_ids,
            }),
            _ => None,
        }
    }
}

impl TaggedMessage for InterchangeMessage {
    fn decode_variant(tag: &str, frame: &[u8]) -> Option<Result<Self, DecodeError>> {
        match tag {
            "tasks" => body(frame, |b: Tasks| InterchangeMessage::Tasks {
                tasks: b.tasks,
            }),
            _ => None,
        }
    }
}

impl TaggedMessage for ManagerMessage {
    fn decode_variant(tag: &str, frame: &[u8]) -> Option<Result<Self, DecodeError>> {
        match tag {
            "results" => body(frame, |b: Results| ManagerMessage::Results {
                results: b.results,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;
    use crate::link::EndpointStatus;
    use crate::task::test_task;
    use bytes::Bytes;

    fn task() -> TaskSpec {
        TaskSpec {
            walltime_ms: Some(5),
            retries: 1,
            ..test_task(vec![b'7'; 70_000])
        }
    }

    fn result() -> TaskResult {
        TaskResult {
            stdout: "out".into(),
            ..TaskResult::success(TaskId::new(), Bytes::from_static(b"[1]"))
        }
    }

    /// Both paths give what the derived decoder gives, for busy and other variants.
    fn same<T: TaggedMessage + serde::Serialize + PartialEq + std::fmt::Debug>(message: T) {
        let frame = encode(&message);
        assert_eq!(decode_message::<T>(&frame).unwrap(), message);
        assert_eq!(decode::<T>(&frame).unwrap(), message);
    }

    #[test]
    fn every_message_decodes_as_the_derived_decoder_does() {
        same(ServiceMessage::Tasks {
            tasks: vec![task(), task()],
        });
        same(ServiceMessage::ResultsStored {
            task_ids: vec![TaskId::new()],
        });
        same(ServiceMessage::Refused {
            reason: "no".into(),
        });
        same(AgentMessage::Results {
            results: vec![result()],
        });
        same(AgentMessage::TasksAccepted {
            task_ids: vec![TaskId::new(), TaskId::new()],
        });
        same(AgentMessage::Status(EndpointStatus::default()));
        same(InterchangeMessage::Tasks {
            tasks: vec![task()],
        });
        same(InterchangeMessage::Heartbeat);
        same(ManagerMessage::Results {
            results: vec![result(), result()],
        });
        same(ManagerMessage::Bye);
    }

    #[test]
    fn the_tag_is_read_from_the_first_key_only() {
        let frame = encode(&ServiceMessage::Tasks { tasks: vec![] });
        assert_eq!(leading_tag(&frame), Some("tasks"));
        // Another first key, or no map: the ordinary path decides.
        #[derive(serde::Serialize)]
        struct Reordered {
            tasks: Vec<TaskSpec>,
            r#type: &'static str,
        }
        let reordered = encode(&Reordered {
            tasks: vec![task()],
            r#type: "tasks",
        });
        assert_eq!(leading_tag(&reordered), None);
        assert!(matches!(
            decode_message::<ServiceMessage>(&reordered),
            Ok(ServiceMessage::Tasks { .. })
        ));
        for garbage in [
            &b""[..],
            b"\x81",
            b"\x81\xa4type",
            b"\x81\xa4type\xa9tas",
            b"\x01",
        ] {
            assert_eq!(leading_tag(garbage), None);
            assert!(decode_message::<ServiceMessage>(garbage).is_err());
        }
        // A busy tag whose body is malformed is an error, not a panic.
        let mut broken = encode(&ServiceMessage::Tasks {
            tasks: vec![task()],
        });
        broken.truncate(broken.len() / 2);
        assert!(decode_message::<ServiceMessage>(&broken).is_err());
    }
}
