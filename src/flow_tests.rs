//! `hookflow test`: flow tests kept in git beside the flows. A `FLOW.test.yaml` lists cases: an
//! event (inline or one of the flow's samples), stubbed answers for the steps that would call out,
//! and expectations (the run's status; a step's status, output, the request it would send, its
//! error, the path a switch took). Cases run offline in milliseconds; a failed expectation prints a diff.
//!
//! A case can also go through the flow's catch hook first (`expect: { hook: … }` or `sign: true`):
//! the signature check, the event-type filter and the dedupe key are decided by the server's own
//! functions ([`hookflow_engine::intake`]), and a case may send several deliveries, so a repeat
//! is a duplicate as it would be on the server. `sign: true` signs the event with the flow's own
//! scheme and secret (given in the test file's `secrets:`).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use hookflow_engine::authoring::offline::{self, Stub, Trace};
use hookflow_engine::flow::{self, process_env, Flow, Trigger};
use hookflow_engine::intake::{self, Verdict};
use hookflow_engine::model::{RunStatus, StepStatus, Timestamp};
use hookflow_engine::verify::SignedRequest;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};

/// A flow test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// The flow file, relative to the test file (default: the test file's name without `.test`).
    #[serde(default)]
    flow: Option<PathBuf>,
    /// Values for the flow's `${env:NAME}` in these tests (test signing secrets), by name; the
    /// environment is read for the others.
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    /// The cases.
    cases: Vec<Case>,
}

/// One case: what it shows, and the deliveries it sends, in order (written inline for one).
#[derive(Debug)]
struct Case {
    /// What the case shows, in words.
    name: String,
    /// The deliveries.
    deliveries: Vec<Delivery>,
}

impl<'de> Deserialize<'de> for Case {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut map = serde_yaml::Mapping::deserialize(d)?;
        let name = map
            .remove("name")
            .ok_or_else(|| D::Error::missing_field("name"))?;
        let name = serde_yaml::from_value(name).map_err(D::Error::custom)?;
        let deliveries = match map.remove("deliveries") {
            Some(_) if !map.is_empty() => {
                return Err(D::Error::custom(
                    "a case with `deliveries` gives each its own `sample`/`event`, `sign`, \
                     `stubs` and `expect`, not the case",
                ))
            }
            Some(list) => {
                let list: Vec<Delivery> = serde_yaml::from_value(list).map_err(D::Error::custom)?;
                if list.is_empty() {
                    return Err(D::Error::custom("`deliveries` lists at least one delivery"));
                }
                list
            }
            None => vec![serde_yaml::from_value(serde_yaml::Value::Mapping(map))
                .map_err(D::Error::custom)?],
        };
        Ok(Case { name, deliveries })
    }
}

/// One request a case sends: an event, stubs, expectations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Delivery {
    /// A sample of the flow, by name.
    #[serde(default)]
    sample: Option<String>,
    /// Or the request inline: `body`, and optionally `headers`, `query`, `method`.
    #[serde(default)]
    event: Option<Value>,
    /// Sign the event with the flow's `verify` scheme and (first) secret; it then goes through
    /// the catch hook.
    #[serde(default)]
    sign: bool,
    /// Canned answers by step id.
    #[serde(default)]
    stubs: BTreeMap<String, Stub>,
    /// What must hold.
    #[serde(default)]
    expect: Expect,
}

/// What the catch hook did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum HookOutcome {
    /// A run was started.
    Queued,
    /// A repeat of an earlier delivery of the case (same dedupe key): no new run.
    Duplicate,
    /// Its type is not in the flow's `events`: no run.
    Ignored,
    /// Its signature does not verify: answered 401, no run.
    Rejected,
}

impl std::fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HookOutcome::Queued => "queued",
            HookOutcome::Duplicate => "duplicate",
            HookOutcome::Ignored => "ignored",
            HookOutcome::Rejected => "rejected",
        })
    }
}

/// What must hold after a case's run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// What the catch hook does with the event (checking it goes through the hook first).
    #[serde(default)]
    hook: Option<HookOutcome>,
    /// The run's final status.
    #[serde(default)]
    status: Option<RunStatus>,
    /// Text the run's reason (why it failed or was filtered) contains, or, when the hook started
    /// no run, its reason (`invalid_signature: …`, `event type … is not in this flow's events`).
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
    let env = |name: &str| {
        tests
            .secrets
            .get(name)
            .cloned()
            .or_else(|| process_env(name))
    };
    let (mut flows, errors) =
        flow::load(std::slice::from_ref(&flow_path), &crate::registry(), &env);
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

/// Runs a case's deliveries in order; answers what did not hold.
async fn run_case(flow: &Flow, flow_path: &Path, case: &Case) -> anyhow::Result<Vec<String>> {
    let mut seen = HashSet::new();
    let mut problems = Vec::new();
    let several = case.deliveries.len() > 1;
    for (n, delivery) in case.deliveries.iter().enumerate() {
        let found = run_delivery(flow, flow_path, delivery, &mut seen)
            .await
            .unwrap_or_else(|e| vec![format!("{e:#}")]);
        problems.extend(found.into_iter().map(|p| match several {
            true => format!("delivery {}: {p}", n + 1),
            false => p,
        }));
    }
    Ok(problems)
}

