//! `hookflow validate` reports every problem as `file:line:col: field.path: message`.

use std::path::Path;

use crate::support::run_cli;

/// Writes `files` into a temp dir, runs `hookflow validate DIR`, returns (success, stdout lines).
fn validate(files: &[(&str, &str)]) -> (bool, Vec<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = run_cli(&["validate", "."], dir.path());
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    (out.status.success(), lines, dir)
}

/// The one line reporting `path` in `file`; asserts its line number.
fn expect(lines: &[String], file: &str, line: usize, path: &str, needle: &str) {
    let prefix = format!("./{file}:{line}:");
    let field = if path.is_empty() {
        String::new()
    } else {
        format!(": {path}: ")
    };
    let hit = lines
        .iter()
        .find(|l| l.starts_with(&prefix) && l.contains(&field) && l.contains(needle));
    assert!(
        hit.is_some(),
        "no `{prefix}…: {path}: …{needle}…` in:\n{}",
        lines.join("\n")
    );
}

const HEAD: &str = "id: f\ntrigger:\n  webhook:\nsteps:\n";

#[test]
fn every_problem_is_reported_with_file_line_and_field() {
    let semantic = format!(
        "{HEAD}  - id: a\n    map: {{ x: 1 }}\n  - id: a\n    map: {{ x: 2 }}\n  - id: b\n    needs: [zz]\n    map: {{ x: 3 }}\n  - name: no id\n    map: {{ x: 4 }}\n  - id: c\n    htp:\n      url: x\n"
    );
    let fields = format!(
        "{HEAD}  - id: a\n    http:\n      url: \"{{{{#each trigger.body}}}}\"\n      method: POST\n  - id: b\n    map:\n      x: \"$.trigger..[\"\n  - id: c\n    filter:\n      all:\n        - {{ value: \"{{{{trigger.body.n}}}}\", gt: 1, lt: 9 }}\n  - id: d\n    http:\n      url: x\n      metod: POST\n  - id: e\n    filter:\n      - {{ value: x, equals: x }}\n"
    );
    let cycle = format!("{HEAD}  - id: a\n    needs: [b]\n    map: {{ x: 1 }}\n  - id: b\n    needs: [a]\n    map: {{ x: 2 }}\n");
    let template =
        format!("{HEAD}  - id: a\n    map:\n      x: \"{{{{#if trigger.body.x}}}}yes\"\n");
    let (ok, lines, _dir) = validate(&[
        ("semantic.yaml", &semantic),
        ("fields.yaml", &fields),
        ("cycle.yaml", &cycle),
        ("template.yaml", &template),
    ]);

    assert!(!ok, "exit code is non-zero");
    expect(
        &lines,
        "semantic.yaml",
        7,
        "steps[1].id",
        "duplicate step id `a`",
    );
    expect(
        &lines,
        "semantic.yaml",
        10,
        "steps[2].needs[0]",
        "unknown step `zz`",
    );
    expect(
        &lines,
        "semantic.yaml",
        12,
        "steps[3]",
        "missing field `id`",
    );
    expect(
        &lines,
        "semantic.yaml",
        15,
        "steps[4].htp",
        "did you mean `http`?",
    );
    expect(
        &lines,
        "fields.yaml",
        7,
        "steps[0].http.url",
        "invalid template",
    );
    expect(
        &lines,
        "fields.yaml",
        19,
        "steps[3].http.metod",
        "`http` has no field `metod`: did you mean `method`?",
    );
    expect(&lines, "fields.yaml", 11, "steps[1].map.x", "JSONPath");
    expect(
        &lines,
        "fields.yaml",
        21,
        "steps[4].filter",
        "write `all: [...]` (every condition must hold) or `any: [...]`",
    );
    expect(
        &lines,
        "fields.yaml",
        15,
        "steps[2].filter.all[0]",
        "several operators",
    );
    expect(
        &lines,
        "cycle.yaml",
        6,
        "steps[0].needs",
        "cycle: a → b → a",
    );
    expect(
        &lines,
        "template.yaml",
        7,
        "steps[0].map.x",
        "invalid template",
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("./")).count(),
        11,
        "one line per problem:\n{}",
        lines.join("\n")
    );
}

