//! Task payloads re-encoded from JSON into Python's pickle format for the worker.
//!
//! The worker would otherwise decode each payload with Python's `json` module, whose
//! scanner visits every character through Python's C API: 1.4 ms for a 1 MiB string
//! argument on this kind of machine, 0.3 ms for a list of 1,000 floats. `pickle.loads`
//! of the same values takes 0.05 ms and 0.02 ms, because a pickle carries lengths and
//! binary numbers. So the manager parses the JSON once, with serde_json (several times
//! faster than Python's scanner), and writes the values as pickle opcodes: protocol 4,
//! data opcodes only, so nothing in the stream can name a class or call anything, and
//! every string goes with its length, so no argument can change the opcodes around it.
//!
//! The pickle must give the worker exactly the values `json.loads` would give. Where
//! serde_json cannot promise that, [`json_to_pickle`] declines and the payload goes as
//! JSON: integers beyond 64 bits and `-0` (serde_json reads them as floats, Python as
//! ints), lone surrogate escapes, nesting deeper than serde_json's limit, and anything
//! that is not JSON at all (the worker then reports the error in Python's words). Floats
//! are parsed correctly rounded (serde_json's `float_roundtrip`), as Python's `float()`
//! parses them, and objects keep their order and their last value for a repeated key.
//!
//! Written out here rather than through a pickle crate: the transcoder must see every
//! number as serde_json read it to decline the ones above, which a serializer behind
//! `serde_transcode` would not let it do, and the dozen opcodes JSON needs are fixed by
//! Python's format (`Lib/pickle.py`, `pickletools`).

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
/// An unsigned 1-byte integer.
const BININT1: u8 = b'K';
/// An unsigned 2-byte little-endian integer.
const BININT2: u8 = b'M';
/// A signed 4-byte little-endian integer.
const BININT: u8 = b'J';
/// A length byte, then that many bytes of a little-endian two's complement integer.
const LONG1: u8 = 0x8a;
/// An 8-byte big-endian IEEE 754 double.
const BINFLOAT: u8 = b'G';
/// A length byte, then that many bytes of UTF-8.
const SHORT_BINUNICODE: u8 = 0x8c;
/// A 4-byte little-endian length, then that many bytes of UTF-8.
const BINUNICODE: u8 = b'X';
/// An 8-byte little-endian length, then that many bytes of UTF-8.
const BINUNICODE8: u8 = 0x8d;
const EMPTY_LIST: u8 = b']';
const EMPTY_DICT: u8 = b'}';
/// Marks where the items for the next `APPENDS` / `SETITEMS` begin on the stack.
const MARK: u8 = b'(';
const APPENDS: u8 = b'e';
const SETITEMS: u8 = b'u';

/// Writes the pickle of the JSON document `json` into `out` (cleared first). Answers
/// false, with `out` unspecified, where the pickle could differ from what `json.loads`
/// gives, or `json` is not a JSON document: the caller then sends the JSON.
pub fn json_to_pickle(json: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    out.reserve(json.len() + 16);
    out.extend_from_slice(&[PROTO, 4]);
    let mut document = serde_json::Deserializer::from_slice(json);
    let transcoded = Value(out)
        .deserialize(&mut document)
        .and_then(|()| document.end());
    if transcoded.is_err() {
        return false;
    }
    out.push(STOP);
    true
}

/// One JSON value to be written as pickle opcodes into the buffer it holds.
struct Value<'o>(&'o mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.push(NONE);
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push(if v { NEWTRUE } else { NEWFALSE });
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        write_int(self.0, i128::from(v));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        write_int(self.0, i128::from(v));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // serde_json reads an integer too large for 64 bits, and `-0`, as a float; Python
        // reads both as ints. A float literal can be integral too ("1e19", "-0.0"), and
        // cannot be told apart here, so both kinds go as JSON.
        let beyond_64_bits = v.fract() == 0.0 && v.abs() >= 9_223_372_036_854_775_808.0;
        if beyond_64_bits || (v == 0.0 && v.is_sign_negative()) {
            return Err(E::custom("an integer Python would read beyond 64 bits"));
        }
        self.0.push(BINFLOAT);
        self.0.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        write_str(self.0, v);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let mark = open(self.0, EMPTY_LIST);
        while items.next_element_seed(Value(self.0))?.is_some() {}
        close(self.0, mark, APPENDS);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let mark = open(self.0, EMPTY_DICT);
        while entries.next_key_seed(Value(self.0))?.is_some() {
            entries.next_value_seed(Value(self.0))?;
        }
        close(self.0, mark, SETITEMS);
        Ok(())
    }
}

/// Starts a list or dict (`empty`) and marks where its items begin; answers the mark's
/// position for [`close`].
fn open(out: &mut Vec<u8>, empty: u8) -> usize {
    out.push(empty);
    out.push(MARK);
    out.len() - 1
}

/// Puts the items written since the mark at `mark` into their container with `add`
/// (`APPENDS`, `SETITEMS`); with none, the mark goes instead.
fn close(out: &mut Vec<u8>, mark: usize, add: u8) {
    if out.len() > mark + 1 {
        out.push(add);
    } else {
        out.truncate(mark);
    }
}

/// An integer in the shortest of Python's binary integer opcodes.
fn write_int(out: &mut Vec<u8>, v: i128) {
    if let Ok(small) = u8::try_from(v) {
        out.extend_from_slice(&[BININT1, small]);
    } else if let Ok(short) = u16::try_from(v) {
        out.push(BININT2);
        out.extend_from_slice(&short.to_le_bytes());
    } else if let Ok(word) = i32::try_from(v) {
        out.push(BININT);
        out.extend_from_slice(&word.to_le_bytes());
    } else {
        // Nine bytes hold every u64 and i64 with its sign.
        out.extend_from_slice(&[LONG1, 9]);
        out.extend_from_slice(&v.to_le_bytes()[..9]);
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if let Ok(short) = u8::try_from(len) {
        out.extend_from_slice(&[SHORT_BINUNICODE, short]);
    } else if let Ok(word) = u32::try_from(len) {
        out.push(BINUNICODE);
        out.extend_from_slice(&word.to_le_bytes());
    } else {
        out.push(BINUNICODE8);
        out.extend_from_slice(&(len as u64).to_le_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests;
