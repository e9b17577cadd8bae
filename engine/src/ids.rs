//! Identifiers: ULID newtypes with a readable prefix (`run_01J…`, `evt_01J…`) for what the engine
//! creates, and validated names for what users write (flow and step ids).
//!
//! ULIDs sort by creation time, so store keys built from them make time-range scans cheap.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

/// The error for a string that is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {what}: {why}")]
pub struct InvalidId {
    what: &'static str,
    value: String,
    why: &'static str,
}

macro_rules! ulid_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Ulid);

        impl $name {
            /// The prefix shown before the ULID.
            pub const PREFIX: &'static str = $prefix;

            /// The id as text, as a regular expression (for API documents).
            pub const PATTERN: &'static str =
                concat!("^", $prefix, "_[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$");

            /// A new id for the current time.
            pub fn new() -> Self {
                Self(Ulid::new())
            }

            /// The id made of a given ULID.
            pub fn from_ulid(ulid: Ulid) -> Self {
                Self(ulid)
            }

            /// The 16 bytes of the ULID, big-endian, so byte order is time order.
            pub fn to_bytes(&self) -> [u8; 16] {
                self.0.to_bytes()
            }

            /// The id from its 16 bytes.
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Ulid::from_bytes(bytes))
            }

            /// The smallest id of a moment (milliseconds since the epoch; before 1970 counts as
            /// 1970): every id made at or after it sorts at or after this one.
            pub fn first_at(millis: i64) -> Self {
                Self(Ulid::from_parts(millis.max(0) as u64, 0))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", Self::PREFIX, self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let invalid = |why| InvalidId { what: $what, value: s.to_owned(), why };
                let rest = s
                    .strip_prefix(Self::PREFIX)
                    .and_then(|r| r.strip_prefix('_'))
                    .ok_or_else(|| invalid(concat!("expected the prefix `", $prefix, "_`")))?;
                Ulid::from_string(rest).map(Self).map_err(|_| invalid("not a ULID"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

ulid_id!(
    /// One received webhook delivery, manual trigger or other event.
    EventId, "evt", "event id"
);
ulid_id!(
    /// One execution of a flow for one event.
    RunId, "run", "run id"
);
ulid_id!(
    /// One unit of queued work: a step of a run, due at a time.
    ItemId, "itm", "queue item id"
);
ulid_id!(
    /// One entry of a log the store keeps (the audit record, a flow's hook log).
    LogEntryId, "log", "log entry id"
);

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id as text, as a regular expression (for API documents): see
            /// `validate_name`.
            pub const PATTERN: &'static str = "^[A-Za-z][A-Za-z0-9_-]{0,63}$";

            /// The id as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                validate_name(s).map(|()| Self(s.to_owned())).map_err(|why| InvalidId {
                    what: $what,
                    value: s.to_owned(),
                    why,
                })
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A flow's stable id, as written in its file; it appears in the catch URL.
    FlowId, "flow id"
);
name_id!(
    /// A step's id, unique within its flow; templates refer to outputs as `steps.<id>`.
    StepId, "step id"
);

/// Names are 1–64 characters of ASCII letters, digits, `_` and `-`, starting with a letter, so they
/// are safe in URLs, store keys and template paths.
fn validate_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 64 {
        return Err("it must be 1 to 64 characters long");
    }
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("it must start with a letter");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err("use only letters, digits, `_` and `-`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_ids_round_trip_with_prefix() {
        let id = RunId::new();
        let text = id.to_string();
        assert!(text.starts_with("run_"));
        assert_eq!(text.parse::<RunId>().unwrap(), id);
        assert!(text.replace("run_", "evt_").parse::<RunId>().is_err());
        assert_eq!(RunId::from_bytes(id.to_bytes()), id);
        let pattern = regex::Regex::new(RunId::PATTERN).unwrap();
        assert!(pattern.is_match(&text) && !pattern.is_match(&text.replace("run_", "evt_")));
    }

    #[test]
    fn names_are_validated() {
        assert!("plan-change_2".parse::<FlowId>().is_ok());
        let pattern = regex::Regex::new(FlowId::PATTERN).unwrap();
        assert!(pattern.is_match("plan-change_2") && pattern.is_match(&"x".repeat(64)));
        for bad in ["", "2fast", "has space", "dot.ted", &"x".repeat(65)] {
            assert!(!pattern.is_match(bad), "{bad}");
            assert!(bad.parse::<StepId>().is_err(), "{bad:?} accepted");
        }
    }
}
