//! An offline run: a flow executed in memory on one event, with no store, no network and no
//! retries. Steps that would call out (HTTP, connectors) run in dry-run mode and answer what they
//! would send, unless a [`Stub`] gives their answer. The run goes through the same decisions as
//! a served one ([`advance`](crate::runtime::advance)), so statuses, skips and filters match.
//! `storage` steps use scratch storage that starts empty and lasts the one run.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::flow::{Flow, DEFAULT_SERVER_URL};
use crate::ids::{EventId, RunId, StepId};
use crate::model::{Event, Run, StepRecord, Timestamp};
use crate::outbound::{HttpClient, OutboundPolicy};
use crate::pacing::Pacer;
use crate::runtime::advance::{self, Attempted, StepResult};
use crate::runtime::callbacks::{resume_urls, CallbackKey};
use crate::runtime::context::{add_resume_urls, idempotency_key, run_context};
use crate::steps::storage::StepStorage;
use crate::steps::{ExecContext, Outcome, StepError, StepLog};

/// A step's canned answer: its `output` as is, an HTTP answer (`status`, `body`, `headers`), or
/// an `error`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stub {
    /// The step's output.
    #[serde(default)]
    pub output: Option<Value>,
    /// The answer's HTTP status (default 200): a non-2xx status fails the step as that answer
    /// would.
    #[serde(default)]
    pub status: Option<u16>,
    /// The answer's body.
    #[serde(default)]
    pub body: Option<Value>,
    /// The answer's headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Fail the step with this message.
    #[serde(default)]
    pub error: Option<String>,
}

impl Stub {
    /// What the stubbed step does: an `http` step outputs `{status, headers, body}`, other kinds
    /// the body.
    pub fn outcome(&self, kind: &str) -> Result<Outcome, StepError> {
        if let Some(message) = &self.error {
            return Err(StepError {
                http_status: self.status,
                ..StepError::permanent(message.clone())
            });
        }
        if let Some(output) = &self.output {
            return Ok(Outcome::Output(output.clone()));
        }
        let status = self.status.unwrap_or(200);
        let body = self.body.clone().unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let message = format!("the server answered {status}: {body}");
            return Err(StepError {
                http_status: Some(status),
                ..StepError::permanent(message)
                    .with_detail(json!({ "status": status, "body": body }))
            });
        }
        Ok(Outcome::Output(if kind == "http" {
            json!({ "status": status, "headers": self.headers, "body": body })
        } else {
            body
        }))
    }
}

/// What an offline run did.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The event it ran on.
    pub event: Event,
    /// The run as it ended.
    pub run: Run,
    /// Each step's record (steps that never ran have none).
    pub records: Vec<StepRecord>,
    /// The resume URLs of its `wait_for_callback` steps (no server answers them).
    pub resume_urls: Vec<(StepId, String)>,
}

impl Trace {
    /// The run context a step rendered against.
    pub fn context(&self, step: &StepId) -> Value {
        let mut context = run_context(
            self.event.trigger.clone(),
            &self.run,
            &self.records,
            step,
            1,
        );
        add_resume_urls(&mut context, &self.resume_urls);
        context
    }

    /// A step's record.
    pub fn record(&self, step: &StepId) -> Option<&StepRecord> {
        self.records.iter().find(|r| &r.step_id == step)
    }
}

/// The HTTP client dry runs build requests with (one per process: building one takes a while).
fn client() -> Option<HttpClient> {
    static CLIENT: OnceLock<Option<HttpClient>> = OnceLock::new();
    CLIENT
        .get_or_init(|| HttpClient::new(OutboundPolicy::default()).ok())
        .clone()
}

