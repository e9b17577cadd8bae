//! Validates a flow file into a runtime [`Flow`], collecting every problem with its position.
//!
//! Order: parse the text into [`FlowSpec`] (only YAML that does not parse stops here; a key that
//! does not have its shape is reported and left out); then check the id, the trigger, and each
//! step on its own (id, kind through the registry, the kind's config, `needs`), so one bad step
//! does not hide the problems of another; then the graph (unknown `needs`, cycles). A step that
//! cannot be built still claims its id, so a duplicate of it is reported and `needs` naming it is
//! not.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::position::{split_serde_yaml_error, Position, PositionIndex};
use super::spec::{
    FlowSpec, Missed, StepList, StepSpec, TriggerSpec, VerifySpec, COMMON_STEP_KEYS,
};
use super::{
    env, Dedupe, EnvLookup, Flow, FlowError, Retention, Route, Step, StepQueue, Trigger, Verify,
};
use crate::expr::Compiler;
use crate::ids::{FlowId, StepId};
use crate::model::Revision;
use crate::runtime::retry::RetryPolicy;
use crate::schedule::Schedule;
use crate::steps::{join_path, BuildContext, Path, Registry};

/// The default time one step attempt may take.
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a step attempt may take: well under the runtime's lease (15 min), so a slow step is
/// never claimed twice.
const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The default time `respond: result` waits.
const DEFAULT_RESPOND_TIMEOUT: Duration = Duration::from_secs(10);
/// How far a signed timestamp may be from now by default (Stripe's and Slack's advice).
const DEFAULT_SIGNATURE_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// The default time a dedupe key counts: providers retry deliveries for up to three days.
const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Collects located problems for one file.
struct Problems<'a> {
    file: &'a str,
    index: PositionIndex,
    errors: Vec<FlowError>,
    /// What is allowed but surely not meant (the flow still loads).
    warnings: Vec<FlowError>,
}

