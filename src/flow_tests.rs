//! `hookflow test`: flow tests kept in git beside the flows. A `FLOW.test.yaml` lists cases: an
//! event (inline or one of the flow's samples), stubbed answers for the steps that would call out,
//! and expectations (the run's status; a step's status, output, the request it would send, its
//! error, the path a switch took). Cases run offline in milliseconds; a failed expectation prints a diff.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use hookflow_engine::authoring::offline::{self, Stub, Trace};
use hookflow_engine::flow::{self, process_env, Flow};
use hookflow_engine::model::{RunStatus, StepStatus};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A flow test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// The flow file, relative to the test file (default: the test file's name without `.test`).
    #[serde(default)]
    flow: Option<PathBuf>,
    /// The cases.
    cases: Vec<Case>,
}

/// One case: an event, stubs, expectations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case shows, in words.
    name: String,
    /// A sample of the flow, by name.
    #[serde(default)]
    sample: Option<String>,
    /// Or the request inline: `body`, and optionally `headers`, `query`, `method`.
    #[serde(default)]
    event: Option<Value>,
    /// Canned answers by step id.
    #[serde(default)]
    stubs: BTreeMap<String, Stub>,
    /// What must hold.
    #[serde(default)]
    expect: Expect,
}

/// What must hold after a case's run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// The run's final status.
    #[serde(default)]
    status: Option<RunStatus>,
    /// Text the run's reason (why it failed or was filtered) contains.
    #[serde(default)]
    reason_contains: Option<String>,
    /// Expectations per step id.
    #[serde(default)]
    steps: BTreeMap<String, StepExpect>,
}

/// What must hold for one step.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepExpect {
    /// Its final status.
    #[serde(default)]
    status: Option<StepStatus>,
    /// Its output, exactly.
    #[serde(default)]
    output: Option<Value>,
    /// Fields its output has (objects: these keys with these values, recursively; lists: these
    /// items among the output's).
    #[serde(default)]
    output_contains: Option<Value>,
    /// The request it would send (its rendered input), exactly.
    #[serde(default)]
    request: Option<Value>,
    /// Fields the request has.
    #[serde(default)]
    request_contains: Option<Value>,
    /// Text its error contains.
    #[serde(default)]
    error_contains: Option<String>,
    /// For a `switch`: the path it took (`none` when it took none).
    #[serde(default)]
    path: Option<String>,
}

/// `hookflow test [PATH…]`: runs every case of every test file; exit code 1 if one fails.
pub async fn run(paths: &[PathBuf]) -> ExitCode {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("flows")]
    } else {
        paths.to_vec()
    };
    let (mut passed, mut failed) = (0, 0);
    for file in test_files(&paths) {
        match run_file(&file).await {
            Ok((p, f)) => {
                passed += p;
                failed += f;
            }
            Err(e) => {
                println!("✘ {}: {e:#}", file.display());
                failed += 1;
            }
        }
    }
    println!("\n{passed} case(s) passed, {failed} failed");
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        if passed + failed == 0 {
            println!("no flow tests found (FLOW.test.yaml beside a flow)");
        }
        ExitCode::FAILURE
    }
}

/// The test files among `paths`: files as given, directories' `*.test.yaml` (not recursive).
fn test_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    name.ends_with(".test.yaml") || name.ends_with(".test.yml")
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    files
}