/// Runs `flow` on `trigger` in memory; `stubs` answer for steps by id.
pub async fn run(flow: &Flow, trigger: Value, stubs: &BTreeMap<String, Stub>) -> Trace {
    let now = Timestamp::now();
    let event = Event {
        id: EventId::new(),
        flow_id: flow.id.clone(),
        received_at: now,
        trigger,
    };
    let new = advance::start(flow, event.clone(), RunId::new(), now);
    let resume_urls = resume_urls(
        flow,
        new.run.id,
        DEFAULT_SERVER_URL,
        &CallbackKey::offline(),
    );
    let mut run = new.run;
    let mut queue: VecDeque<_> = new.items.into();
    let mut records: Vec<StepRecord> = Vec::new();
    let http = client();
    let storage = StepStorage::scratch();
    while let Some(item) = queue.pop_front() {
        let Some(step) = flow.step(&item.step_id).filter(|_| run.expects(&item)) else {
            continue;
        };
        let mut ctx = run_context(
            event.trigger.clone(),
            &run,
            &records,
            &step.id,
            item.attempt,
        );
        add_resume_urls(&mut ctx, &resume_urls);
        let ctx = Arc::new(ctx);
        let started_at = Timestamp::now();
        let clock = Instant::now();
        let log = StepLog::default();
        let (mut input, result) = match step.action.render(&flow.templates, &ctx) {
            Err(e) => (Value::Null, StepResult::Failed(e)),
            Ok(input) => {
                let outcome = match (stubs.get(step.id.as_str()), &http) {
                    (Some(stub), _) => stub.outcome(step.kind),
                    (None, Some(http)) => {
                        let cx = ExecContext {
                            run_id: run.id,
                            step_id: step.id.clone(),
                            attempt: item.attempt,
                            idempotency_key: idempotency_key(&run, &step.id),
                            dry_run: true,
                            timeout: step.timeout,
                            http: http.clone(),
                            pacer: Pacer::detached(),
                            templates: flow.templates.clone(),
                            context: ctx.clone(),
                            sub_flows: None,
                            clock: Arc::new(crate::store::SystemClock),
                            state: None,
                            log: log.clone(),
                            storage: storage.clone(),
                        };
                        step.action.execute(input.clone(), &cx).await
                    }
                    (None, None) => Err(StepError::permanent("no HTTP client could be set up")),
                };
                let result = match outcome {
                    Ok(Outcome::Output(v)) => StepResult::Output(v),
                    Ok(Outcome::Stop { output, reason }) => StepResult::Stop { output, reason },
                    Ok(Outcome::Wait { reason, .. }) => {
                        StepResult::Failed(StepError::permanent(reason))
                    }
                    Ok(Outcome::Await { .. }) => StepResult::Failed(StepError::permanent(
                        "the step waits for a callback, which only a server receives: a test \
                         case stubs its output (`output: {path: callback, body: …}`)",
                    )),
                    Err(e) => StepResult::Failed(e),
                };
                (input, result)
            }
        };
        flow.secrets.redact(&mut input);
        let result = crate::runtime::redact_result(result, &flow.secrets);
        let done = Attempted {
            step_id: step.id.clone(),
            attempt: item.attempt,
            input,
            result,
            started_at,
            duration_ms: clock.elapsed().as_millis() as u64,
            retry_in: None,
            node: None,
            sent_under: None,
            logs: crate::runtime::redact_lines(log.take(), &flow.secrets),
        };
        let previous = records.iter().find(|r| r.step_id == step.id);
        let Some(update) = advance::advance(flow, run.clone(), previous, &done, Timestamp::now())
        else {
            continue;
        };
        run = update.run;
        for record in update.records {
            records.retain(|r| r.step_id != record.step_id);
            records.push(record);
        }
        queue.extend(update.enqueue);
    }
    Trace {
        event,
        run,
        resume_urls,
        records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::parse_flow;
    use crate::model::{RunStatus, StepStatus};
    use crate::steps::Registry;

    const FLOW: &str = r#"
id: offline
trigger: { webhook: }
steps:
  - id: shape
    map: { email: "{{lower trigger.body.email}}" }
  - id: post
    http: { url: "https://crm.example.com/contacts", json: { email: "{{steps.shape.email}}" } }
  - id: after
    map: { id: "{{steps.post.body.id}}" }
"#;

    fn flow() -> Flow {
        parse_flow("offline.yaml", FLOW, &Registry::builtin(), &|_| None).unwrap()
    }

    fn id(s: &str) -> StepId {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn unstubbed_calls_are_described_and_stubs_answer_for_them() {
        let flow = flow();
        let trigger = json!({ "body": { "email": "A@X.COM" } });
        let trace = run(&flow, trigger.clone(), &BTreeMap::new()).await;
        assert_eq!(trace.run.status, RunStatus::Succeeded);
        let post = trace.record(&id("post")).unwrap();
        assert_eq!(post.input["json"]["email"], "a@x.com");
        assert_eq!(post.output.as_ref().unwrap()["dry_run"], true);

        let stub = Stub {
            body: Some(json!({ "id": 7 })),
            ..Stub::default()
        };
        let stubs = BTreeMap::from([("post".to_owned(), stub)]);
        let trace = run(&flow, trigger.clone(), &stubs).await;
        assert_eq!(
            trace.record(&id("after")).unwrap().output,
            Some(json!({ "id": 7 }))
        );

        let failing = Stub {
            status: Some(503),
            ..Stub::default()
        };
        let stubs = BTreeMap::from([("post".to_owned(), failing)]);
        let trace = run(&flow, trigger, &stubs).await;
        assert_eq!(trace.run.status, RunStatus::Failed);
        assert_eq!(
            trace.run.step_status(&id("after")),
            Some(StepStatus::Skipped)
        );
    }
}

#[cfg(test)]
mod error_handling {
    use super::*;
    use crate::flow::parse_flow;
    use crate::model::{RunStatus, StepStatus};
    use crate::steps::Registry;

    const FLOW: &str = r#"
id: handled
trigger: { webhook: }
steps:
  - id: enrich
    on_error: continue
    http: { url: "https://enrich.example.com", json: {} }
  - id: shape
    map: { enriched: "{{default steps.enrich.body.ok steps.enrich.error.message}}" }
  - id: post
    http: { url: "https://crm.example.com", json: {} }
  - id: never
    map: { x: 1 }
on_failure:
  - id: alert
    map: { text: "run {{run.id}} failed: {{run.error}}" }
  - id: page
    map: { sent: "{{steps.alert.text}}" }
"#;

    fn flow() -> Flow {
        parse_flow("handled.yaml", FLOW, &Registry::builtin(), &|_| None).unwrap()
    }

    fn failing(step: &str, message: &str) -> (String, Stub) {
        let stub = Stub {
            error: Some(message.to_owned()),
            ..Stub::default()
        };
        (step.to_owned(), stub)
    }

    fn status(trace: &Trace, id: &str) -> StepStatus {
        trace.run.step_status(&id.parse().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_continued_failure_feeds_its_error_to_the_next_steps() {
        let flow = flow();
        let stubs = BTreeMap::from([failing("enrich", "enrichment is down")]);
        let trace = run(&flow, json!({}), &stubs).await;
        assert_eq!(
            trace.run.status,
            RunStatus::Succeeded,
            "{:?}",
            trace.run.reason
        );
        assert_eq!(status(&trace, "enrich"), StepStatus::Failed);
        let shape = trace.record(&"shape".parse().unwrap()).unwrap();
        assert_eq!(
            shape.output,
            Some(json!({ "enriched": "enrichment is down" }))
        );
        assert_eq!(
            status(&trace, "alert"),
            StepStatus::Skipped,
            "handlers run only on failure"
        );
    }

    #[tokio::test]
    async fn on_failure_steps_run_after_a_final_failure_and_the_run_ends_failed() {
        let flow = flow();
        let stubs = BTreeMap::from([failing("post", "the CRM answered 500")]);
        let trace = run(&flow, json!({}), &stubs).await;
        assert_eq!(trace.run.status, RunStatus::Failed);
        assert_eq!(
            trace.run.reason.as_deref(),
            Some("step `post` failed: the CRM answered 500")
        );
        assert_eq!(status(&trace, "never"), StepStatus::Skipped);
        let alert = trace.record(&"alert".parse().unwrap()).unwrap();
        let text = alert.output.as_ref().unwrap()["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            text.ends_with("failed: step `post` failed: the CRM answered 500"),
            "{text}"
        );
        assert_eq!(status(&trace, "page"), StepStatus::Succeeded);

        // A failing handler still ends the run failed, saying both.
        let stubs = BTreeMap::from([failing("post", "500"), failing("page", "pager down")]);
        let trace = run(&flow, json!({}), &stubs).await;
        assert_eq!(trace.run.status, RunStatus::Failed);
        let reason = trace.run.reason.unwrap();
        assert!(
            reason.contains("`post` failed: 500") && reason.contains("pager down"),
            "{reason}"
        );
    }
}
