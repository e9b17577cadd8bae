//! Storage between runs (Storage by Zapier, n8n's static data): small JSON values kept by key in a
//! namespace, read and changed by the `storage` step, the API and the CLI.
//!
//! This module is the backend-neutral part: the validated names ([`Namespace`], [`StorageKey`]),
//! the operations ([`StorageOp`]), and [`apply`], the one pure function that says what an
//! operation does to an entry. Every backend reads the entry, calls [`apply`] and writes its
//! answer under a lock of its own (sled: a transaction; PostgreSQL: an advisory lock per key), so
//! the semantics are the same everywhere and an operation is atomic across runs and nodes:
//! concurrent increments and appends lose nothing.
//!
//! Invariants [`apply`] keeps:
//! - An entry whose expiry has passed at `now` counts as absent: reads see nothing, and a write
//!   starts afresh. (Expired entries are deleted by the retention sweeper, `Store::expire_storage`.)
//! - A stored value is at most [`MAX_VALUE_BYTES`] of JSON, and a list at most [`MAX_LIST_ITEMS`]
//!   items: an operation that would exceed either fails and changes nothing.
//! - `set` replaces the expiry (none if not given); `increment` and `append` keep an existing
//!   entry's expiry and give a new entry the one they carry (a fixed window: "per hour").
//!
//! A write may carry an operation key (a step's idempotency key, `{run_id}:{step_id}`): the
//! backend records the answer under it, in the same transaction, for [`APPLIED_KEPT`], and a
//! repeat with that key (an automatic retry, or the step run again after a crash) answers the
//! recorded outcome without applying the operation again. So a step's increment counts once.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::expr::kind_of;
use crate::ids::FlowId;
use crate::model::Timestamp;

/// The longest key, in characters.
pub const MAX_KEY_CHARS: usize = 256;
/// The largest value, in bytes of JSON.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The most items a list may hold.
pub const MAX_LIST_ITEMS: usize = 1000;
/// How long the answer of a write with an operation key is kept to answer its repeats.
pub const APPLIED_KEPT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Why a storage operation was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The namespace is not a valid name.
    #[error(
        "storage namespace `{0}`: use 1 to 64 letters, digits, `_` and `-`, starting with a letter"
    )]
    BadNamespace(String),
    /// The key is empty, too long, or holds control characters.
    #[error("storage key {0}: use 1 to {MAX_KEY_CHARS} characters, no control characters")]
    BadKey(String),
    /// The value would be too large.
    #[error("the value of `{key}` would be {bytes} bytes of JSON; storage keeps at most {MAX_VALUE_BYTES}")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// Its size.
        bytes: usize,
    },
    /// The list would hold too many items.
    #[error("the list `{0}` would hold more than {MAX_LIST_ITEMS} items; give `keep` to drop the oldest")]
    ListTooLong(String),
    /// `increment` found a value that is not a number.
    #[error("cannot increment `{key}`: it holds {found}, not a number")]
    NotANumber {
        /// The key.
        key: String,
        /// What it holds (`a string`, …).
        found: &'static str,
    },
    /// `append` found a value that is not a list.
    #[error("cannot append to `{key}`: it holds {found}, not a list")]
    NotAList {
        /// The key.
        key: String,
        /// What it holds.
        found: &'static str,
    },
    /// The increment would leave the range of numbers kept.
    #[error("incrementing `{0}` overflows")]
    Overflow(String),
}

/// A namespace: a flow's own (its id, the default) or a name flows share. Same rules as flow
/// ids, so a namespace is safe in URLs and store keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Namespace(String);

impl Namespace {
    /// The pattern of a valid namespace (for API documents).
    pub const PATTERN: &'static str = FlowId::PATTERN;

    /// A namespace from its name.
    pub fn new(name: &str) -> Result<Self, StorageError> {
        name.parse::<FlowId>()
            .map(|_| Self(name.to_owned()))
            .map_err(|_| StorageError::BadNamespace(name.to_owned()))
    }
}

/// A key: 1 to [`MAX_KEY_CHARS`] characters, none of them a control character (so `0x00` can end
/// a namespace in a backend's compound key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StorageKey(String);

impl StorageKey {
    /// A key from its text.
    pub fn new(key: &str) -> Result<Self, StorageError> {
        let chars = key.chars().count();
        if chars == 0 || chars > MAX_KEY_CHARS || key.chars().any(char::is_control) {
            let shown: String = key.chars().take(40).collect();
            let why = if chars == 0 {
                "is empty".to_owned()
            } else if chars > MAX_KEY_CHARS {
                format!("`{shown}…` is {chars} characters long")
            } else {
                format!("{shown:?} holds a control character")
            };
            return Err(StorageError::BadKey(why));
        }
        Ok(Self(key.to_owned()))
    }
}

