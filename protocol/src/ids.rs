//! Identifiers. Tasks, functions and endpoints are UUIDs minted by the service; managers
//! name themselves; blocks are named by the agent that submitted them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $mint:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh id.
            pub fn new() -> Self {
                Self($mint)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// One invocation of a function on an endpoint. Time-ordered (UUIDv7: 48 bits of
    /// milliseconds, then 74 random bits), so that the store's index on task ids grows at
    /// its end like the table itself. Random (v4) ids landed all over the index: every
    /// insert dirtied a random page, a deep queue needed the whole index in cache, and
    /// SQLite's page splits there made each commit scan its whole page cache (a split
    /// parks a page at the 1 GiB page number for a moment, and the cache is then
    /// truncated back page by page).
    TaskId,
    Uuid::now_v7()
);
uuid_id!(
    /// A registered function (immutable: re-registering makes a new id).
    FunctionId,
    Uuid::new_v4()
);
uuid_id!(
    /// A registered endpoint.
    EndpointId,
    Uuid::new_v4()
);

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

string_id!(
    /// A manager, named by itself at start (host and pid plus a random suffix).
    ManagerId
);
string_id!(
    /// A block of nodes provisioned as one pilot job; named by the agent at submission
    /// and handed to the pilot's managers in their environment.
    BlockId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_round_trips_through_text() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
        assert!("not-a-uuid".parse::<TaskId>().is_err());
    }

    #[test]
    fn task_ids_minted_later_sort_later_as_text() {
        // The store keys tasks by the text of their id; ids minted in a row (many in the
        // same millisecond) must append to that index, not land anywhere in it.
        let ids: Vec<String> = (0..10_000).map(|_| TaskId::new().to_string()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
