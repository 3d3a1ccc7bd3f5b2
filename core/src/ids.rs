//! The names and counters that travel through the core: [`NodeId`], [`JobId`], [`Generation`]
//! and [`Term`]. Each wraps the string or number it always was and is stored as that
//! (`#[serde(transparent)]`), so records and JSON read the same as before. The wire layer
//! (`holdfast_coordinator::wire`) turns protobuf strings and numbers into these and back.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// A name that identifies one thing of its kind: cheap to compare, sorted as its string, looked
/// up in maps by `&str`, and shown (and debug-printed) as the bare string.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                $name(s.clone())
            }
        }

        impl From<&$name> for $name {
            fn from(s: &$name) -> Self {
                s.clone()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

/// A number that only grows: compared and ordered as the number, shown (and debug-printed) as
/// it.
macro_rules! counter {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The number itself (for the wire and for arithmetic on counts).
            pub const fn get(self) -> u64 {
                self.0
            }

            /// The one after this.
            #[must_use]
            pub const fn next(self) -> Self {
                $name(self.0 + 1)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(n: u64) -> Self {
                $name(n)
            }
        }

        impl From<$name> for u64 {
            fn from(n: $name) -> u64 {
                n.0
            }
        }

        impl PartialEq<u64> for $name {
            fn eq(&self, other: &u64) -> bool {
                self.0 == *other
            }
        }

        impl PartialOrd<u64> for $name {
            fn partial_cmp(&self, other: &u64) -> Option<std::cmp::Ordering> {
                self.0.partial_cmp(other)
            }
        }
    };
}

string_id!(
    /// A node's id: the agent's `node_id`, the registry key.
    NodeId
);

string_id!(
    /// A job's id, the key of the job table (`job-1`, or the operator's own).
    JobId
);

counter!(
    /// A job's launch count: every relaunch of all its ranks runs at the next generation, and
    /// agents refuse commands for an older one.
    Generation
);

counter!(
    /// The coordinator's term: a restarted coordinator (or a new HA leader) takes a higher one,
    /// and agents refuse commands of an older term.
    Term
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ids_are_stored_and_shown_as_their_string() {
        let id = NodeId::from("w-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""w-1""#);
        assert_eq!(serde_json::from_str::<NodeId>(r#""w-1""#).unwrap(), id);
        assert_eq!(id.to_string(), "w-1");
        assert_eq!(format!("{id:?}"), r#""w-1""#);
        assert_eq!(id, "w-1");
        assert_eq!(id.as_str(), "w-1");
    }

    #[test]
    fn maps_keyed_by_id_are_looked_up_by_str() {
        let mut jobs = BTreeMap::new();
        jobs.insert(JobId::from("job-1"), 1);
        assert_eq!(jobs.get("job-1"), Some(&1));
    }

    #[test]
    fn counters_are_stored_and_shown_as_their_number() {
        let g = Generation::from(7);
        assert_eq!(serde_json::to_string(&g).unwrap(), "7");
        assert_eq!(serde_json::from_str::<Generation>("7").unwrap(), g);
        assert_eq!(g.next(), 8);
        assert!(g > 6);
        assert_eq!(format!("{g} {g:?}"), "7 7");
        assert_eq!(u64::from(Term::from(3)), 3);
    }
}