impl Problems<'_> {
    fn at(&mut self, path: &str, message: impl Into<String>) {
        let Position { line, col } = self.index.locate(path);
        self.push(path, line, col, message.into());
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        let Position { line, col } = self.index.locate(path);
        self.warnings.push(FlowError {
            file: self.file.to_owned(),
            line,
            col,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// Reports a value that does not have its shape, in a flow author's words: an unknown field
    /// at its own key, with the closest known name.
    fn shape(&mut self, path: &str, message: &str) {
        let message = strip_location(message);
        let Some(name) = unknown_field(&message) else {
            self.at(path, in_words(path, &message));
            return;
        };
        // serde names either the map or the unknown key itself.
        let owner = path
            .strip_suffix(name)
            .filter(|p| p.is_empty() || p.ends_with('.'))
            .map_or(path, |p| p.trim_end_matches('.'));
        let own = join_path(owner, name);
        let at = match self.index.key(&own) {
            Some(_) => own,
            None => self
                .index
                .find_key_under(owner, name)
                .unwrap_or_else(|| owner.to_owned()),
        };
        self.at(&at, in_words(owner, &message));
    }

    fn push(&mut self, path: &str, line: usize, col: usize, message: String) {
        let file = self.file.to_owned();
        self.errors.push(FlowError {
            file,
            line,
            col,
            path: path.to_owned(),
            message,
        });
    }
}

/// Parses and validates one flow file's text. `file` names it in errors.
pub fn parse_flow(
    file: &str,
    text: &str,
    registry: &Registry,
    env: EnvLookup<'_>,
) -> Result<Flow, Vec<FlowError>> {
    // serde_yaml misreads a leading byte-order mark; editors on Windows add one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut problems = Problems {
        file,
        index: PositionIndex::new(text),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let spec: FlowSpec = match serde_yaml::from_str(text) {
        Ok(spec) => spec,
        Err(e) => {
            let (path, pos, message) = split_serde_yaml_error(&e);
            let pos = pos.unwrap_or_else(|| problems.index.locate(&path));
            problems.push(&path, pos.line, pos.col, message);
            return Err(problems.errors);
        }
    };

    for problem in &spec.problems {
        problems.shape(&problem.path, &problem.message);
    }
    let id = spec.id.as_deref().and_then(|id| {
        id.parse::<FlowId>()
            .map_err(|e| problems.at("id", e.to_string()))
            .ok()
    });
    let mut compiler = Compiler::new();
    let mut secrets = Vec::new();
    let trigger = match spec.trigger {
        // Not read (reported above): the steps are still checked.
        None => Trigger::Manual,
        Some(TriggerSpec {
            webhook: Some(w),
            manual: None,
            schedule: None,
        }) => {
            let dedupe = w.dedupe.and_then(|key| {
                let key = compiler
                    .text(&key)
                    .map_err(|e| problems.at("trigger.webhook.dedupe", e.message))
                    .ok()?;
                let window = w.dedupe_window.map_or(DEFAULT_DEDUPE_WINDOW, |d| d.0);
                Some(Dedupe { key, window })
            });
            let verify = w
                .verify
                .and_then(|v| build_verify(v, registry, env, &mut secrets, &mut problems));
            let rate_limit = w.rate_limit.as_deref().and_then(|text| {
                parse_rate(text)
                    .map_err(|e| problems.at("trigger.webhook.rate_limit", e))
                    .ok()
            });
            Trigger::Webhook {
                respond: w.respond,
                respond_timeout: w.respond_timeout.map_or(DEFAULT_RESPOND_TIMEOUT, |d| d.0),
                dedupe,
                verify,
                events: w.events,
                rate_limit,
            }
        }
        Some(TriggerSpec {
            webhook: None,
            manual: Some(_),
            schedule: None,
        }) => Trigger::Manual,
        Some(TriggerSpec {
            webhook: None,
            manual: None,
            schedule: Some(s),
        }) => match Schedule::parse(&s.cron, s.timezone.as_deref()) {
            Ok(mut schedule) => {
                schedule.jitter = s.jitter.map_or(Duration::ZERO, |d| d.0);
                schedule.missed = match s.missed {
                    Missed::Skip => crate::schedule::Missed::Skip,
                    Missed::CatchUp => {
                        crate::schedule::Missed::CatchUp(s.catch_up_max.unwrap_or(10))
                    }
                };
                for (field, message) in schedule_warnings(&schedule) {
                    problems.warn(field, message);
                }
                Trigger::Schedule(schedule)
            }
            Err(message) => {
                let field = if message.contains("timezone") {
                    "trigger.schedule.timezone"
                } else {
                    "trigger.schedule.cron"
                };
                problems.at(field, message);
                Trigger::Manual
            }
        },
        Some(TriggerSpec {
            webhook: None,
            manual: None,
            schedule: None,
        }) => {
            problems.at(
                "trigger",
                "the trigger is empty: use `webhook:`, `schedule:` or `manual:`",
            );
            Trigger::Manual
        }
        _ => {
            problems.at(
                "trigger",
                "a flow has one trigger: `webhook`, `schedule` or `manual` (any flow can also be run by hand)",
            );
            Trigger::Manual
        }
    };
    if spec.steps.as_ref().is_some_and(Vec::is_empty) {
        problems.at("steps", "a flow needs at least one step");
    }
    if spec.concurrency == Some(0) {
        problems.at(
            "concurrency",
            "concurrency must be at least 1 (leave it out for no limit)",
        );
    }
    let title = spec.title.and_then(|text| {
        compiler
            .text(&text)
            .map_err(|e| problems.at("title", e.message))
            .ok()
    });
    let retention = spec
        .retention
        .map_or_else(Retention::default, |r| Retention {
            max_age: r.max_age.map(|d| d.0),
            max_runs: r.max_runs,
        });
    let mut cx = StepsContext {
        registry,
        env,
        compiler: &mut compiler,
        secrets: &mut secrets,
        problems: &mut problems,
    };
    let (mut steps, first_use, explicit_needs) =
        cx.build_all("steps", spec.steps.unwrap_or_default(), false);
    let (handlers, handler_use, _) = cx.build_all("on_failure", spec.on_failure, true);
    wire_switches(&mut steps, &explicit_needs, &first_use, &mut problems);
    check_graph("steps", &steps, &first_use, &mut problems);
    check_graph("on_failure", &handlers, &handler_use, &mut problems);
    for (id, at) in &handler_use {
        if let Some(first) = first_use.get(id) {
            problems.at(
                &format!("on_failure[{at}].id"),
                format!("duplicate step id `{id}` (first used by steps[{first}])"),
            );
        }
    }
    steps.extend(handlers);

    if let Ok(doc) = serde_yaml::from_str(text) {
        let found = super::lint::warnings(file, &doc, &problems.index);
        problems.warnings.extend(found);
    }
    let templates = compiler.finish(secrets);
    match id {
        Some(id) if problems.errors.is_empty() => Ok(Flow {
            name: spec.name.unwrap_or_else(|| id.to_string()),
            id,
            description: spec.description,
            title,
            file: file.to_owned(),
            source: Arc::from(text),
            revision: Revision::of(text),
            trigger,
            concurrency: spec.concurrency.map(|c| c as usize),
            enabled: spec.enabled.unwrap_or(true),
            retention,
            steps,
            secrets: templates.secrets().clone(),
            templates,
            warnings: problems.warnings,
        }),
        _ => {
            problems.errors.sort_by_key(|e| (e.line, e.col));
            Err(problems.errors)
        }
    }
}

/// What a schedule surely does not mean: a fixed-offset or abbreviated zone (no daylight saving),
/// an expression that never fires, or fires more than once a minute.
fn schedule_warnings(schedule: &Schedule) -> Vec<(&'static str, String)> {
    let mut warnings = Vec::new();
    let zone = schedule.timezone.as_str();
    let fixed = zone.starts_with("Etc/")
        || (zone.len() <= 5
            && zone != "UTC"
            && zone
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
    if fixed {
        warnings.push((
            "trigger.schedule.timezone",
            format!(
                "`{zone}` is a fixed offset: it never changes for daylight saving; write the place's \
                 IANA name, e.g. `America/New_York` for US Eastern time"
            ),
        ));
    }
    let ticks = schedule.upcoming(crate::model::Timestamp::now(), 3);
    match ticks.as_slice() {
        [] => warnings.push((
            "trigger.schedule.cron",
            format!("`{}` never fires (no such date)", schedule.cron),
        )),
        [first, second, ..] if second.millis() - first.millis() < 60_000 => warnings.push((
            "trigger.schedule.cron",
            format!(
                "`{}` fires every {} s, more than once a minute (six fields count seconds first): \
                 for once a minute write `* * * * *`",
                schedule.cron,
                (second.millis() - first.millis()) / 1000
            ),
        )),
        _ => {}
    }
    warnings
}

/// `100/s`, `600/m` or `3600/h` as requests per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let usage = || format!("`{text}` is not a rate: write `100/s`, `600/m` or `3600/h`");
    let (n, unit) = text.trim().split_once('/').ok_or_else(usage)?;
    let n: f64 = n
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| *n > 0.0)
        .ok_or_else(usage)?;
    let seconds = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(usage()),
    };
    Ok(n / seconds)
}

