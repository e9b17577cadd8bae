//! Sample events kept beside a flow, in `samples/FLOW_ID/NAME.json` next to the flow file: what
//! `hookflow capture` writes, and what `hookflow run --sample`, `hookflow validate --samples` and
//! flow tests read. A sample is the request as the catch hook saw it: `method`, `headers`,
//! `query` and `body`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hookflow_engine::model::Timestamp;
use serde_json::{json, Value};

/// The samples directory of the flow with `flow_id` defined in `flow_file`.
pub fn dir(flow_file: &Path, flow_id: &str) -> PathBuf {
    flow_file
        .parent()
        .unwrap_or(Path::new("."))
        .join("samples")
        .join(flow_id)
}

/// The flow's samples, by name, sorted.
pub fn list(flow_file: &Path, flow_id: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir(flow_file, flow_id)) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_owned(), p.clone())))
        .collect();
    found.sort();
    found
}

/// The trigger a sample file stands for (received now).
pub fn load(path: &Path) -> anyhow::Result<Value> {
    Ok(trigger(&read(path)?))
}

/// A sample file as written: the request `{method, headers, query, body}`.
pub fn read(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the sample {}", path.display()))?;
    let sample: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    anyhow::ensure!(
        sample.is_object() && sample.get("body").is_some(),
        "{}: a sample is an object with the request's `body` (and `method`, `headers`, `query`)",
        path.display()
    );
    Ok(sample)
}

/// A run's `trigger` from a request's parts (missing parts empty).
pub fn trigger(request: &Value) -> Value {
    let part = |name: &str, missing: Value| {
        request
            .get(name)
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(missing)
    };
    json!({
        "method": part("method", json!("POST")),
        "headers": part("headers", json!({})),
        "query": part("query", json!({})),
        "body": part("body", Value::Null),
        "received_at": Timestamp::now(),
    })
}
