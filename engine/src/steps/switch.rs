//! `switch` (Zapier's Paths, n8n's Switch): ordered cases, each with a condition and the steps of
//! its path; the first case whose condition passes is taken, else the `default` path if there is
//! one. The steps of the other paths are skipped; steps after the switch wait for the taken path.
//! The step's output, `{"path": NAME}` (`null` when no path was taken), is recorded on the run.

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Action, BuildContext, ExecContext, Outcome, Path, StepError, StepKind};
use crate::expr::{Condition, ConditionSpec, Templates};
use crate::ids::StepId;

/// The name of the path taken when no case matches.
pub const DEFAULT_PATH: &str = "default";

/// Take the first path whose condition passes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchSpec {
    /// The cases, tried in order.
    pub cases: Vec<CaseSpec>,
    /// The steps of the path taken when no case matches (path `default`).
    #[serde(default)]
    pub default: Option<Vec<String>>,
}

/// One case of a switch.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseSpec {
    /// The path's name, recorded on the run when it is taken (`enterprise`).
    pub path: String,
    /// When it is taken: a condition as in `filter`.
    pub when: ConditionSpec,
    /// The ids of the steps on this path, in order (each waits for the one before unless it says
    /// otherwise with `needs`).
    pub steps: Vec<String>,
}

impl StepKind for SwitchSpec {
    const KIND: &'static str = "switch";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        if self.cases.is_empty() {
            cx.error("cases", "a switch needs at least one case");
        }
        let mut paths = Vec::new();
        let mut conditions = Vec::new();
        let mut ok = true;
        for (i, case) in self.cases.into_iter().enumerate() {
            let here = format!("cases[{i}]");
            if case.path.is_empty() || case.path == DEFAULT_PATH {
                cx.error(
                    &format!("{here}.path"),
                    format!("name the path (not empty, not `{DEFAULT_PATH}`)"),
                );
            }
            if paths.iter().any(|p: &Path| p.name == case.path) {
                cx.error(
                    &format!("{here}.path"),
                    format!("two cases are named `{}`", case.path),
                );
            }
            let condition = cx.condition(&format!("{here}.when"), &case.when);
            let steps = step_ids(cx, &format!("{here}.steps"), &case.steps);
            match (condition, steps) {
                (Some(c), Some(steps)) => {
                    conditions.push(c);
                    paths.push(Path {
                        name: case.path,
                        steps,
                        field: format!("{here}.steps"),
                    });
                }
                _ => ok = false,
            }
        }
        if let Some(default) = &self.default {
            match step_ids(cx, "default", default) {
                Some(steps) => paths.push(Path {
                    name: DEFAULT_PATH.to_owned(),
                    steps,
                    field: "default".to_owned(),
                }),
                None => ok = false,
            }
        }
        ok.then(|| Arc::new(Switch { conditions, paths }) as Arc<dyn Action>)
    }
}

pub(super) fn step_ids(
    cx: &mut BuildContext<'_>,
    field: &str,
    raw: &[String],
) -> Option<Vec<StepId>> {
    if raw.is_empty() {
        cx.error(field, "list the ids of the path's steps");
        return None;
    }
    let mut ids = Vec::new();
    for (j, id) in raw.iter().enumerate() {
        match id.parse::<StepId>() {
            Ok(id) => ids.push(id),
            Err(e) => cx.error(&format!("{field}[{j}]"), e.to_string()),
        }
    }
    (ids.len() == raw.len()).then_some(ids)
}

#[derive(Debug)]
struct Switch {
    /// One per case, in order; `paths` has one more entry when there is a default.
    conditions: Vec<Condition>,
    paths: Vec<Path>,
}

#[async_trait]
impl Action for Switch {
    fn is_pure(&self) -> bool {
        true
    }

    /// `{path, cases: [{path, passed, reason}]}`: every case tried until one passed.
    fn render(&self, templates: &Templates, ctx: &Value) -> Result<Value, StepError> {
        let mut tried = Vec::new();
        let mut taken = None;
        for (condition, path) in self.conditions.iter().zip(&self.paths) {
            let verdict = condition.evaluate(templates, ctx)?;
            tried.push(
                json!({ "path": path.name, "passed": verdict.passed, "reason": verdict.reason }),
            );
            if verdict.passed {
                taken = Some(path.name.as_str());
                break;
            }
        }
        let taken = taken.or_else(|| {
            self.paths
                .get(self.conditions.len())
                .map(|default| default.name.as_str())
        });
        Ok(json!({ "path": taken, "cases": tried }))
    }

    async fn execute(&self, input: Value, _cx: &ExecContext) -> Result<Outcome, StepError> {
        Ok(Outcome::Output(json!({ "path": input["path"] })))
    }