/// What a name checked by its `new` has: `as_str`, `Display`, and conversions from and into
/// `String` (serde goes through them, so a stored or sent name is checked too).
macro_rules! checked_text {
    ($name:ident) => {
        impl $name {
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = StorageError;
            fn try_from(s: String) -> Result<Self, StorageError> {
                Self::new(&s)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> Self {
                name.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_text!(Namespace);
checked_text!(StorageKey);

/// A stored value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The value.
    pub value: Value,
    /// When it stops counting (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// When it was last written.
    pub updated_at: Timestamp,
}

impl Entry {
    /// Whether it still counts at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// One operation on a key.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageOp {
    /// Reads the value.
    Get,
    /// Replaces the value (and its expiry).
    Set {
        /// The new value.
        value: Value,
        /// When it expires (absent: never).
        expires_at: Option<Timestamp>,
    },
    /// Removes the value.
    Delete,
    /// Adds `by` to the number stored (absent counts as 0).
    Increment {
        /// How much (may be negative or fractional).
        by: Number,
        /// The expiry of an entry this creates.
        expires_at: Option<Timestamp>,
    },
    /// Adds `value` at the end of the list stored (absent counts as empty).
    Append {
        /// The new item.
        value: Value,
        /// Keep only the newest this many items.
        keep: Option<usize>,
        /// The expiry of an entry this creates.
        expires_at: Option<Timestamp>,
    },
}

impl StorageOp {
    /// The operation's name, as the step and metrics say it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Set { .. } => "set",
            Self::Delete => "delete",
            Self::Increment { .. } => "increment",
            Self::Append { .. } => "append",
        }
    }

    /// Whether it may change the entry.
    pub fn writes(&self) -> bool {
        !matches!(self, Self::Get)
    }
}

/// One operation on one key, as a backend is asked to apply it.
#[derive(Debug, Clone, Copy)]
pub struct StorageCall<'a> {
    /// The namespace.
    pub namespace: &'a Namespace,
    /// The key.
    pub key: &'a StorageKey,
    /// What to do.
    pub op: &'a StorageOp,
    /// The operation key of a write to apply once (a step's idempotency key), if any.
    pub once: Option<&'a str>,
    /// The time expiries are read against.
    pub now: Timestamp,
}

impl<'a> StorageCall<'a> {
    /// `op` on `key` in `namespace` at `now`, without an operation key.
    pub fn new(
        namespace: &'a Namespace,
        key: &'a StorageKey,
        op: &'a StorageOp,
        now: Timestamp,
    ) -> Self {
        Self {
            namespace,
            key,
            op,
            once: None,
            now,
        }
    }

    /// The same call applied once per operation key `once` (for writes).
    pub fn once(self, once: Option<&'a str>) -> Self {
        Self { once, ..self }
    }
}

/// What a store answers a storage call: the outcome, or why the operation was refused.
pub type StorageAnswer = Result<Applied, StorageError>;

/// What an operation found and left (recorded under its operation key, if it has one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The live entry before the operation.
    pub before: Option<Entry>,
    /// The entry after it (`None`: absent).
    pub after: Option<Entry>,
}

/// What `op` does to the `stored` entry of `key` at `now`. Pure: backends call it under their
/// lock and write `after` when `op` writes.
pub fn apply(
    key: &StorageKey,
    stored: Option<Entry>,
    op: &StorageOp,
    now: Timestamp,
) -> Result<Applied, StorageError> {
    let before = stored.filter(|e| e.is_live(now));
    let kept_expiry = |given: &Option<Timestamp>| match &before {
        Some(entry) => entry.expires_at,
        None => *given,
    };
    let (value, expires_at) = match op {
        StorageOp::Get => {
            return Ok(Applied {
                after: before.clone(),
                before,
            })
        }
        StorageOp::Delete => {
            return Ok(Applied {
                before,
                after: None,
            })
        }
        StorageOp::Set { value, expires_at } => (value.clone(), *expires_at),
        StorageOp::Increment { by, expires_at } => {
            let current = match before.as_ref().map(|e| &e.value) {
                None | Some(Value::Null) => Number::from(0),
                Some(Value::Number(n)) => n.clone(),
                Some(other) => {
                    return Err(StorageError::NotANumber {
                        key: key.to_string(),
                        found: kind_of(other),
                    })
                }
            };
            (
                Value::Number(
                    add(&current, by).ok_or_else(|| StorageError::Overflow(key.to_string()))?,
                ),
                kept_expiry(expires_at),
            )
        }
        StorageOp::Append {
            value,
            keep,
            expires_at,
        } => {
            let mut list = match before.as_ref().map(|e| &e.value) {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items.clone(),
                Some(other) => {
                    return Err(StorageError::NotAList {
                        key: key.to_string(),
                        found: kind_of(other),
                    })
                }
            };
            list.push(value.clone());
            if let Some(keep) = keep {
                let drop = list.len().saturating_sub(*keep);
                list.drain(..drop);
            }
            if list.len() > MAX_LIST_ITEMS {
                return Err(StorageError::ListTooLong(key.to_string()));
            }
            (Value::Array(list), kept_expiry(expires_at))
        }
    };
    let bytes = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
    if bytes > MAX_VALUE_BYTES {
        return Err(StorageError::ValueTooLarge {
            key: key.to_string(),
            bytes,
        });
    }
    Ok(Applied {
        before,
        after: Some(Entry {
            value,
            expires_at,
            updated_at: now,
        }),
    })
}

