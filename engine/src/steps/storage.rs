//! `storage` (Storage by Zapier, n8n's static data): keeps small JSON values between runs, by key,
//! in a namespace — the flow's own by default, or a named one that flows share. An action gets,
//! sets (with an optional expiry), deletes, increments, or appends to a list; each is one atomic
//! store operation (see [`crate::store::storage`]), so concurrent runs lose no increment.
//!
//! The rendered input is the whole request (action, namespace, key, value, …), so a retry repeats
//! exactly it; a write goes to the store under the step's idempotency key, which applies it once
//! (a retry, or the step run again after a crash between the write and its record, gets the
//! recorded outcome back). Offline runs (dry runs, previews, flow tests) use [`StepStorage::scratch`]: storage that
//! starts empty and lasts one run, so they never touch the server's values.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Number, Value};

use super::{Action, BuildContext, ExecContext, Outcome, StepError, StepKind};
use crate::expr::{Templates, TextExpr, ValueExpr};
use crate::flow::spec::HumanDuration;
use crate::model::Timestamp;
use crate::store::storage::{apply, MAX_LIST_ITEMS};
use crate::store::{Entry, Namespace, StorageAnswer, StorageCall, StorageKey, StorageOp, Store};

/// The longest expiry a step may give.
const MAX_EXPIRY: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// What a `storage` step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StorageAction {
    /// Read the value (`default` when the key holds none).
    Get,
    /// Store `value`, replacing what the key held (and its expiry).
    Set,
    /// Remove the key.
    Delete,
    /// Add `by` (default 1) to the number the key holds (none counts as 0), atomically.
    Increment,
    /// Add `value` at the end of the list the key holds (none counts as empty), atomically.
    Append,
}

/// Keep a value between runs: `get`, `set`, `delete`, `increment` or `append`, by key. The output
/// is `{namespace, key, value, existed, expires_at}`: the value after the action (for `get`, the
/// value read), and whether the key held a value before.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    /// What to do.
    pub action: StorageAction,
    /// The key (a template), e.g. `events:{{trigger.body.customer_id}}`: 1 to 256 characters.
    pub key: String,
    /// The namespace: by default the flow's own (its id); name one (letters, digits, `_`, `-`) to
    /// share values between flows.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"))]
    pub namespace: Option<String>,
    /// `set` and `append`: the value (templates and JSONPaths are rendered; a lone `{{expr}}`
    /// keeps its JSON type). At most 64 KiB of JSON once stored.
    #[serde(default)]
    pub value: Option<Value>,
    /// `increment`: how much to add (a number or a template giving one; negative subtracts).
    /// Default 1.
    #[serde(default)]
    pub by: Option<Value>,
    /// `set`, `increment`, `append`: the entry expires this long after it is written (`set`) or
    /// created (`increment`, `append` keep an existing entry's expiry: a fixed window), e.g. `1h`.
    /// At most 365d. Default: never.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub expires_in: Option<HumanDuration>,
    /// `append`: keep only the newest this many items (1 to 1000). Without it, an append to a
    /// full list (1000 items) fails.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: Option<usize>,
    /// `get`: the value to answer when the key holds none.
    #[serde(default)]
    pub default: Option<Value>,
}