/// Validates a webhook's signature check: a known provider and at least one secret (taken from the
/// environment and kept secret).
fn build_verify(
    spec: VerifySpec,
    registry: &Registry,
    env: EnvLookup<'_>,
    secrets: &mut Vec<String>,
    problems: &mut Problems<'_>,
) -> Option<Verify> {
    const HERE: &str = "trigger.webhook.verify";
    let verifier = registry.verifier(&spec.provider);
    if verifier.is_none() {
        let known: Vec<_> = registry.providers().map(|p| format!("`{p}`")).collect();
        problems.at(
            &format!("{HERE}.provider"),
            format!(
                "unknown provider `{}` (expected one of {})",
                spec.provider,
                known.join(", ")
            ),
        );
    }
    let (field, raw) = match (spec.secret, spec.secrets.is_empty()) {
        (Some(one), true) => ("secret", vec![one]),
        (None, false) => ("secrets", spec.secrets),
        (Some(_), false) => {
            problems.at(
                &format!("{HERE}.secrets"),
                "give `secret` or `secrets`, not both",
            );
            return None;
        }
        (None, true) => {
            problems.at(
                HERE,
                "missing field `secret`: the signing secret, e.g. `${env:STRIPE_WEBHOOK_SECRET}`",
            );
            return None;
        }
    };
    // `${env:NAME:-}`: a secret that may be configured later (shipped example flows load without it).
    let optional = raw.iter().all(|r| r.trim().ends_with(":-}"));
    let mut values =
        serde_yaml::Value::Sequence(raw.into_iter().map(serde_yaml::Value::String).collect());
    for (path, message) in env::substitute(&mut values, env, secrets) {
        let path = if field == "secret" {
            String::new()
        } else {
            path
        };
        problems.at(&format!("{HERE}.{field}{path}"), message);
    }
    let mut values: Vec<String> = serde_yaml::from_value(values).unwrap_or_default();
    if optional {
        values.retain(|v| !v.is_empty());
    }
    if values.iter().any(String::is_empty) {
        problems.at(&format!("{HERE}.{field}"), "a signing secret is empty");
    }
    let (provider, verifier) = verifier?;
    Some(Verify {
        provider,
        verifier,
        secrets: values,
        tolerance: spec.tolerance.map_or(DEFAULT_SIGNATURE_TOLERANCE, |d| d.0),
    })
}

