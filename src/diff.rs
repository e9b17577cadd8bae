//! `hookflow diff`: what would change if the flows on disk were deployed to a running server, like
//! a plan before an apply: flows added and removed, and for changed flows their trigger, settings
//! and steps (added, removed, changed with the fields that differ, reordered).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context;
use hookflow_engine::flow;
use hookflow_engine::model::Revision;
use serde_yaml::Value as Yaml;

use crate::cli::ClientArgs;
use crate::client;

/// A flow as written in a file.
struct Written {
    file: String,
    revision: String,
    doc: Yaml,
}

/// `hookflow diff [PATH…]`: prints the plan.
pub async fn diff(paths: &[PathBuf], server: &ClientArgs) -> anyhow::Result<()> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("flows")]
    } else {
        paths.to_vec()
    };
    let mut disk: BTreeMap<String, Written> = BTreeMap::new();
    for file in flow::flow_files(&paths).map_err(|e| anyhow::anyhow!("{e}"))? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let doc: Yaml = serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not valid YAML", file.display()))?;
        let Some(id) = doc["id"].as_str().map(str::to_owned) else {
            anyhow::bail!("{} has no `id`", file.display());
        };
        let written = Written {
            file: file.display().to_string(),
            revision: Revision::of(&text).to_string(),
            doc,
        };
        disk.insert(id, written);
    }
    let listed = client::get(server, "/api/v1/flows").await?;
    let deployed: BTreeMap<String, String> = listed["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            Some((
                f["id"].as_str()?.to_owned(),
                f["revision"].as_str()?.to_owned(),
            ))
        })
        .collect();

    let (mut added, mut changed, mut removed) = (0, 0, 0);
    let ids: BTreeSet<&String> = disk.keys().chain(deployed.keys()).collect();
    for id in ids {
        match (disk.get(id), deployed.get(id)) {
            (Some(w), None) => {
                added += 1;
                let steps = w.doc["steps"].as_sequence().map_or(0, Vec::len);
                println!("+ {id} ({}, {steps} steps): new", w.file);
            }
            (None, Some(_)) => {
                removed += 1;
                println!("- {id}: deployed, no longer on disk");
            }
            (Some(w), Some(revision)) if *revision != w.revision => {
                changed += 1;
                let detail = client::get(server, &format!("/api/v1/flows/{id}")).await?;
                let source = detail["source"].as_str().unwrap_or_default();
                let running: Yaml = serde_yaml::from_str(source).unwrap_or(Yaml::Null);
                println!("~ {id} ({}): revision {revision} → {}", w.file, w.revision);
                for line in flow_changes(&running, &w.doc) {
                    println!("    {line}");
                }
            }
            _ => {}
        }
    }
    if added + changed + removed == 0 {
        println!("No changes: the server runs the flows on disk.");
    } else {
        println!("\nPlan: {added} to add, {changed} to change, {removed} to remove.");
    }
    Ok(())
}

/// The differences between the running and the written version of a flow, one line each.
fn flow_changes(running: &Yaml, written: &Yaml) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<String> = [running, written]
        .iter()
        .filter_map(|d| d.as_mapping())
        .flat_map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_owned)))
        .filter(|k| k != "steps")
        .collect();
    for key in keys {
        if running[key.as_str()] != written[key.as_str()] {
            out.push(format!("~ {key}"));
        }
    }
    let steps = |doc: &Yaml| -> Vec<(String, Yaml)> {
        doc["steps"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|s| (s["id"].as_str().unwrap_or_default().to_owned(), s.clone()))
            .collect()
    };
    let (before, after) = (steps(running), steps(written));
    let find = |list: &[(String, Yaml)], id: &str| {
        list.iter().find(|(i, _)| i == id).map(|(_, s)| s.clone())
    };
    for (id, step) in &after {
        match find(&before, id) {
            None => out.push(format!("+ step {id} ({})", kind(step))),
            Some(old) if old != *step => {
                let mut fields = Vec::new();
                changed_paths(&old, step, "", &mut fields);
                let shown = fields
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                let more = fields.len().saturating_sub(5);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                out.push(format!("~ step {id} ({}): {shown}{more}", kind(step)));
            }
            Some(_) => {}
        }
    }
    for (id, step) in &before {
        if find(&after, id).is_none() {
            out.push(format!("- step {id} ({})", kind(step)));
        }
    }
    let order = |list: &[(String, Yaml)], other: &[(String, Yaml)]| -> Vec<String> {
        list.iter()
            .filter(|(id, _)| other.iter().any(|(o, _)| o == id))
            .map(|(id, _)| id.clone())
            .collect()
    };
    if order(&before, &after) != order(&after, &before) {
        out.push("~ step order".to_owned());
    }
    out
}

/// A step's kind: its one key besides the common ones.
fn kind(step: &Yaml) -> String {
    const COMMON: [&str; 7] = [
        "id",
        "name",
        "description",
        "needs",
        "timeout",
        "retry",
        "on_error",
    ];
    step.as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.as_str())
        .find(|k| !COMMON.contains(k))
        .unwrap_or("?")
        .to_owned()
}

/// The paths (`http.json.email`, `needs`) where two values differ.
fn changed_paths(a: &Yaml, b: &Yaml, prefix: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Yaml::Mapping(x), Yaml::Mapping(y)) => {
            let keys: BTreeSet<&str> = x
                .keys()
                .chain(y.keys())
                .filter_map(|k| k.as_str())
                .collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                changed_paths(
                    &x.get(key).cloned().unwrap_or(Yaml::Null),
                    &y.get(key).cloned().unwrap_or(Yaml::Null),
                    &path,
                    out,
                );
            }
        }
        _ if a != b => out.push(if prefix.is_empty() {
            "(value)".into()
        } else {
            prefix.to_owned()
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_setting_and_step_changes() {
        let before: Yaml = serde_yaml::from_str(
            "id: f\ntrigger: { webhook: }\nsteps:\n  - { id: a, map: { x: 1, y: 2 } }\n  - { id: b, http: { url: u } }\n  - { id: c, map: {} }\n",
        )
        .unwrap();
        let after: Yaml = serde_yaml::from_str(
            "id: f\ntrigger: { webhook: { dedupe: x } }\nconcurrency: 1\nsteps:\n  - { id: a, map: { x: 1, y: 3 } }\n  - { id: c, map: {} }\n  - { id: d, filter: { value: v, exists: true } }\n",
        )
        .unwrap();
        assert_eq!(
            flow_changes(&before, &after),
            [
                "~ concurrency",
                "~ trigger",
                "~ step a (map): map.y",
                "+ step d (filter)",
                "- step b (http)",
            ]
        );
    }
}