impl StepKind for StorageSpec {
    const KIND: &'static str = "storage";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        use StorageAction as A;
        let action = self.action;
        let mut ok = true;
        let mut refuse = |field: &str, applies: &str| {
            cx.error(
                field,
                format!(
                    "`{field}` applies to {applies} only, not to `{}`",
                    name(action)
                ),
            );
            ok = false;
        };
        if self.value.is_some() && !matches!(action, A::Set | A::Append) {
            refuse("value", "`set` and `append`");
        }
        if self.by.is_some() && action != A::Increment {
            refuse("by", "`increment`");
        }
        if self.expires_in.is_some() && matches!(action, A::Get | A::Delete) {
            refuse("expires_in", "`set`, `increment` and `append`");
        }
        if self.keep.is_some() && action != A::Append {
            refuse("keep", "`append`");
        }
        if self.default.is_some() && action != A::Get {
            refuse("default", "`get`");
        }
        if self.value.is_none() && matches!(action, A::Set | A::Append) {
            cx.error("", format!("`{}` needs a `value`", name(action)));
            ok = false;
        }
        if self.keep.is_some_and(|k| k == 0 || k > MAX_LIST_ITEMS) {
            cx.error("keep", format!("keep 1 to {MAX_LIST_ITEMS} items"));
            ok = false;
        }
        if self
            .expires_in
            .is_some_and(|d| d.0 > MAX_EXPIRY || d.0.is_zero())
        {
            cx.error("expires_in", "an entry expires after 1ms to 365d");
            ok = false;
        }
        let namespace = match self.namespace.as_deref().map(Namespace::new) {
            Some(Err(e)) => {
                cx.error("namespace", e.to_string());
                ok = false;
                None
            }
            Some(Ok(n)) => Some(n),
            None => None,
        };
        // Every field is compiled (so every error is recorded) before any failure ends the build.
        let key = cx.text("key", &self.key);
        let value = self.value.map(|v| cx.value("value", &v));
        let by = self.by.map(|v| cx.value("by", &v));
        let default = self.default.map(|v| cx.value("default", &v));
        let step = Storage {
            action,
            namespace,
            key: key?,
            value: compiled(value)?,
            by: compiled(by)?,
            expires_in: self
                .expires_in
                .map(|d| humantime::format_duration(d.0).to_string()),
            keep: self.keep,
            default: compiled(default)?,
        };
        ok.then(|| Arc::new(step) as Arc<dyn Action>)
    }
}

/// An optional field as compiled: `Some(None)` when it was not given, `None` when it failed to
/// compile.
fn compiled<T>(field: Option<Option<T>>) -> Option<Option<T>> {
    field.map_or(Some(None), |compiled| compiled.map(Some))
}

fn name(action: StorageAction) -> &'static str {
    match action {
        StorageAction::Get => "get",
        StorageAction::Set => "set",
        StorageAction::Delete => "delete",
        StorageAction::Increment => "increment",
        StorageAction::Append => "append",
    }
}

#[derive(Debug)]
struct Storage {
    action: StorageAction,
    /// `None`: the flow's own.
    namespace: Option<Namespace>,
    key: TextExpr,
    value: Option<ValueExpr>,
    by: Option<ValueExpr>,
    expires_in: Option<String>,
    keep: Option<usize>,
    default: Option<ValueExpr>,
}

/// The request a `storage` step renders: what `execute` carries out.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    action: StorageAction,
    namespace: Namespace,
    key: StorageKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<Value>,
}

impl Request {
    /// The store operation, with expiries counted from `now`.
    fn op(&self, now: Timestamp) -> Result<StorageOp, StepError> {
        let expires_at = match &self.expires_in {
            None => None,
            Some(text) => Some(now.plus(humantime::parse_duration(text).map_err(|e| {
                StepError::permanent(format!("`expires_in` `{text}` is not a duration: {e}"))
            })?)),
        };
        let value = || self.value.clone().unwrap_or(Value::Null);
        Ok(match self.action {
            StorageAction::Get => StorageOp::Get,
            StorageAction::Delete => StorageOp::Delete,
            StorageAction::Set => StorageOp::Set {
                value: value(),
                expires_at,
            },
            StorageAction::Increment => StorageOp::Increment {
                by: self.by.clone().unwrap_or_else(|| 1.into()),
                expires_at,
            },
            StorageAction::Append => StorageOp::Append {
                value: value(),
                keep: self.keep,
                expires_at,
            },
        })
    }
}