/// What building a flow's steps shares.
struct StepsContext<'a, 'p> {
    registry: &'a Registry,
    env: EnvLookup<'a>,
    compiler: &'a mut Compiler,
    secrets: &'a mut Vec<String>,
    problems: &'a mut Problems<'p>,
}

/// Built steps, each id's index in its list (built or not), and the ids whose `needs` were
/// written.
type BuiltSteps = (Vec<Step>, HashMap<StepId, usize>, HashSet<StepId>);

impl StepsContext<'_, '_> {
    /// Validates a list of steps (`steps` or `on_failure`); each step by default needs the one
    /// before it in the list.
    fn build_all(&mut self, section: &str, specs: StepList, handler: bool) -> BuiltSteps {
        let mut steps: Vec<Step> = Vec::with_capacity(specs.len());
        let mut index: HashMap<StepId, usize> = HashMap::new();
        let mut explicit_needs = HashSet::new();
        let mut prev = None;
        for (i, spec) in specs.into_iter().enumerate() {
            // An item that is not a step at all was reported when it was read.
            let Some(spec) = spec else { continue };
            let here = format!("{section}[{i}]");
            let id: Option<StepId> = spec.id.as_deref().and_then(|i| i.parse().ok());
            if let Some(id) = &id {
                if let Some(first) = index.get(id) {
                    self.problems.at(
                        &format!("{here}.id"),
                        format!("duplicate step id `{id}` (first used by {section}[{first}])"),
                    );
                    continue;
                }
                index.insert(id.clone(), i);
                if spec.needs.is_some() {
                    explicit_needs.insert(id.clone());
                }
            }
            let step = build_step(&here, spec, prev.take(), self);
            prev = id;
            if let Some(mut step) = step {
                step.handler = handler;
                steps.push(step);
            }
        }
        (steps, index, explicit_needs)
    }
}