#[test]
fn a_structural_error_names_line_and_field() {
    let bad = format!("{HEAD}  - id: a\n    map: {{ x: 1 }}\nextra: true\n");
    let bad_trigger =
        "id: f\ntrigger:\n  webhook:\n    respond: later\nsteps:\n  - id: a\n    map: { x: 1 }\n";
    let (ok, lines, _dir) = validate(&[("top.yaml", &bad), ("trigger.yaml", bad_trigger)]);
    assert!(!ok);
    expect(
        &lines,
        "top.yaml",
        7,
        "extra",
        "the flow has no field `extra` (its fields are id, name,",
    );
    expect(
        &lines,
        "trigger.yaml",
        4,
        "trigger.webhook.respond",
        "unknown variant `later`",
    );
}

#[test]
fn one_pass_reports_a_trigger_typo_with_every_step_problem() {
    let flow = "\
id: f
titel: Plan changes
trigger:
  webhok:
steps:
  - id: a
    retry: { attemps: 3 }
    http:
      url: https://example.com
      metod: POST
  - not a step
  - id: a
    map: { x: 1 }
  - id: b
    needs: [a]
    mapp: { x: 1 }
";
    // Deeper in a step's config, and in a nested step: the field itself, the closest name.
    let nested = "\
id: g
trigger: { webhook: }
steps:
  - id: a
    http:
      url: https://example.com
      auth: { bearr: x }
  - id: b
    foreach:
      items: \"$.trigger.body.lines\"
      steps:
        - id: c
          http: { url: \"https://example.com\", metod: POST }
";
    let (ok, lines, _dir) = validate(&[("typos.yaml", flow), ("nested.yaml", nested)]);
    expect(
        &lines,
        "nested.yaml",
        7,
        "steps[0].http.auth.bearr",
        "`auth` has no field `bearr`: did you mean `bearer`?",
    );
    expect(
        &lines,
        "nested.yaml",
        13,
        "steps[1].foreach.steps[0].http.metod",
        "`http` has no field `metod`: did you mean `method`?",
    );
    assert!(!ok);
    expect(
        &lines,
        "typos.yaml",
        2,
        "titel",
        "the flow has no field `titel`: did you mean `title`?",
    );
    expect(
        &lines,
        "typos.yaml",
        4,
        "trigger.webhok",
        "`trigger` has no field `webhok`: did you mean `webhook`?",
    );
    expect(
        &lines,
        "typos.yaml",
        7,
        "steps[0].retry.attemps",
        "`retry` has no field `attemps`: did you mean `attempts`?",
    );
    expect(
        &lines,
        "typos.yaml",
        10,
        "steps[0].http.metod",
        "`http` has no field `metod`: did you mean `method`?",
    );
    expect(&lines, "typos.yaml", 11, "steps[1]", "a step is a mapping");
    expect(
        &lines,
        "typos.yaml",
        12,
        "steps[2].id",
        "duplicate step id `a` (first used by steps[0])",
    );
    expect(
        &lines,
        "typos.yaml",
        16,
        "steps[3].mapp",
        "did you mean `map`?",
    );
    let problems: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("./typos.yaml"))
        .collect();
    assert_eq!(problems.len(), 7, "one line per problem: {problems:#?}");
    assert!(
        problems.iter().all(|l| !l.contains("its fields are")),
        "a close name is suggested instead of every field: {problems:#?}"
    );
}

#[test]
fn valid_flows_pass_and_the_shipped_flows_are_valid() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run_cli(&["validate", "flows"], repo);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("6 flow(s) valid"));
}