#[async_trait]
impl Action for Storage {
    /// The request: `{action, namespace, key, …}` with the action's rendered fields.
    fn render(&self, t: &Templates, ctx: &Value) -> Result<Value, StepError> {
        let namespace = match &self.namespace {
            Some(n) => n.clone(),
            None => Namespace::new(ctx["run"]["flow"].as_str().unwrap_or_default())
                .map_err(|e| StepError::permanent(e.to_string()))?,
        };
        let key = StorageKey::new(&self.key.render(t, ctx)?)
            .map_err(|e| StepError::permanent(format!("`key` rendered a bad key: {e}")))?;
        let by = match &self.by {
            None => None,
            Some(expr) => Some(number(expr.render(t, ctx)?)?),
        };
        let render = |expr: &Option<ValueExpr>| expr.as_ref().map(|e| e.render(t, ctx)).transpose();
        let request = Request {
            action: self.action,
            namespace,
            key,
            value: render(&self.value)?,
            by,
            expires_in: self.expires_in.clone(),
            keep: self.keep,
            default: render(&self.default)?,
        };
        serde_json::to_value(request)
            .map_err(|e| StepError::permanent(format!("cannot encode the storage request: {e}")))
    }

    async fn execute(&self, input: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        let request: Request = serde_json::from_value(input)
            .map_err(|e| StepError::permanent(format!("not a storage request: {e}")))?;
        let now = cx.clock.now();
        let op = request.op(now)?;
        // Retries and a re-run after a crash repeat the key: the write is applied once.
        let once = op.writes().then_some(cx.idempotency_key.as_str());
        let applied = cx
            .storage
            .apply(StorageCall::new(&request.namespace, &request.key, &op, now).once(once))
            .await
            .map_err(|e| StepError::transient(format!("storage is unavailable: {e}")))?
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let existed = applied.before.is_some();
        let (value, expires_at) = match (request.action, applied.after) {
            (StorageAction::Get, None) => (request.default.unwrap_or(Value::Null), None),
            (_, Some(entry)) => (entry.value, entry.expires_at),
            (_, None) => (Value::Null, None),
        };
        Ok(Outcome::Output(json!({
            "namespace": request.namespace,
            "key": request.key,
            "value": value,
            "existed": existed,
            "expires_at": expires_at.map(Timestamp::to_rfc3339),
        })))
    }
}

/// What became of a store operation, for [`operation_counts`].
const OUTCOMES: [&str; 3] = ["applied", "refused", "unavailable"];

/// The store operations, by name (as [`StorageOp::name`] says them).
const ACTIONS: [&str; 5] = ["get", "set", "delete", "increment", "append"];

/// Operations `storage` steps made on the store since the process started, by action and
/// outcome (one server per process, like the alert counters).
static OPERATIONS: [[AtomicU64; OUTCOMES.len()]; ACTIONS.len()] =
    [const { [const { AtomicU64::new(0) }; OUTCOMES.len()] }; ACTIONS.len()];

/// `(action, outcome, count)` of the operations `storage` steps made on the store (not on
/// scratch storage), for `/metrics`.
pub fn operation_counts() -> Vec<(&'static str, &'static str, u64)> {
    ACTIONS
        .iter()
        .zip(&OPERATIONS)
        .flat_map(|(action, row)| {
            OUTCOMES
                .iter()
                .zip(row)
                .map(|(outcome, n)| (*action, *outcome, n.load(Ordering::Relaxed)))
        })
        .collect()
}

/// `by` as rendered: a number, or text that reads as one.
fn number(value: Value) -> Result<Number, StepError> {
    match value {
        Value::Number(n) => Ok(n),
        Value::String(s) => serde_json::from_str::<Number>(s.trim()).map_err(|_| {
            StepError::permanent(format!("`by` rendered `{s}`, which is not a number"))
        }),
        other => Err(StepError::permanent(format!(
            "`by` rendered {other}, which is not a number"
        ))),
    }
}

/// Where `storage` steps keep their values: the runtime's store, or scratch storage for an
/// offline run.
#[derive(Clone)]
pub enum StepStorage {
    /// The store every node shares.
    Store(Arc<dyn Store>),
    /// Storage that starts empty and lasts as long as this handle (one offline run).
    Scratch(Arc<Mutex<BTreeMap<(Namespace, StorageKey), Entry>>>),
}

impl std::fmt::Debug for StepStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Store(_) => "StepStorage::Store",
            Self::Scratch(_) => "StepStorage::Scratch",
        })
    }
}