/// Validates one step (at `here`, e.g. `steps[2]`); `None` (with problems recorded) if it cannot
/// be built.
fn build_step(
    here: &str,
    spec: StepSpec,
    prev: Option<StepId>,
    cx: &mut StepsContext<'_, '_>,
) -> Option<Step> {
    let StepsContext {
        registry,
        env,
        compiler,
        secrets,
        problems,
    } = cx;
    let (registry, env) = (*registry, *env);
    let here = here.to_owned();
    for problem in &spec.problems {
        problems.shape(&join_path(&here, &problem.path), &problem.message);
    }
    let id = match &spec.id {
        None => {
            problems.at(
                &here,
                "missing field `id`: every step needs an id, e.g. `id: notify_sales`",
            );
            None
        }
        Some(raw) => raw
            .parse::<StepId>()
            .map_err(|e| problems.at(&format!("{here}.id"), e.to_string()))
            .ok(),
    };
    let known = || {
        registry
            .kinds()
            .map(|(k, _)| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut kinds = spec.kinds.into_iter();
    let (kind_name, mut config) = match (kinds.next(), kinds.next()) {
        (None, _) => {
            problems.at(
                &here,
                format!("the step has no kind: add one of {}", known()),
            );
            return None;
        }
        (Some(first), Some(second)) => {
            let (a, b) = (&first.0, &second.0);
            let message = if registry.get(a).is_some() && registry.get(b).is_some() {
                format!("a step has exactly one kind, but this one has `{a}` and `{b}`: split it into two steps")
            } else {
                let unknown = if registry.get(a).is_some() { b } else { a };
                unknown_key_message(unknown, registry)
            };
            problems.at(&format!("{here}.{}", second.0), message);
            return None;
        }
        (Some(only), None) => only,
    };
    let kind_path = format!("{here}.{kind_name}");
    let Some((kind, entry)) = registry.get_key_value(&kind_name) else {
        problems.at(&kind_path, unknown_key_message(&kind_name, registry));
        return None;
    };

    for (field, message) in env::substitute(&mut config, env, secrets) {
        problems.at(&join_path(&kind_path, &field), message);
    }
    let varies = crate::steps::calls_uuid(&config);
    let mut cx = BuildContext::new(compiler, env, secrets, registry)
        .located(&problems.index, kind_path.clone());
    let built = entry.build(config, &mut cx);
    let errors = cx.into_errors();
    let action = match built {
        Ok(action) => action,
        Err(e) => {
            problems.shape(&join_path(&kind_path, &e.path), &e.message);
            None
        }
    };
    // Nested steps (`foreach`) report their shape errors here too: worded the same way.
    for e in errors {
        let path = join_path(&kind_path, &e.field);
        match e.at {
            Some(at) => problems.push(&path, at.line, at.col, e.message),
            None if is_shape_error(&e.message) => problems.shape(&path, &e.message),
            None => problems.at(&path, e.message),
        }
    }

    let needs = match spec.needs {
        Some(list) => {
            let mut ids = Vec::new();
            for (j, raw) in list.iter().enumerate() {
                match raw.parse::<StepId>() {
                    Ok(id) => ids.push(id),
                    Err(e) => problems.at(&format!("{here}.needs[{j}]"), e.to_string()),
                }
            }
            ids
        }
        None => prev.into_iter().collect(),
    };
    let timeout = spec.timeout.map_or(DEFAULT_STEP_TIMEOUT, |d| d.0);
    if timeout > MAX_STEP_TIMEOUT || timeout.is_zero() {
        problems.at(
            &format!("{here}.timeout"),
            "a step's timeout must be more than 0 and at most 10m",
        );
    }
    let queue = spec.queue.as_ref().and_then(|q| {
        let concurrency = q.concurrency.unwrap_or(1);
        if concurrency == 0 || q.name.is_empty() {
            problems.at(
                &format!("{here}.queue"),
                "a queue needs a `name` and a `concurrency` of at least 1",
            );
            return None;
        }
        let key = compiler
            .text(q.key.as_deref().unwrap_or(""))
            .map_err(|e| problems.at(&format!("{here}.queue.key"), e.message))
            .ok()?;
        Some(StepQueue {
            name: q.name.clone(),
            key,
            concurrency,
            gap: q.gap.map_or(Duration::ZERO, |g| g.0),
        })
    });
    let line = problems.index.locate(&here).line;
    Some(Step {
        id: id?,
        name: spec.name,
        kind,
        needs,
        retry: spec
            .retry
            .as_ref()
            .map(RetryPolicy::from_spec)
            .unwrap_or_default(),
        timeout,
        action: action?,
        line,
        route: None,
        on_error: spec.on_error.unwrap_or_default(),
        handler: false,
        queue,
        varies,
    })
}

/// Wires each `switch`'s paths: checks the steps they list (they exist, come after the switch,
/// are on one path only), gives those steps their route, and fills in the `needs` a step did not
/// write: a path's first step waits for the switch and each next one for the one before; the
/// step after the paths waits for the switch and every path's last step.
fn wire_switches(
    steps: &mut [Step],
    explicit_needs: &HashSet<StepId>,
    index_of: &HashMap<StepId, usize>,
    problems: &mut Problems<'_>,
) {
    let position: HashMap<StepId, usize> = steps
        .iter()
        .enumerate()
        .map(|(p, s)| (s.id.clone(), p))
        .collect();
    let switches: Vec<(usize, StepId, Vec<Path>)> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.action.paths().is_empty())
        .map(|(p, s)| (p, s.id.clone(), s.action.paths().to_vec()))
        .collect();
    let mut owner: HashMap<StepId, Route> = HashMap::new();
    let problems_before = problems.errors.len();
    for (at, switch, paths) in &switches {
        let here = format!("steps[{}].{}", index_of[switch], steps[*at].kind);
        for path in paths {
            for (k, id) in path.steps.iter().enumerate() {
                let field = format!("{here}.{}[{k}]", path.field);
                match position.get(id) {
                    // A step that could not be built was reported already.
                    None if index_of.contains_key(id) => {}
                    None => problems.at(&field, format!("there is no step `{id}` in this flow")),
                    Some(p) if p <= at => problems.at(
                        &field,
                        format!(
                            "`{id}` comes before the switch: a path's steps follow it in the file"
                        ),
                    ),
                    Some(_) => {
                        let route = Route {
                            switch: switch.clone(),
                            path: path.name.clone(),
                        };
                        if let Some(first) = owner.insert(id.clone(), route) {
                            problems.at(
                                &field,
                                format!(
                                    "`{id}` is already on path `{}` of `{}`",
                                    first.path, first.switch
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
    if problems.errors.len() > problems_before {
        return;
    }
    for step in steps.iter_mut() {
        step.route = owner.get(&step.id).cloned();
    }
    for (_, switch, paths) in &switches {
        for path in paths {
            for (k, id) in path.steps.iter().enumerate() {
                let (Some(p), false) = (position.get(id), explicit_needs.contains(id)) else {
                    continue;
                };
                let need = if k == 0 { switch } else { &path.steps[k - 1] };
                steps[*p].needs = vec![need.clone()];
            }
        }
    }
    for p in 1..steps.len() {
        let id = &steps[p].id;
        if explicit_needs.contains(id) || owner.contains_key(id) {
            continue;
        }
        let Some(route) = owner.get(&steps[p - 1].id) else {
            continue;
        };
        let Some((_, switch, paths)) = switches.iter().find(|(_, s, _)| *s == route.switch) else {
            continue;
        };
        let mut needs = vec![switch.clone()];
        needs.extend(paths.iter().filter_map(|path| path.steps.last().cloned()));
        steps[p].needs = needs;
    }
}

/// Checks `needs` names and looks for cycles within one list of steps (`steps`, `on_failure`).
fn check_graph(
    section: &str,
    steps: &[Step],
    index_of: &HashMap<StepId, usize>,
    problems: &mut Problems<'_>,
) {
    let mut graph_ok = true;
    for step in steps {
        let i = index_of[&step.id];
        for (j, need) in step.needs.iter().enumerate() {
            if !index_of.contains_key(need) {
                graph_ok = false;
                let known: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
                let hint = closest(need.as_str(), known.iter().copied())
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                problems.at(
                    &format!("{section}[{i}].needs[{j}]"),
                    format!("`needs` names an unknown step `{need}`{hint}"),
                );
            }
        }
    }
    if !graph_ok {
        return;
    }
    // Depth-first search; a grey node reached again closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        White,
        Grey,
        Black,
    }
    let by_id: HashMap<&StepId, &Step> = steps.iter().map(|s| (&s.id, s)).collect();
    let mut marks: HashMap<&StepId, Mark> = steps.iter().map(|s| (&s.id, Mark::White)).collect();
    fn visit<'s>(
        id: &'s StepId,
        by_id: &HashMap<&'s StepId, &'s Step>,
        marks: &mut HashMap<&'s StepId, Mark>,
        stack: &mut Vec<&'s StepId>,
    ) -> Option<Vec<&'s StepId>> {
        marks.insert(id, Mark::Grey);
        stack.push(id);
        for need in &by_id[id].needs {
            // A step that could not be built (reported already) has no edges to follow.
            let Some(&mark) = marks.get(need) else {
                continue;
            };
            match mark {
                Mark::Grey => {
                    let start = stack.iter().position(|s| *s == need).unwrap_or(0);
                    let mut cycle: Vec<&StepId> = stack[start..].to_vec();
                    cycle.push(need);
                    return Some(cycle);
                }
                Mark::White => {
                    if let Some(c) = visit(need, by_id, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Black => {}
            }
        }
        stack.pop();
        marks.insert(id, Mark::Black);
        None
    }
    for step in steps {
        if marks[&step.id] == Mark::White {
            if let Some(cycle) = visit(&step.id, &by_id, &mut marks, &mut Vec::new()) {
                let i = index_of[cycle[0]];
                let path: Vec<&str> = cycle.iter().map(|s| s.as_str()).collect();
                problems.at(
                    &format!("{section}[{i}].needs"),
                    format!("the steps form a cycle: {}", path.join(" → ")),
                );
                return;
            }
        }
    }
}

/// An unknown key in a step: the closest step kind or field if there is one, else every name.
fn unknown_key_message(key: &str, registry: &Registry) -> String {
    let kinds: Vec<&str> = registry.kinds().map(|(k, _)| k).collect();
    match closest(key, kinds.iter().copied().chain(COMMON_STEP_KEYS)) {
        Some(c) => format!("unknown step kind or field `{key}`: did you mean `{c}`?"),
        None => format!(
            "unknown step kind or field `{key}`: step kinds are {}; other step fields are {}",
            kinds.join(", "),
            COMMON_STEP_KEYS.join(", ")
        ),
    }
}

/// A shape error at `path` as a flow author reads it: a likely typo of a field named (or, with
/// no likely one, every field listed), a filter written as a bare list explained. Other messages
/// are kept as they are.
fn in_words(path: &str, message: &str) -> String {
    let mut named = path;
    while let Some(i) = named.strip_suffix(']').and_then(|p| p.rfind('[')) {
        named = &named[..i];
    }
    let owner = named
        .rsplit('.')
        .next()
        .filter(|name| !name.is_empty())
        .map_or_else(|| "the flow".to_owned(), |name| format!("`{name}`"));
    if let Some(field) = unknown_field(message) {
        let expected: Vec<&str> = message
            .split_once("expected")
            .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        return match closest(field, expected.iter().copied()) {
            Some(c) => format!("{owner} has no field `{field}`: did you mean `{c}`?"),
            None => format!(
                "{owner} has no field `{field}` (its fields are {})",
                expected.join(", ")
            ),
        };
    }
    if owner == "`filter`" && message.contains("invalid type: sequence") {
        return "a filter is not a bare list: write `all: [...]` (every condition must hold) or \
                `any: [...]` (one is enough) with the conditions in the list"
            .to_owned();
    }
    if let Some((found, _)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected struct "))
    {
        return format!("{owner} takes a map of fields (`name: value`), not a {found}");
    }
    message.to_owned()
}

/// The field name in a serde "unknown field `x`" message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.split("unknown field `").nth(1)?;
    rest.split('`').next()
}

/// serde_yaml appends " at line L column C" to some messages; the position is shown separately.
/// Whether `message` is serde's, about a value that does not have its shape (the others are
/// written for the flow's author already).
fn is_shape_error(message: &str) -> bool {
    unknown_field(message).is_some()
        || [
            "invalid type: ",
            "missing field ",
            "unknown variant ",
            "invalid value: ",
        ]
        .iter()
        .any(|p| message.starts_with(p))
}

fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The candidate closest to `word` by edit distance, if close enough to be a likely typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        // Edits: insert, delete, replace, or swap two neighbours (`titel` → `title` is one).
        .map(|c| (strsim::osa_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_varies_when_a_template_calls_uuid() {
        let varies = |yaml: &str| crate::steps::calls_uuid(&serde_yaml::from_str(yaml).unwrap());
        assert!(varies("json: { id: '{{uuid}}' }"));
        assert!(varies("json: { id: '{{{ uuid }}}' }"));
        assert!(varies("text: \"{{upper (uuid)}}\""));
        assert!(!varies("json: { id: '{{trigger.body.uuid}}' }"));
        assert!(!varies("json: { uuid: '{{trigger.body.id}}' }"));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            closest("htp", ["filter", "map", "http"].into_iter()),
            Some("http")
        );
        assert_eq!(
            closest("webhook_sender", ["filter", "map", "http"].into_iter()),
            None
        );
        assert_eq!(closest("zz", ["a", "b"].into_iter()), None);
        assert_eq!(
            closest("metod", ["method", "url"].into_iter()),
            Some("method")
        );
        assert_eq!(
            closest("titel", ["id", "title", "trigger"].into_iter()),
            Some("title")
        );
    }

    #[test]
    fn a_title_that_does_not_compile_is_reported_at_its_line() {
        let yaml = "id: t\ntitle: \"{{nosuch_helper trigger.body.email}}\"\ntrigger: { webhook: }\nsteps:\n  - { id: a, map: { x: 1 } }\n";
        let errors =
            crate::flow::parse_flow("t.yaml", yaml, &crate::steps::Registry::builtin(), &|_| {
                None
            })
            .unwrap_err();
        assert!(
            errors.iter().any(|e| e.path == "title" && e.line == 2),
            "{errors:?}"
        );
    }
}