/// `a + b`: exact for integers, floating point otherwise; `None` if it overflows.
fn add(a: &Number, b: &Number) -> Option<Number> {
    match (a.as_i64(), b.as_i64()) {
        (Some(a), Some(b)) => a.checked_add(b).map(Number::from),
        _ => Number::from_f64(a.as_f64()? + b.as_f64()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> StorageKey {
        StorageKey::new("k").unwrap()
    }

    fn entry(value: Value, expires_at: Option<i64>) -> Entry {
        Entry {
            value,
            expires_at: expires_at.map(Timestamp),
            updated_at: Timestamp(0),
        }
    }

    #[test]
    fn increments_integers_exactly_and_fractions_as_floats() {
        let by = |n: Value| StorageOp::Increment {
            by: serde_json::from_value(n).unwrap(),
            expires_at: None,
        };
        let once = apply(&key(), None, &by(json!(2)), Timestamp(1)).unwrap();
        assert_eq!(once.after.unwrap().value, json!(2));
        let stored = Some(entry(json!(i64::MAX - 1), None));
        assert_eq!(
            apply(&key(), stored.clone(), &by(json!(1)), Timestamp(1))
                .unwrap()
                .after
                .unwrap()
                .value,
            json!(i64::MAX)
        );
        assert_eq!(
            apply(
                &key(),
                Some(entry(json!(i64::MAX), None)),
                &by(json!(1)),
                Timestamp(1)
            ),
            Err(StorageError::Overflow("k".into()))
        );
        let half = apply(
            &key(),
            Some(entry(json!(1), None)),
            &by(json!(0.5)),
            Timestamp(1),
        );
        assert_eq!(half.unwrap().after.unwrap().value, json!(1.5));
        assert!(matches!(
            apply(
                &key(),
                Some(entry(json!("x"), None)),
                &by(json!(1)),
                Timestamp(1)
            ),
            Err(StorageError::NotANumber { found: "text", .. })
        ));
    }

    #[test]
    fn appends_keep_the_newest_within_bounds() {
        let append = |keep| StorageOp::Append {
            value: json!(3),
            keep,
            expires_at: None,
        };
        let stored = Some(entry(json!([1, 2]), None));
        let kept = apply(&key(), stored.clone(), &append(Some(2)), Timestamp(1)).unwrap();
        assert_eq!(kept.after.unwrap().value, json!([2, 3]));
        let full = Some(entry(Value::Array(vec![json!(0); MAX_LIST_ITEMS]), None));
        assert_eq!(
            apply(&key(), full, &append(None), Timestamp(1)),
            Err(StorageError::ListTooLong("k".into()))
        );
        let big = StorageOp::Set {
            value: json!("x".repeat(MAX_VALUE_BYTES)),
            expires_at: None,
        };
        assert!(matches!(
            apply(&key(), None, &big, Timestamp(1)),
            Err(StorageError::ValueTooLarge { .. })
        ));
    }

    #[test]
    fn expired_entries_count_as_absent_and_writes_keep_or_set_expiry() {
        let stored = Some(entry(json!(5), Some(10)));
        let read = |now| apply(&key(), stored.clone(), &StorageOp::Get, Timestamp(now)).unwrap();
        assert_eq!(read(9).before.unwrap().value, json!(5));
        assert_eq!(read(10).before, None);
        let inc = StorageOp::Increment {
            by: 1.into(),
            expires_at: Some(Timestamp(99)),
        };
        let kept = apply(&key(), stored.clone(), &inc, Timestamp(9)).unwrap();
        assert_eq!(kept.after.unwrap().expires_at, Some(Timestamp(10)));
        let fresh = apply(&key(), stored, &inc, Timestamp(10))
            .unwrap()
            .after
            .unwrap();
        assert_eq!(
            (fresh.value, fresh.expires_at),
            (json!(1), Some(Timestamp(99)))
        );
    }

    #[test]
    fn names_and_keys_are_checked() {
        assert!(Namespace::new("shared-counters").is_ok());
        assert!(Namespace::new("has space").is_err());
        assert!(StorageKey::new("customer:a@b.com / 1").is_ok());
        assert!(StorageKey::new(&"é".repeat(MAX_KEY_CHARS)).is_ok());
        for bad in ["", "a\nb", &"é".repeat(MAX_KEY_CHARS + 1)] {
            assert!(StorageKey::new(bad).is_err(), "{bad:?}");
        }
    }
}