impl StepStorage {
    /// Empty storage for one offline run.
    pub fn scratch() -> Self {
        Self::Scratch(Arc::default())
    }

    /// Applies `op` atomically, once per operation key `once` (see [`Store::storage`]; scratch
    /// storage lasts one offline run, which repeats nothing, so it applies every call).
    pub async fn apply(&self, call: StorageCall<'_>) -> crate::store::Result<StorageAnswer> {
        match self {
            Self::Store(store) => {
                let answer = store.storage(call).await;
                let outcome = match &answer {
                    Ok(Ok(_)) => 0,
                    Ok(Err(_)) => 1,
                    Err(_) => 2,
                };
                let action = ACTIONS.iter().position(|a| *a == call.op.name());
                if let Some(action) = action {
                    OPERATIONS[action][outcome].fetch_add(1, Ordering::Relaxed);
                }
                answer
            }
            Self::Scratch(entries) => {
                let mut entries = entries.lock().unwrap_or_else(PoisonError::into_inner);
                let slot = (call.namespace.clone(), call.key.clone());
                let stored = entries.get(&slot).cloned();
                let applied = match apply(call.key, stored, call.op, call.now) {
                    Ok(applied) => applied,
                    Err(refused) => return Ok(Err(refused)),
                };
                match &applied.after {
                    Some(entry) => entries.insert(slot, entry.clone()),
                    None => entries.remove(&slot),
                };
                Ok(Ok(applied))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::parse_flow;
    use crate::steps::Registry;

    fn problems(steps: &str) -> Vec<String> {
        let yaml = format!("id: t\ntrigger: {{ manual: }}\nsteps:\n{steps}");
        match parse_flow("t.yaml", &yaml, &Registry::builtin(), &|_| None) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_misplaced_or_out_of_bounds_field_is_reported_at_its_line() {
        let found = problems(
            "  - id: a\n    storage: { action: get, key: x, by: 2, keep: 3 }\n  - id: b\n    storage: { action: set, key: \"{{nosuch_helper x}}\", value: \"{{other_missing_helper y}}\", namespace: \"a b\", expires_in: 400d }\n",
        );
        for expected in [
            "t.yaml:5:",
            "steps[0].storage.by: `by` applies to `increment` only, not to `get`",
            "steps[0].storage.keep: `keep` applies to `append` only, not to `get`",
            "steps[1].storage.namespace: storage namespace `a b`",
            "steps[1].storage.expires_in: an entry expires after 1ms to 365d",
            "steps[1].storage.key",
            "steps[1].storage.value",
        ] {
            assert!(
                found.iter().any(|p| p.contains(expected)),
                "{expected} in {found:#?}"
            );
        }
        assert!(
            problems("  - id: a\n    storage: { action: append, key: k }\n")[0]
                .contains("`append` needs a `value`")
        );
        assert!(problems("  - id: a\n    storage: { action: increment, key: k, by: \"{{trigger.body.n}}\", expires_in: 1h }\n").is_empty());
    }

    #[tokio::test]
    async fn scratch_storage_applies_operations_like_a_store() {
        let storage = StepStorage::scratch();
        let (ns, key) = (Namespace::new("n").unwrap(), StorageKey::new("k").unwrap());
        let inc = StorageOp::Increment {
            by: 2.into(),
            expires_at: None,
        };
        for expected in [2, 4] {
            let applied = storage
                .apply(StorageCall::new(&ns, &key, &inc, Timestamp(1)))
                .await
                .unwrap();
            assert_eq!(applied.unwrap().after.unwrap().value, json!(expected));
        }
        let deleted = storage
            .apply(StorageCall::new(
                &ns,
                &key,
                &StorageOp::Delete,
                Timestamp(2),
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(deleted.before.map(|e| e.value), Some(json!(4)));
        let read = storage
            .apply(StorageCall::new(&ns, &key, &StorageOp::Get, Timestamp(3)))
            .await;
        assert_eq!(read.unwrap().unwrap().before, None);
    }
}