/// Sends one delivery (through the catch hook when it asks about the hook or is signed; `seen`
/// holds the case's dedupe keys so far); answers what did not hold.
async fn run_delivery(
    flow: &Flow,
    flow_path: &Path,
    delivery: &Delivery,
    seen: &mut HashSet<String>,
) -> anyhow::Result<Vec<String>> {
    let request = match (&delivery.sample, &delivery.event) {
        (Some(name), None) => {
            let path =
                crate::samples::dir(flow_path, flow.id.as_str()).join(format!("{name}.json"));
            crate::samples::read(&path)?
        }
        (None, Some(event)) => event.clone(),
        _ => anyhow::bail!("give the case a `sample` or an `event`"),
    };
    for id in delivery.stubs.keys().chain(delivery.expect.steps.keys()) {
        anyhow::ensure!(
            flow.steps.iter().any(|s| s.id.as_str() == id),
            "the flow has no step `{id}`"
        );
    }
    let expect = &delivery.expect;
    let mut problems = Vec::new();
    let trigger = if delivery.sign || expect.hook.is_some() {
        let hooked = through_hook(flow, request, delivery.sign, seen)?;
        if let Some(hook) = expect.hook.filter(|h| *h != hooked.outcome) {
            problems.push(format!(
                "the hook answered `{}` ({}), expected `{hook}`",
                hooked.outcome, hooked.reason
            ));
        }
        let Some(trigger) = hooked.trigger else {
            if let Some(text) = &expect.reason_contains {
                if !hooked.reason.contains(text.as_str()) {
                    problems.push(format!(
                        "the hook's reason `{}` does not contain `{text}`",
                        hooked.reason
                    ));
                }
            }
            if expect.status.is_some() || !expect.steps.is_empty() {
                problems.push(format!(
                    "the hook started no run (`{}`), but the case expects a run's status or steps",
                    hooked.outcome
                ));
            }
            return Ok(problems);
        };
        trigger
    } else {
        crate::samples::trigger(&request)
    };
    let trace = offline::run(flow, trigger, &delivery.stubs).await;
    problems.extend(check(expect, &trace));
    Ok(problems)
}

/// A delivery as its sender made it.
fn sent<'a>(
    method: &'a str,
    url: &'a str,
    headers: &'a [(String, String)],
    body: &'a [u8],
) -> SignedRequest<'a> {
    SignedRequest {
        method,
        url,
        headers,
        body,
    }
}

/// The URL a flow test's deliveries are signed for and checked against.
const TEST_HOOK_URL: &str = "http://hookflow.test/hooks/catch";

/// What the catch hook did with a delivery: its outcome, why, and the event to run if queued.
struct Hooked {
    outcome: HookOutcome,
    reason: String,
    trigger: Option<Value>,
}

/// Takes a delivery (`{method, headers, query, body}`) as the flow's catch hook does: signs it
/// first when asked, then checks the signature, the event type and the dedupe key (against the
/// case's `seen` keys) with the server's own functions.
fn through_hook(
    flow: &Flow,
    mut request: Value,
    sign: bool,
    seen: &mut HashSet<String>,
) -> anyhow::Result<Hooked> {
    let Trigger::Webhook { verify, .. } = &flow.trigger else {
        anyhow::bail!("`hook` and `sign` are for flows with a `webhook:` trigger");
    };
    anyhow::ensure!(
        request.is_object(),
        "an event is a mapping with `body` (and `headers`, `query`, `method`)"
    );
    let now = Timestamp::now();
    let body = match &request["body"] {
        Value::Null => Vec::new(),
        Value::String(text) => text.clone().into_bytes(),
        other => serde_json::to_vec(other)?,
    };
    let method = request["method"].as_str().unwrap_or("POST").to_owned();
    let url = format!("{TEST_HOOK_URL}/{}/test", flow.id);
    let mut headers: Vec<(String, String)> = request["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| {
            let value = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            (name.to_ascii_lowercase(), value)
        })
        .collect();
    if sign {
        let verify = verify
            .as_ref()
            .context("`sign: true`, but the flow's webhook has no `verify:` to sign for")?;
        let secret = verify.secrets.first().context(
            "`sign: true` needs the flow's signing secret: give the variable its `verify.secret` \
             names in the test file's `secrets:`",
        )?;
        let added = verify
            .verifier
            .sign(&sent(&method, &url, &headers, &body), secret, now)
            .with_context(|| {
                format!(
                    "`sign: true` is not offered for `{}`: give the event its signature headers",
                    verify.provider
                )
            })?;
        headers.retain(|(name, _)| added.iter().all(|(a, _)| a != name));
        headers.extend(added);
    }
    if let Some(verify) = verify {
        if let Err(refusal) =
            intake::check_signature(verify, &sent(&method, &url, &headers, &body), now)
        {
            return Ok(Hooked {
                outcome: HookOutcome::Rejected,
                reason: refusal.to_string(),
                trigger: None,
            });
        }
    }
    request["headers"] = headers.into_iter().map(|(k, v)| (k, json!(v))).collect();
    let mut events = intake::screen(flow, crate::samples::trigger(&request), now);
    anyhow::ensure!(
        events.len() == 1,
        "the event is a batch of {} events: a case sends one event at a time",
        events.len()
    );
    let (event, verdict) = events.remove(0);
    Ok(match verdict {
        Verdict::Ignored(why) => Hooked {
            outcome: HookOutcome::Ignored,
            reason: why,
            trigger: None,
        },
        Verdict::Run(Some(key)) if !seen.insert(key.key.clone()) => Hooked {
            outcome: HookOutcome::Duplicate,
            reason: format!(
                "a repeat of an earlier delivery of this case (dedupe key `{}`)",
                key.key
            ),
            trigger: None,
        },
        Verdict::Run(_) => Hooked {
            outcome: HookOutcome::Queued,
            reason: "a run was started".into(),
            trigger: Some(event),
        },
    })
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