    fn paths(&self) -> &[Path] {
        &self.paths
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use crate::authoring::offline;
    use crate::flow::{parse_flow, Flow};
    use crate::model::{RunStatus, StepStatus};
    use crate::steps::Registry;

    const PATHS: &str = r#"
id: paths
trigger: { webhook: }
steps:
  - id: lead
    map: { size: "{{trigger.body.size}}" }
  - id: route
    switch:
      cases:
        - path: big
          when: { value: "{{steps.lead.size}}", gte: 100 }
          steps: [assign, notify]
        - path: small
          when: { value: "{{steps.lead.size}}", lt: 100 }
          steps: [nurture]
  - id: assign
    map: { owner: ae }
  - id: notify
    map: { sent_to: "{{steps.assign.owner}}" }
  - id: nurture
    map: { sequence: 1 }
  - id: after
    map: { owner: "{{default steps.assign.owner 'nobody'}}" }
"#;

    fn flow(yaml: &str) -> Flow {
        parse_flow("paths.yaml", yaml, &Registry::builtin(), &|_| None).expect("valid flow")
    }

    async fn statuses(
        flow: &Flow,
        size: serde_json::Value,
    ) -> (
        RunStatus,
        Option<String>,
        Vec<(String, StepStatus)>,
        serde_json::Value,
    ) {
        let trace = offline::run(flow, json!({ "body": { "size": size } }), &BTreeMap::new()).await;
        let route = trace
            .run
            .steps
            .iter()
            .find(|s| s.id.as_str() == "route")
            .unwrap();
        let steps = trace
            .run
            .steps
            .iter()
            .map(|s| (s.id.to_string(), s.status))
            .collect();
        let after = trace
            .record(&"after".parse().unwrap())
            .and_then(|r| r.output.clone())
            .unwrap_or_default();
        (trace.run.status, route.path.clone(), steps, after)
    }

    #[test]
    fn paths_get_their_needs_and_the_step_after_waits_for_every_path() {
        let flow = flow(PATHS);
        let needs = |id: &str| -> Vec<String> {
            flow.steps
                .iter()
                .find(|s| s.id.as_str() == id)
                .unwrap()
                .needs
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(needs("assign"), ["route"]);
        assert_eq!(needs("notify"), ["assign"]);
        assert_eq!(needs("nurture"), ["route"]);
        assert_eq!(needs("after"), ["route", "notify", "nurture"]);
    }

    #[tokio::test]
    async fn the_first_passing_case_is_taken_and_the_other_paths_are_skipped() {
        use StepStatus::{Skipped, Succeeded};
        let flow = flow(PATHS);
        let (status, path, steps, after) = statuses(&flow, json!(500)).await;
        assert_eq!(
            (status, path.as_deref()),
            (RunStatus::Succeeded, Some("big"))
        );
        let expected = [
            ("lead", Succeeded),
            ("route", Succeeded),
            ("assign", Succeeded),
            ("notify", Succeeded),
            ("nurture", Skipped),
            ("after", Succeeded),
        ];
        assert_eq!(steps, expected.map(|(id, s)| (id.to_owned(), s)));
        assert_eq!(
            after,
            json!({ "owner": "ae" }),
            "the step after sees the taken path's outputs"
        );

        let (status, path, steps, after) = statuses(&flow, json!(5)).await;
        assert_eq!(
            (status, path.as_deref()),
            (RunStatus::Succeeded, Some("small"))
        );
        assert_eq!(
            steps[2..5],
            [
                ("assign".into(), Skipped),
                ("notify".into(), Skipped),
                ("nurture".into(), Succeeded)
            ]
        );
        assert_eq!(after, json!({ "owner": "nobody" }));

        // No case passes and there is no default: every path is skipped, the run goes on.
        let (status, path, steps, _) = statuses(&flow, json!(null)).await;
        assert_eq!((status, path), (RunStatus::Succeeded, None));
        assert_eq!(steps[5], ("after".into(), Succeeded));
    }

    #[tokio::test]
    async fn the_default_path_is_taken_when_no_case_passes() {
        let yaml = PATHS.replace(
            "          steps: [nurture]",
            "          steps: [nurture]\n      default: [after]",
        );
        let flow = flow(&yaml);
        let (_, path, steps, _) = statuses(&flow, json!(null)).await;
        assert_eq!(path.as_deref(), Some("default"));
        assert_eq!(steps[5], ("after".into(), StepStatus::Succeeded));
        let (_, path, steps, _) = statuses(&flow, json!(500)).await;
        assert_eq!(path.as_deref(), Some("big"));
        assert_eq!(steps[5], ("after".into(), StepStatus::Skipped));
    }

    #[test]
    fn path_lists_are_checked_with_their_place() {
        let bad = PATHS.replace(
            "steps: [assign, notify]",
            "steps: [assign, nurture, lead, nowhere]",
        );
        let errors = parse_flow("paths.yaml", &bad, &Registry::builtin(), &|_| None).unwrap_err();
        let shown: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        assert_eq!(
            shown,
            [
                "steps[1].switch.cases[0].steps[2]: `lead` comes before the switch: a path's steps follow it in the file",
                "steps[1].switch.cases[0].steps[3]: there is no step `nowhere` in this flow",
                "steps[1].switch.cases[1].steps[0]: `nurture` is already on path `big` of `route`",
            ]
        );
    }
}
