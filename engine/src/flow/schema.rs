//! The JSON Schema of the flow format, for editors (autocomplete, inline errors) and `hookflow schema`.
//!
//! Generated from the spec types and each registered step kind's config type, so it cannot drift
//! from what the loader accepts. Doc comments on those types become the descriptions.

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::spec::{FlowSpec, HumanDuration, QueueSpec, RetrySpec};
use crate::steps::Registry;

/// The flow format's JSON Schema (draft 2020-12).
pub fn json_schema(registry: &Registry) -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let retry = generator.subschema_for::<RetrySpec>().to_value();
    let duration = generator.subschema_for::<HumanDuration>().to_value();
    let queue = generator.subschema_for::<QueueSpec>().to_value();
    let kinds: Vec<Value> = registry
        .kinds()
        .map(|(name, entry)| {
            let config = entry.schema(&mut generator).to_value();
            let mut properties = Map::new();
            properties.insert("id".into(), json!({ "type": "string", "description": "The step's id, unique in the flow; later steps read its output as `steps.<id>`.", "pattern": "^[A-Za-z][A-Za-z0-9_-]{0,63}$" }));
            properties.insert("name".into(), json!({ "type": "string", "description": "A human name." }));
            properties.insert("description".into(), json!({ "type": "string", "description": "What the step does." }));
            properties.insert("needs".into(), json!({ "type": "array", "items": { "type": "string" }, "description": "The steps this one waits for (default: the step before it; `[]` starts it with the run)." }));
            properties.insert("retry".into(), retry.clone());
            properties.insert("timeout".into(), duration.clone());
            properties.insert("on_error".into(), json!({ "enum": ["fail", "continue"], "description": "What a failure of this step (after its retries) does: fail the run (default) or go on with `{\"error\": …}` as its output." }));
            properties.insert("queue".into(), queue.clone());
            properties.insert(name.into(), config);
            json!({
                "title": name,
                "type": "object",
                "properties": properties,
                "required": ["id", name],
                "additionalProperties": false,
            })
        })
        .collect();
    let mut root = generator.into_root_schema_for::<FlowSpec>().to_value();
    root["properties"]["steps"]["items"] = json!({ "oneOf": kinds });
    root["properties"]["on_failure"]["items"] = json!({ "oneOf": kinds });
    root["title"] = json!("hookflow flow");
    if let Some(defs) = root.get_mut("$defs").and_then(Value::as_object_mut) {
        defs.remove("Step");
    }
    root
}