/// Runs one file's cases, printing each; answers (passed, failed).
async fn run_file(file: &Path) -> anyhow::Result<(usize, usize)> {
    let text = std::fs::read_to_string(file).context("cannot read")?;
    let tests: TestFile = serde_yaml::from_str(&text)?;
    let flow_path = match &tests.flow {
        Some(p) => file.parent().unwrap_or(Path::new(".")).join(p),
        None => {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            file.with_file_name(name.replace(".test.", "."))
        }
    };
    let (mut flows, errors) = flow::load(
        std::slice::from_ref(&flow_path),
        &crate::registry(),
        &process_env,
    );
    if let Some(e) = errors.first() {
        anyhow::bail!("the flow it tests has problems: {e}");
    }
    let flow = flows
        .pop()
        .with_context(|| format!("{} is not a flow file", flow_path.display()))?;
    let (mut passed, mut failed) = (0, 0);
    for case in &tests.cases {
        let started = std::time::Instant::now();
        let problems = match run_case(&flow, &flow_path, case).await {
            Ok(problems) => problems,
            Err(e) => vec![format!("{e:#}")],
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if problems.is_empty() {
            passed += 1;
            println!("✔ {} › {} ({ms:.1} ms)", file.display(), case.name);
        } else {
            failed += 1;
            println!("✘ {} › {}", file.display(), case.name);
            for p in problems {
                println!("{}", indent(&p));
            }
        }
    }
    Ok((passed, failed))
}

/// Runs a case; answers what did not hold.
async fn run_case(flow: &Flow, flow_path: &Path, case: &Case) -> anyhow::Result<Vec<String>> {
    let trigger = match (&case.sample, &case.event) {
        (Some(name), None) => {
            let path =
                crate::samples::dir(flow_path, flow.id.as_str()).join(format!("{name}.json"));
            crate::samples::load(&path)?
        }
        (None, Some(event)) => crate::samples::trigger(event),
        _ => anyhow::bail!("give the case a `sample` or an `event`"),
    };
    for id in case.stubs.keys().chain(case.expect.steps.keys()) {
        anyhow::ensure!(
            flow.steps.iter().any(|s| s.id.as_str() == id),
            "the flow has no step `{id}`"
        );
    }
    let trace = offline::run(flow, trigger, &case.stubs).await;
    Ok(check(&case.expect, &trace))
}

fn check(expect: &Expect, trace: &Trace) -> Vec<String> {
    let mut problems = Vec::new();
    let run = &trace.run;
    if let Some(status) = expect.status {
        if run.status != status {
            let why = run.reason.as_deref().unwrap_or("no reason recorded");
            problems.push(format!(
                "the run is {}, expected {status} ({why})",
                run.status
            ));
        }
    }
    if let Some(text) = &expect.reason_contains {
        let reason = run.reason.as_deref().unwrap_or_default();
        if !reason.contains(text.as_str()) {
            problems.push(format!(
                "the run's reason `{reason}` does not contain `{text}`"
            ));
        }
    }
    for (id, want) in &expect.steps {
        let progress = run.steps.iter().find(|s| s.id.as_str() == id);
        let record = progress.and_then(|p| trace.record(&p.id));
        if let (Some(status), Some(p)) = (want.status, progress) {
            if p.status != status {
                problems.push(format!(
                    "step `{id}` is {:?}, expected {status:?}",
                    p.status
                ));
            }
        }
        let output = record.and_then(|r| r.output.clone()).unwrap_or(Value::Null);
        let input = record.map_or(Value::Null, |r| r.input.clone());
        let comparisons = [
            ("output", &want.output, &output, false),
            ("output", &want.output_contains, &output, true),
            ("request", &want.request, &input, false),
            ("request", &want.request_contains, &input, true),
        ];
        for (what, expected, actual, partial) in comparisons {
            let Some(expected) = expected else { continue };
            let holds = if partial {
                contains(actual, expected)
            } else {
                actual == expected
            };
            if !holds {
                let shown = if partial {
                    project(actual, expected)
                } else {
                    actual.clone()
                };
                let kind = if partial {
                    "does not contain"
                } else {
                    "differs from"
                };
                problems.push(format!(
                    "step `{id}`: the {what} {kind} what is expected:\n{}",
                    diff(expected, &shown)
                ));
            }
        }
        if let (Some(path), Some(p)) = (&want.path, progress) {
            let taken = p.path.as_deref().unwrap_or("none");
            if taken != path {
                problems.push(format!(
                    "step `{id}` took path `{taken}`, expected `{path}`"
                ));
            }
        }
        if let Some(text) = &want.error_contains {
            let message = record
                .and_then(|r| r.error.as_ref())
                .map(|e| e.message.clone())
                .unwrap_or_default();
            if !message.contains(text.as_str()) {
                problems.push(format!(
                    "step `{id}`: its error `{message}` does not contain `{text}`"
                ));
            }
        }
    }
    problems
}

/// Whether `actual` has everything `expected` has: objects by key (recursively), lists as items
/// each contained by some item of `actual`, other values equal.
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| contains(av, v))),
        (Value::Array(a), Value::Array(e)) => {
            e.iter().all(|ev| a.iter().any(|av| contains(av, ev)))
        }
        _ => actual == expected,
    }
}

/// `actual` cut down to the keys `expected` names, so a diff shows only what was asked about.
fn project(actual: &Value, expected: &Value) -> Value {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            let kept: Map<String, Value> = e
                .iter()
                .filter_map(|(k, ev)| a.get(k).map(|av| (k.clone(), project(av, ev))))
                .collect();
            Value::Object(kept)
        }
        _ => actual.clone(),
    }
}

/// A unified diff of the two values' pretty JSON: `-` expected, `+` actual.
fn diff(expected: &Value, actual: &Value) -> String {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    let (e, a) = (pretty(expected), pretty(actual));
    let mut out = String::new();
    let text = similar::TextDiff::from_lines(&e, &a);
    let _ = write!(
        out,
        "{}",
        text.unified_diff()
            .context_radius(3)
            .header("expected", "actual")
    );
    out.trim_end().to_owned()
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn contains_reads_objects_by_key_and_lists_as_items() {
        let actual = json!({ "a": 1, "b": { "c": [1, 2, { "d": 3, "e": 4 }] } });
        assert!(contains(&actual, &json!({ "b": { "c": [{ "d": 3 }, 1] } })));
        assert!(!contains(&actual, &json!({ "b": { "c": [5] } })));
        assert!(!contains(&actual, &json!({ "z": null })));
        assert_eq!(
            project(&actual, &json!({ "b": { "x": 1 } })),
            json!({ "b": {} })
        );
    }
}