#[test]
fn a_yaml_alias_bomb_is_refused() {
    // Nine levels of nine aliases: a billion strings if expanded.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
        let refs = vec![format!("*{prev}"); 9].join(",");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    let (ok, lines, _dir) = validate(&[("bomb.yaml", &bomb)]);
    assert!(!ok);
    assert!(
        lines.iter().any(|l| l.starts_with("./bomb.yaml:")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn silent_mistakes_in_a_schedule_are_warned_at_validate_and_preview() {
    let est = "id: est\ntrigger:\n  schedule: { cron: \"* * * * * *\", timezone: EST }\nsteps:\n  - { id: a, map: {} }\n";
    let never = "id: never\ntrigger:\n  schedule: { cron: \"0 0 31 2 *\" }\nsteps:\n  - { id: a, map: {} }\n";
    let (ok, lines, _dir) = validate(&[("est.yaml", est), ("never.yaml", never)]);
    assert!(ok, "warnings do not fail validation: {lines:?}");
    let warned = |needle: &str| {
        lines
            .iter()
            .any(|l| l.starts_with("warning: ./") && l.contains(needle))
    };
    assert!(
        warned("est.yaml:3:36: trigger.schedule.timezone: `EST` is a fixed offset")
            && warned("write the place's IANA name, e.g. `America/New_York`"),
        "{lines:?}"
    );
    assert!(
        warned("est.yaml:3:15: trigger.schedule.cron: `* * * * * *` fires every 1 s"),
        "{lines:?}"
    );
    assert!(
        warned("never.yaml:3:15: trigger.schedule.cron: `0 0 31 2 *` never fires"),
        "{lines:?}"
    );

    let server = crate::support::Server::start(&[("never.yaml", never)]);
    let (status, preview) = server
        .post(
            "/api/v1/flows/never/preview",
            &serde_json::json!({ "event": { "body": {} } }),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        preview["warnings"][0]["field"], "trigger.schedule.cron",
        "{preview}"
    );
    assert_eq!(preview["warnings"][0]["line"], 3);
}

#[tokio::test]
async fn a_date_format_that_is_not_strftime_and_a_field_a_sample_sends_empty_are_warned() {
    let flow = "id: notify\ntrigger:\n  webhook:\nsteps:\n  - id: post\n    http:\n      url: https://example.com/hook\n      json:\n        day: \"{{date_format trigger.received_at 'YYYY-MM-DD'}}\"\n        name: \"{{trigger.body.first}} {{trigger.body.last}}\"\n        phone: \"{{trigger.body.phone}}\"\n  - id: raw\n    http:\n      url: https://example.com/raw\n      body: \"{{trigger.body.note}}\"\n";
    let sample = r#"{ "body": { "first": "", "last": "", "phone": "", "note": "" } }"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notify.yaml"), flow).unwrap();
    std::fs::create_dir_all(dir.path().join("samples/notify")).unwrap();
    std::fs::write(dir.path().join("samples/notify/blank.json"), sample).unwrap();
    let out = run_cli(&["validate", "."], dir.path());
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "warnings do not fail validation: {shown}"
    );
    let warned = |needle: &str| {
        shown
            .lines()
            .any(|l| l.starts_with("warning: ./") && l.contains(needle))
    };
    assert!(
        warned("notify.yaml:9:14: steps[0].http.json.day: `YYYY-MM-DD` is not a strftime format: `date_format` prints it as it is written; write `%Y-%m-%d`"),
        "{shown}"
    );
    assert!(
        warned("notify.yaml:10:15: steps[0].http.json.name: on sample `blank` this field would be sent as empty text")
            && warned("notify.yaml:15:13: steps[1].http.body: on sample `blank` this field would be sent as empty text (its expressions resolved to nothing): give a fallback such as `{{default trigger.body.note \"…\"}}`"),
        "{shown}"
    );
    assert!(
        !shown.contains("json.phone"),
        "a field that resolved to nothing is left out, not sent empty: {shown}"
    );

    let server = crate::support::Server::start(&[("notify.yaml", flow)]);
    let samples = server.flows_dir().join("samples/notify");
    std::fs::create_dir_all(&samples).unwrap();
    std::fs::write(samples.join("blank.json"), sample).unwrap();
    let (status, preview) = server
        .post(
            "/api/v1/flows/notify/preview",
            &serde_json::json!({ "sample": "blank" }),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    let warnings: Vec<(String, u64)> = preview["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["field"].as_str().unwrap().to_owned(),
                w["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        warnings,
        [
            ("steps[0].http.json.day".to_owned(), 9),
            ("steps[0].http.json.name".to_owned(), 10),
            ("steps[1].http.body".to_owned(), 15),
        ],
        "{preview}"
    );
}
