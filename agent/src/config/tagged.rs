//! A `type:`-tagged section read straight into the struct of its type.
//!
//! serde's internally tagged enums buffer the whole section before choosing the variant,
//! and an error inside a buffered section has lost its line and its key. So the config is
//! read twice: once as a plain YAML value to learn `provider.type`, then into the struct of
//! that type, through this wrapper, which only skips the `type` key it was chosen by. Every
//! other key goes through the YAML deserializer itself and keeps its location.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `P`, read from a mapping that also holds the `type` key that selected `P`.
#[derive(Debug, Default)]
pub(super) struct Tagged<P>(pub(super) P);

impl<'de, P: Deserialize<'de>> Deserialize<'de> for Tagged<P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TaggedVisitor<P>(PhantomData<P>);

        impl<'de, P: Deserialize<'de>> Visitor<'de> for TaggedVisitor<P> {
            type Value = Tagged<P>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping with a `type` key")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                P::deserialize(de::value::MapAccessDeserializer::new(WithoutType(map))).map(Tagged)
            }
        }

        deserializer.deserialize_map(TaggedVisitor(PhantomData))
    }
}

/// A mapping minus its `type` entry.
struct WithoutType<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for WithoutType<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        loop {
            let Some(key) = self.0.next_key::<String>()? else {
                return Ok(None);
            };
            if key == "type" {
                // Already read and checked by the first pass.
                self.0.next_value::<IgnoredAny>()?;
                continue;
            }
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        None
    }
}
