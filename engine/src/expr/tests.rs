//! Behaviour of expressions and conditions against a sample run context.

use serde_json::{json, Value};

use super::*;

fn ctx() -> Value {
    json!({
        "trigger": {
            "method": "POST",
            "headers": { "content-type": "application/json", "X-Signature": "abc" },
            "query": { "ref": "ad" },
            "body": {
                "amount": 42,
                "small": 5,
                "amount_text": "42",
                "price": 1.5,
                "name": "  Ada Lovelace ",
                "email": "ada@example.com",
                "vip": true,
                "customer": { "id": 7, "tier": "gold" },
                "items": [ { "id": "a", "qty": 1 }, { "id": "b", "qty": 3 } ],
                "tags": ["Urgent", "new"],
                "note": "",
                "nothing": null,
                "empty_list": [],
                "empty_object": {},
                "created": "2024-05-01T10:00:00Z",
                "due": "2024-05-03",
                "zip": "02134"
            },
            "received_at": "2024-05-01T10:00:05Z"
        },
        "steps": { "lookup": { "threshold": 10, "plan": "Pro", "allowed": ["gold", "silver"] } },
        "run": { "id": "run_01", "flow": "orders", "attempt": 1, "idempotency_key": "k1" }
    })
}

fn render(value: Value) -> Value {
    let mut c = Compiler::new();
    let expr = c.value(&value).expect("compiles");
    let t = c.finish(Vec::new());
    expr.render(&t, &ctx()).expect("renders")
}

fn text(s: &str) -> String {
    let mut c = Compiler::new();
    let expr = c.text(s).expect("compiles");
    let t = c.finish(Vec::new());
    expr.render(&t, &ctx()).expect("renders")
}

fn value_errors(value: Value) -> Vec<(String, String)> {
    let mut c = Compiler::new();
    c.value(&value)
        .expect_err("should not compile")
        .into_iter()
        .map(|e| (e.field, e.message))
        .collect()
}

fn spec(v: Value) -> ConditionSpec {
    serde_json::from_value(v).expect("valid condition spec")
}

fn verdict(v: Value) -> Verdict {
    let mut c = Compiler::new();
    let cond = c.condition(&spec(v)).expect("condition compiles");
    let t = c.finish(Vec::new());
    cond.evaluate(&t, &ctx()).expect("evaluates")
}

fn passes(v: Value) -> bool {
    verdict(v).passed
}

fn condition_errors(v: Value) -> Vec<(String, String)> {
    let mut c = Compiler::new();
    c.condition(&spec(v))
        .expect_err("should not compile")
        .into_iter()
        .map(|e| (e.field, e.message))
        .collect()
}

fn fields(errors: &[(String, String)]) -> Vec<&str> {
    errors.iter().map(|(f, _)| f.as_str()).collect()
}

// ---- values -------------------------------------------------------------------------------

#[test]
fn whole_path_keeps_the_type() {
    assert_eq!(render(json!("{{ trigger.body.amount }}")), json!(42));
    assert_eq!(render(json!("{{trigger.body.vip}}")), json!(true));
    assert_eq!(
        render(json!("{{trigger.body.customer}}")),
        json!({ "id": 7, "tier": "gold" })
    );
    assert_eq!(
        render(json!("{{trigger.body.tags}}")),
        json!(["Urgent", "new"])
    );
    assert_eq!(
        render(json!("{{trigger.body.email}}")),
        json!("ada@example.com")
    );
}

#[test]
fn whole_path_indexes_arrays() {
    assert_eq!(render(json!("{{trigger.body.items.1.id}}")), json!("b"));
    assert_eq!(render(json!("{{trigger.body.items.[0].qty}}")), json!(1));
    assert_eq!(
        render(json!("{{trigger.headers.[content-type]}}")),
        json!("application/json")
    );
}

#[test]
fn whole_path_missing_is_null() {
    assert_eq!(render(json!("{{trigger.body.nope}}")), Value::Null);
    assert_eq!(render(json!("{{trigger.body.items.9.id}}")), Value::Null);
    assert_eq!(render(json!("{{trigger.body.amount.deeper}}")), Value::Null);
    assert_eq!(render(json!("{{steps.never_ran}}")), Value::Null);
}

#[test]
fn jsonpath_definite_selects_one_or_null() {
    assert_eq!(render(json!("$.trigger.body.amount")), json!(42));
    assert_eq!(
        render(json!("$['trigger']['body']['items'][1]['qty']")),
        json!(3)
    );
    assert_eq!(render(json!("$.trigger.body.nope")), Value::Null);
    assert_eq!(
        render(json!("$.trigger.body.customer")),
        json!({ "id": 7, "tier": "gold" })
    );
}

#[test]
fn jsonpath_indefinite_is_always_an_array() {
    assert_eq!(
        render(json!("$.trigger.body.items[*].id")),
        json!(["a", "b"])
    );
    assert_eq!(render(json!("$..qty")), json!([1, 3]));
    assert_eq!(
        render(json!("$.trigger.body.items[?@.qty > 2].id")),
        json!(["b"])
    );
    assert_eq!(render(json!("$.trigger.body.items[0:1].id")), json!(["a"]));
    assert_eq!(
        render(json!("$.trigger.body.tags[0,1]")),
        json!(["Urgent", "new"])
    );
    assert_eq!(render(json!("$.trigger.body.nope[*]")), json!([]));
}

#[test]
fn bad_jsonpath_is_an_error_with_the_parser_message() {
    let errors = value_errors(json!("$.trigger.body[?"));
    assert_eq!(fields(&errors), [""]);
    assert!(
        errors[0].1.starts_with("invalid JSONPath at column "),
        "{}",
        errors[0].1
    );
    assert!(!errors[0].1.contains('\n'), "one line: {}", errors[0].1);
}

#[test]
fn mixed_templates_render_text() {
    assert_eq!(
        render(json!(
            "Order of {{trigger.body.amount}} for {{trigger.body.email}}"
        )),
        json!("Order of 42 for ada@example.com")
    );
    assert_eq!(render(json!(" {{trigger.body.amount}}")), json!(" 42"));
    assert_eq!(
        render(json!(
            "customer={{trigger.body.customer}} tags={{trigger.body.tags}}"
        )),
        json!(r#"customer={"id":7,"tier":"gold"} tags=["Urgent","new"]"#)
    );
}

#[test]
fn missing_fields_render_empty_in_text() {
    assert_eq!(render(json!("[{{trigger.body.nope}}]")), json!("[]"));
    assert_eq!(render(json!("[{{trigger.body.nothing}}]")), json!("[]"));
    assert_eq!(
        render(json!(
            "{{#if trigger.body.vip}}[{{trigger.body.nope}}]{{/if}}"
        )),
        json!("[]")
    );
}

#[test]
fn no_html_escaping() {
    assert_eq!(
        render(json!("<b>{{trigger.query.ref}} & {{upper \"a<b\"}}</b>")),
        json!("<b>ad & A<B</b>")
    );
}

#[test]
fn literals_stay_literal() {
    assert_eq!(
        render(json!({ "a": 1, "b": [true, null], "c": "plain $ text" })),
        json!({ "a": 1, "b": [true, null], "c": "plain $ text" })
    );
    assert_eq!(
        render(json!(r"\{{not a template}}")),
        json!("{{not a template}}")
    );
    assert_eq!(render(json!("{{! only a comment }}")), json!(""));
    let mut c = Compiler::new();
    assert_eq!(
        c.value(&json!([1, "x"])).unwrap().as_literal(),
        Some(&json!([1, "x"]))
    );
    assert!(c.value(&json!(["{{a}}"])).unwrap().as_literal().is_none());
}

#[test]
fn value_trees_render_every_string() {
    let rendered = render(json!({
        "email": "{{trigger.body.email}}",
        "amount": "{{trigger.body.amount}}",
        "ids": "$.trigger.body.items[*].id",
        "lines": [ "fixed", "{{trigger.body.items.0.qty}} x {{trigger.body.items.0.id}}" ],
        "nested": { "tier": "{{trigger.body.customer.tier}}", "n": 3 }
    }));
    assert_eq!(
        rendered,
        json!({
            "email": "ada@example.com",
            "amount": 42,
            "ids": ["a", "b"],
            "lines": ["fixed", "1 x a"],
            "nested": { "tier": "gold", "n": 3 }
        })
    );
}

#[test]
fn value_errors_are_all_reported_with_their_field() {
    let errors = value_errors(json!({
        "email": "{{#if x}}never closed",
        "ok": "{{trigger.body.email}}",
        "items": ["ok", "{{x}}", "{{bad"],
        "a": { "b": "$.[" },
        "odd key": "{{"
    }));
    assert_eq!(
        fields(&errors),
        ["email", "items[2]", "a.b", r#"["odd key"]"#]
    );
    let (_, message) = &errors[1];
    assert!(
        message.starts_with("invalid template at line 1, column "),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");

    assert_eq!(fields(&value_errors(json!("{{bad"))), [""]);
}

#[test]
fn template_errors_are_caught_at_build() {
    let message = |v: Value| value_errors(v).remove(0).1;
    let m = message(json!("Hi {{#if trigger.body.vip}}VIP"));
    assert!(m.contains("the template ends too early"), "{m}");
    assert!(m.contains("(handlebars: expected"), "{m}");
    let m = message(json!("{{}}"));
    assert!(
        m.starts_with("invalid template at line 1, column 3: unexpected `}}`"),
        "{m}"
    );
    let m = message(json!("{{uppercase trigger.body.email}}"));
    assert!(
        m.starts_with("unknown helper `uppercase` (there are: upper, lower"),
        "{m}"
    );
    let m = message(json!("{{#each trigger.body.items}}{{fmt qty}}{{/each}}"));
    assert!(m.starts_with("unknown helper `fmt`"), "{m}");
    let m = message(json!("{{upper (fmt trigger.body.email)}}"));
    assert!(m.starts_with("unknown helper `fmt`"), "{m}");
    let m = message(json!("{{> footer}}"));
    assert!(m.contains("partials"), "{m}");
}

// ---- text ---------------------------------------------------------------------------------

#[test]
fn text_renders_values_as_text() {
    assert_eq!(text("{{trigger.body.amount}}"), "42");
    assert_eq!(text("{{trigger.body.price}}"), "1.5");
    assert_eq!(text("{{trigger.body.vip}}"), "true");
    assert_eq!(text("{{trigger.body.nope}}"), "");
    assert_eq!(text("{{trigger.body.nothing}}"), "");
    assert_eq!(
        text("{{trigger.body.customer}}"),
        r#"{"id":7,"tier":"gold"}"#
    );
    assert_eq!(text("$.trigger.body.items[*].id"), r#"["a","b"]"#);
    assert_eq!(text("$.trigger.body.email"), "ada@example.com");
    assert_eq!(text("just text"), "just text");
    assert_eq!(text("Hi {{trigger.body.email}}"), "Hi ada@example.com");
}

#[test]
fn text_reports_a_bad_template() {
    let mut c = Compiler::new();
    let err = c.text("Hi {{trigger.body.name").expect_err("bad template");
    assert_eq!(err.field, "");
    assert!(
        err.message
            .starts_with("invalid template at line 1, column"),
        "{}",
        err.message
    );
}

// ---- helpers ------------------------------------------------------------------------------

#[test]
fn helpers_transform_text() {
    assert_eq!(text("{{upper trigger.body.email}}"), "ADA@EXAMPLE.COM");
    assert_eq!(text("{{lower steps.lookup.plan}}"), "pro");
    assert_eq!(text("[{{trim trigger.body.name}}]"), "[Ada Lovelace]");
    assert_eq!(text("{{upper trigger.body.amount}}"), "42");
    assert_eq!(text("[{{upper trigger.body.nope}}]"), "[]");
}

#[test]
fn default_helper_falls_back_on_empty() {
    assert_eq!(text("{{default trigger.body.nope \"unknown\"}}"), "unknown");
    assert_eq!(text("{{default trigger.body.note \"unknown\"}}"), "unknown");
    assert_eq!(
        text("{{default trigger.body.nothing \"unknown\"}}"),
        "unknown"
    );
    assert_eq!(
        text("{{default trigger.body.email \"unknown\"}}"),
        "ada@example.com"
    );
    assert_eq!(
        text("{{default trigger.body.nope trigger.body.note \"last\"}}"),
        "last"
    );
    assert_eq!(text("{{default trigger.body.amount 0}}"), "42");
}

#[test]
fn json_helper_and_objects_in_handlebars() {
    assert_eq!(
        text("{{json trigger.body.customer}}"),
        r#"{"id":7,"tier":"gold"}"#
    );
    assert_eq!(text("{{json trigger.body.email}}"), r#""ada@example.com""#);
    assert_eq!(text("{{json trigger.body.nope}}"), "null");
    assert_eq!(
        text("{{#each trigger.body.items}}{{this}};{{/each}}"),
        r#"{"id":"a","qty":1};{"id":"b","qty":3};"#
    );
    assert_eq!(
        text("{{#with trigger.body}}{{customer}} {{tags}}{{/with}}"),
        r#"{"id":7,"tier":"gold"} ["Urgent","new"]"#
    );
    assert_eq!(
        text("{{default trigger.body.nope trigger.body.customer}}"),
        r#"{"id":7,"tier":"gold"}"#
    );
}

#[test]
fn helpers_nest_and_blocks_work() {
    assert_eq!(
        text("{{upper (default trigger.body.nope \"anon\")}}"),
        "ANON"
    );
    assert_eq!(
        text("{{#if trigger.body.vip}}VIP{{else}}regular{{/if}} {{#each trigger.body.tags}}{{@index}}={{lower this}} {{/each}}"),
        "VIP 0=urgent 1=new "
    );
    assert_eq!(text("{{#if trigger.body.nope}}yes{{else}}no{{/if}}"), "no");
}

#[test]
fn fast_path_and_handlebars_agree() {
    let inner = "{{trigger.body.customer}}|{{trigger.body.items.0.id}}|{{trigger.body.nope}}|{{trigger.body.price}}|{{trigger.body.tags}}|{{trigger.body.vip}}";
    let forced = format!("{{{{#if true}}}}{inner}{{{{/if}}}}");
    assert_eq!(text(inner), text(&forced));
}

#[test]
fn helper_calls_render_without_handlebars_as_with_it() {
    let inner = "{{lower trigger.body.email}}|{{upper trigger.body.nope}}|{{default trigger.body.nope \"anon\"}}|{{default trigger.body.nope trigger.body.customer}}|{{round trigger.body.price}}|{{truncate trigger.body.name 4}}|{{json trigger.body.tags}}|{{add trigger.body.amount 1}}";
    let mut c = Compiler::new();
    c.text(inner).unwrap();
    assert!(
        c.finish(Vec::new()).0.registry.get_templates().is_empty(),
        "helper calls on paths and literals take the fast path"
    );
    let forced = format!("{{{{#if true}}}}{inner}{{{{/if}}}}");
    assert_eq!(text(inner), text(&forced));
    assert_eq!(
        text(inner),
        r#"ada@example.com||anon|{"id":7,"tier":"gold"}|2|  Ad|["Urgent","new"]|43"#
    );

    // A failing helper gives the message handlebars gives, with the same line and column.
    let failing = "total:\n  {{upper trigger.body.email trigger.body.name}}";
    let message = |s: &str| {
        let mut c = Compiler::new();
        let expr = c.text(s).unwrap();
        let t = c.finish(Vec::new());
        expr.render(&t, &ctx()).unwrap_err().message
    };
    let fast = message(failing);
    assert_eq!(
        fast,
        "template failed at line 2, column 3: upper takes one value, got 2"
    );
    assert_eq!(
        message(&format!("{{{{#if true}}}}{failing}{{{{/if}}}}")),
        fast
    );
}

#[test]
fn helper_failure_is_a_render_error() {
    let mut c = Compiler::new();
    let expr = c
        .value(&json!({ "x": ["{{upper trigger.body.email trigger.body.name}}"] }))
        .unwrap();
    let t = c.finish(Vec::new());
    let err = expr.render(&t, &ctx()).expect_err("upper takes one value");
    assert_eq!(err.field, "x[0]");
    assert!(
        err.message.contains("upper takes one value, got 2"),
        "{}",
        err.message
    );
    assert!(err.message.contains("line 1, column 1"), "{}", err.message);
}

#[test]
fn templates_of_another_flow_are_refused() {
    let mut a = Compiler::new();
    let expr = a
        .text("{{#if trigger.body.vip}}{{upper trigger.body.email}}{{/if}}")
        .unwrap();
    let _ = a.finish(Vec::new());
    let mut b = Compiler::new();
    b.text("{{#if trigger.body.vip}}{{lower trigger.body.email}}{{/if}}")
        .unwrap();
    let other = b.finish(Vec::new());
    let err = expr.render(&other, &ctx()).expect_err("wrong templates");
    assert!(err.message.contains("another flow"), "{}", err.message);
}

#[test]
fn templates_are_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<Templates>();
    assert_send_sync::<ValueExpr>();
    assert_send_sync::<TextExpr>();
    assert_send_sync::<Condition>();
}

// ---- conditions: operators ----------------------------------------------------------------

#[test]
fn equals_compares_with_coercions() {
    assert!(passes(
        json!({ "value": "{{trigger.body.amount}}", "equals": 42 })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.amount_text}}", "equals": 42 })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.amount}}", "equals": "42" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.price}}", "equals": "1.50" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.amount}}", "equals": 42.0 })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.vip}}", "equals": "true" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.customer}}", "equals": { "tier": "gold", "id": "7" } })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.amount}}", "equals": 43 })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.zip}}", "equals": "2134" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.zip}}", "equals": 2134 })
    ));
    assert!(!passes(
        json!({ "value": "{{steps.lookup.plan}}", "equals": "pro" })
    ));
    assert!(passes(
        json!({ "value": "{{steps.lookup.plan}}", "equals": "pro", "ignore_case": true })
    ));
    assert!(passes(
        json!({ "value": "{{steps.lookup.plan}}", "not_equals": "pro" })
    ));
    assert!(!passes(
        json!({ "value": "{{steps.lookup.plan}}", "not_equals": "PRO", "ignore_case": true })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.amount}}", "not_equals": "41" })
    ));
}

#[test]
fn ordering_compares_numbers() {
    assert!(passes(
        json!({ "value": "{{trigger.body.amount}}", "gt": 10 })
    ));
    assert!(
        passes(json!({ "value": "{{trigger.body.amount_text}}", "gt": "9" })),
        "numeric strings compare as numbers"
    );
    assert!(!passes(
        json!({ "value": "{{trigger.body.amount}}", "gt": 42 })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.amount}}", "gte": 42 })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.price}}", "lt": 2 })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.price}}", "lt": 1.5 })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.price}}", "lte": "1.5" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.amount}}", "gt": "{{steps.lookup.threshold}}" })
    ));
    assert!(
        !passes(json!({ "value": "{{trigger.body.email}}", "gt": 1 })),
        "text is not ordered"
    );
    assert!(
        !passes(json!({ "value": "{{trigger.body.email}}", "lt": "zzz" })),
        "text is not ordered"
    );
    assert!(!passes(
        json!({ "value": "{{trigger.body.vip}}", "gte": 0 })
    ));
}

#[test]
fn ordering_compares_dates() {
    assert!(passes(
        json!({ "value": "{{trigger.body.created}}", "gt": "2024-04-30" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.created}}", "lt": "2024-05-01T10:00:01Z" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.created}}", "lt": "2024-05-01T12:00:00+01:00" })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.created}}", "lt": "2024-05-01T10:00:00+01:00" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.due}}", "gte": "{{trigger.body.created}}" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.due}}", "lte": "2024-05-03" })
    ));
    assert!(
        !passes(json!({ "value": "{{trigger.body.due}}", "gt": "2024-13-01" })),
        "not a date"
    );
}

#[test]
fn contains_on_strings_lists_and_objects() {
    assert!(passes(
        json!({ "value": "{{trigger.body.email}}", "contains": "@example." })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.email}}", "contains": "EXAMPLE" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.email}}", "contains": "EXAMPLE", "ignore_case": true })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.tags}}", "contains": "new" })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.tags}}", "contains": "urgent" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.tags}}", "contains": "urgent", "ignore_case": true })
    ));
    assert!(passes(
        json!({ "value": "$.trigger.body.items[*].qty", "contains": "3" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.headers}}", "contains": "content-type" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.headers}}", "contains": "x-signature", "ignore_case": true })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.amount}}", "contains": 2 })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.email}}", "not_contains": "gmail" })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.tags}}", "not_contains": "new" })
    ));
}

#[test]
fn starts_ends_and_matches() {
    assert!(passes(
        json!({ "value": "{{trigger.body.email}}", "starts_with": "ada@" })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.email}}", "starts_with": "ADA" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.email}}", "starts_with": "ADA", "ignore_case": true })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.email}}", "ends_with": ".com" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.amount}}", "ends_with": 2 })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.tags}}", "starts_with": "Urgent" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.email}}", "matches": "^[a-z]+@example\\.com$" })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.email}}", "matches": "^ADA@" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.email}}", "matches": "^ADA@", "ignore_case": true })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.amount}}", "matches": "^\\d+$" })
    ));
}

#[test]
fn in_and_not_in() {
    assert!(passes(
        json!({ "value": "{{trigger.body.customer.tier}}", "in": ["silver", "gold"] })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.customer.tier}}", "in": ["GOLD"] })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.customer.tier}}", "in": ["GOLD"], "ignore_case": true })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.amount}}", "in": ["41", "42"] })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.customer.tier}}", "in": ["{{steps.lookup.allowed.0}}"] })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.customer.tier}}", "not_in": ["bronze"] })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.customer.tier}}", "not_in": ["gold"] })
    ));
}

#[test]
fn exists_and_is_empty() {
    assert!(passes(
        json!({ "value": "{{trigger.body.email}}", "exists": true })
    ));
    assert!(
        passes(json!({ "value": "{{trigger.body.note}}", "exists": true })),
        "\"\" exists"
    );
    assert!(!passes(
        json!({ "value": "{{trigger.body.nope}}", "exists": true })
    ));
    assert!(
        !passes(json!({ "value": "{{trigger.body.nothing}}", "exists": true })),
        "null counts as missing"
    );
    assert!(passes(
        json!({ "value": "{{trigger.body.nope}}", "exists": false })
    ));
    assert!(passes(
        json!({ "value": "$.trigger.body.nope", "exists": false })
    ));
    for empty in ["note", "nothing", "nope", "empty_list", "empty_object"] {
        let value = format!("{{{{trigger.body.{empty}}}}}");
        assert!(
            passes(json!({ "value": value, "is_empty": true })),
            "{empty} is empty"
        );
        assert!(
            !passes(json!({ "value": value, "is_empty": false })),
            "{empty} is empty"
        );
    }
    for full in ["email", "amount", "vip", "tags", "customer"] {
        let value = format!("{{{{trigger.body.{full}}}}}");
        assert!(
            !passes(json!({ "value": value, "is_empty": true })),
            "{full} is not empty"
        );
        assert!(
            passes(json!({ "value": value, "is_empty": false })),
            "{full} is not empty"
        );
    }
    assert!(passes(
        json!({ "value": "$.trigger.body.nope[*]", "is_empty": true })
    ));
}

#[test]
fn a_missing_value_passes_only_negative_operators() {
    let missing = "{{trigger.body.nope}}";
    let operators = [
        ("equals", json!("x"), false),
        ("equals", json!(""), false),
        ("not_equals", json!("x"), true),
        ("gt", json!(0), false),
        ("gte", json!(0), false),
        ("lt", json!(0), false),
        ("lte", json!(0), false),
        ("contains", json!(""), false),
        ("not_contains", json!("x"), true),
        ("starts_with", json!(""), false),
        ("ends_with", json!(""), false),
        ("matches", json!(".*"), false),
        ("in", json!(["x", ""]), false),
        ("not_in", json!(["x"]), true),
        ("exists", json!(true), false),
        ("exists", json!(false), true),
        ("is_empty", json!(true), true),
        ("is_empty", json!(false), false),
    ];
    for (op, operand, expected) in operators {
        let mut condition = serde_json::Map::new();
        condition.insert("value".into(), json!(missing));
        condition.insert(op.into(), operand.clone());
        assert_eq!(
            passes(Value::Object(condition)),
            expected,
            "{op}: {operand} on a missing value"
        );
    }
}

#[test]
fn a_missing_operand_is_compared_like_null() {
    assert!(!passes(
        json!({ "value": "{{trigger.body.email}}", "equals": "{{steps.lookup.nope}}" })
    ));
    assert!(passes(
        json!({ "value": "{{trigger.body.email}}", "not_equals": "{{steps.lookup.nope}}" })
    ));
    assert!(!passes(
        json!({ "value": "{{trigger.body.amount}}", "gt": "{{steps.lookup.nope}}" })
    ));
}

#[test]
fn groups_combine() {
    let gold = json!({ "value": "{{trigger.body.customer.tier}}", "equals": "gold" });
    let big = json!({ "value": "{{trigger.body.amount}}", "gt": 100 });
    assert!(!passes(json!({ "all": [gold, big] })));
    assert!(passes(json!({ "any": [gold, big] })));
    assert!(passes(json!({ "not": big })));
    assert!(!passes(json!({ "not": gold })));
    assert!(passes(
        json!({ "all": [gold, { "not": big }, { "any": [big, gold] }] })
    ));
    assert!(!passes(json!({ "any": [big, { "not": gold }] })));
}

// ---- conditions: reasons ------------------------------------------------------------------

#[test]
fn a_passing_verdict_has_no_reason() {
    assert_eq!(
        verdict(json!({ "value": "{{trigger.body.amount}}", "gt": 10 })),
        Verdict {
            passed: true,
            reason: None
        }
    );
}

#[test]
fn reasons_name_the_condition_the_value_and_what_it_was() {
    let reason = |v: Value| verdict(v).reason.expect("failed with a reason");
    assert_eq!(
        reason(json!({ "all": [
            { "value": "{{trigger.body.email}}", "exists": true },
            { "value": "{{trigger.body.small}}", "gt": 10 }
        ] })),
        "all[1]: {{trigger.body.small}} (was 5) is not greater than 10"
    );
    assert_eq!(
        reason(json!({ "all": [{ "value": "{{trigger.body.nope}}", "exists": true }] })),
        "all[0]: {{trigger.body.nope}} does not exist"
    );
    assert_eq!(
        reason(json!({ "value": "{{trigger.body.email}}", "exists": false })),
        r#"{{trigger.body.email}} (was "ada@example.com") exists"#
    );
    assert_eq!(
        reason(json!({ "value": "{{trigger.body.nope}}", "gt": 10 })),
        "{{trigger.body.nope}} (was missing) is not greater than 10"
    );
    assert_eq!(
        reason(json!({ "value": "{{trigger.body.email}}", "gt": 10 })),
        r#"{{trigger.body.email}} (was "ada@example.com") is not greater than 10 (only numbers and dates can be compared)"#
    );
    assert_eq!(
        reason(json!({ "value": "{{trigger.body.small}}", "gte": "{{steps.lookup.threshold}}" })),
        "{{trigger.body.small}} (was 5) is not greater than or equal to {{steps.lookup.threshold}} (which is 10)"
    );
    assert_eq!(
        reason(
            json!({ "value": "{{steps.lookup.plan}}", "equals": "enterprise", "ignore_case": true })
        ),
        r#"{{steps.lookup.plan}} (was "Pro") does not equal "enterprise" (ignoring case)"#
    );
    assert_eq!(
        reason(json!({ "value": "{{trigger.body.customer.tier}}", "in": ["silver", "bronze"] })),
        r#"{{trigger.body.customer.tier}} (was "gold") is not one of ["silver","bronze"]"#
    );
    assert_eq!(
        reason(json!({ "value": "{{trigger.body.email}}", "matches": "^bob" })),
        r#"{{trigger.body.email}} (was "ada@example.com") does not match /^bob/"#
    );
    assert_eq!(
        reason(json!({ "value": "{{trigger.body.note}}", "is_empty": false })),
        r#"{{trigger.body.note}} (was "") is empty"#
    );
}

#[test]
fn reasons_for_groups() {
    let reason = |v: Value| verdict(v).reason.expect("failed with a reason");
    assert_eq!(
        reason(json!({ "any": [
            { "value": "{{trigger.body.small}}", "gt": 10 },
            { "value": "{{trigger.body.customer.tier}}", "equals": "platinum" }
        ] })),
        r#"any: none passed (any[0]: {{trigger.body.small}} (was 5) is not greater than 10; any[1]: {{trigger.body.customer.tier}} (was "gold") does not equal "platinum")"#
    );
    assert_eq!(
        reason(
            json!({ "all": [{ "not": { "value": "{{trigger.body.customer.tier}}", "equals": "gold" } }] })
        ),
        r#"all[0].not: {{trigger.body.customer.tier}} (was "gold") equals "gold""#
    );
    assert_eq!(
        reason(json!({ "not": { "all": [{ "value": "{{trigger.body.amount}}", "gt": 1 }] } })),
        "not.all: every condition passed"
    );
}

#[test]
fn long_values_are_cut_in_reasons() {
    let mut c = Compiler::new();
    let cond = c
        .condition(&spec(
            json!({ "value": "{{trigger.body.text}}", "equals": "short" }),
        ))
        .unwrap();
    let t = c.finish(Vec::new());
    let long = "x".repeat(500);
    let verdict = cond
        .evaluate(&t, &json!({ "trigger": { "body": { "text": long } } }))
        .unwrap();
    let reason = verdict.reason.unwrap();
    assert!(reason.len() < 200, "{reason}");
    assert!(reason.contains('…'), "{reason}");
}

// ---- conditions: build errors -------------------------------------------------------------

#[test]
fn condition_errors_are_all_reported_with_their_field() {
    let errors = condition_errors(json!({ "all": [
        { "value": "{{trigger.body.email", "exists": true },
        { "value": "{{trigger.body.amount}}", "gt": "$.steps[" },
        { "any": [{ "value": "{{trigger.body.email}}", "matches": "(unclosed" }] },
        { "value": "{{trigger.body.amount}}", "gt": 1, "lt": 5 },
        { "value": "{{trigger.body.amount}}" },
        { "value": "{{trigger.body.amount}}", "in": ["ok", "{{bad"] },
        { "not": { "value": "{{trigger.body.amount}}", "equals": null } }
    ] }));
    assert_eq!(
        fields(&errors),
        [
            "all[0].value",
            "all[1].gt",
            "all[2].any[0].matches",
            "all[3]",
            "all[4]",
            "all[5].in[1]",
            "all[6].not.equals"
        ]
    );
    let message = |i: usize| errors[i].1.as_str();
    assert!(message(0).starts_with("invalid template"), "{}", message(0));
    assert!(message(1).starts_with("invalid JSONPath"), "{}", message(1));
    assert!(
        message(2).starts_with("invalid regular expression: "),
        "{}",
        message(2)
    );
    assert!(!message(2).contains('\n'), "{}", message(2));
    assert!(
        message(3).contains("several operators (gt, lt)"),
        "{}",
        message(3)
    );
    assert!(message(4).starts_with("no operator"), "{}", message(4));
    assert!(message(6).contains("exists: false"), "{}", message(6));
}

#[test]
fn condition_shape_errors() {
    let errors = condition_errors(json!({ "all": [] }));
    assert_eq!(fields(&errors), ["all"]);
    assert!(errors[0].1.contains("at least one"), "{}", errors[0].1);

    let errors = condition_errors(json!({ "any": [{ "all": [] }, {}] }));
    assert_eq!(fields(&errors), ["any[0].all", "any[1]"]);
    assert!(
        errors[1].1.starts_with("empty condition"),
        "{}",
        errors[1].1
    );

    let errors = condition_errors(
        json!({ "all": [{ "value": "x", "equals": 1 }], "value": "y", "equals": 2 }),
    );
    assert_eq!(fields(&errors), [""]);
    assert!(
        errors[0].1.contains("both (all and value, equals)"),
        "{}",
        errors[0].1
    );

    let errors = condition_errors(
        json!({ "all": [{ "value": "x", "equals": 1 }], "any": [{ "value": "x", "equals": 1 }] }),
    );
    assert_eq!(fields(&errors), [""]);
    assert!(
        errors[0].1.contains("several groups (all, any)"),
        "{}",
        errors[0].1
    );

    let errors = condition_errors(json!({
        "all": [{ "value": "x" }],
        "not": { "value": "{{bad", "exists": true }
    }));
    assert_eq!(
        fields(&errors),
        ["", "all[0]", "not.value"],
        "groups are still checked"
    );

    let errors = condition_errors(json!({ "equals": 2 }));
    assert_eq!(fields(&errors), [""]);
    assert!(errors[0].1.starts_with("missing value"), "{}", errors[0].1);

    let errors = condition_errors(json!({ "value": "x" }));
    assert_eq!(fields(&errors), [""]);
    assert!(errors[0].1.starts_with("no operator"), "{}", errors[0].1);

    let errors =
        condition_errors(json!({ "any": [{ "value": "x", "equals": "x" }], "ignore_case": true }));
    assert_eq!(fields(&errors), ["ignore_case"]);
}

#[test]
fn condition_spec_rejects_unknown_fields() {
    let err = serde_json::from_value::<ConditionSpec>(json!({ "value": "x", "equal": 1 }))
        .expect_err("unknown field");
    assert!(err.to_string().contains("unknown field `equal`"), "{err}");
}

#[test]
fn condition_spec_has_a_documented_schema() {
    let schema = serde_json::to_value(schemars::schema_for!(ConditionSpec)).unwrap();
    let properties = &schema["properties"];
    for key in [
        "all",
        "any",
        "not",
        "value",
        "equals",
        "in",
        "not_in",
        "matches",
        "ignore_case",
    ] {
        let description = properties[key]["description"].as_str().unwrap_or_default();
        assert!(!description.is_empty(), "{key} has a description");
    }
    assert_eq!(schema["additionalProperties"], json!(false));
}

#[test]
fn huge_values_are_cut_in_reasons() {
    let mut c = Compiler::new();
    let cond = c
        .condition(&spec(
            json!({ "value": "{{trigger.body.list}}", "contains": "needle" }),
        ))
        .unwrap();
    let t = c.finish(Vec::new());
    let list: Vec<String> = (0..100_000).map(|i| format!("élément {i}")).collect();
    let verdict = cond
        .evaluate(&t, &json!({ "trigger": { "body": { "list": list } } }))
        .unwrap();
    let reason = verdict.reason.unwrap();
    assert!(
        reason.starts_with(r#"{{trigger.body.list}} (was ["élément 0","élément 1""#),
        "{reason}"
    );
    assert!(
        reason.contains("…) does not contain \"needle\""),
        "{reason}"
    );
}

// ---- formatter helpers ----------------------------------------------------------------------

/// The render error of a template (a helper given the wrong kind of input).
fn render_error(template: &str) -> String {
    let mut c = Compiler::new();
    let expr = c.value(&json!(template)).expect("compiles");
    let t = c.finish(Vec::new());
    expr.render(&t, &ctx())
        .expect_err("fails to render")
        .message
}

#[test]
fn text_helpers_reshape_text_and_keep_missing_input_missing() {
    assert_eq!(
        text("{{title \"ada LOVELACE-byron\"}}"),
        "Ada Lovelace-Byron"
    );
    assert_eq!(text("{{truncate \"Hello world\" 5}}"), "Hello");
    assert_eq!(text("{{truncate \"Hello world\" 8 \"…\"}}"), "Hello w…");
    assert_eq!(text("{{truncate \"short\" 8 \"…\"}}"), "short");
    assert_eq!(
        text("{{replace trigger.body.email \"@\" \" at \"}}"),
        "ada at example.com"
    );
    assert_eq!(text("{{split \"a, b,c\" \",\"}}"), r#"["a","b","c"]"#);
    assert_eq!(text("{{join trigger.body.tags \" + \"}}"), "Urgent + new");
    assert_eq!(text("{{slug \"  Déjà Vu: Plan #2 \"}}"), "d-j-vu-plan-2");
    assert_eq!(
        text("{{extract_email \"Contact: Ada <ada.l@example.co.uk>, thanks\"}}"),
        "ada.l@example.co.uk"
    );
    assert_eq!(
        text("{{extract_url \"see https://example.com/a?b=1. Bye\"}}"),
        "https://example.com/a?b=1"
    );
    assert_eq!(
        text("{{extract_number \"Total: $1,234.50 due\"}}"),
        "1234.5"
    );
    assert_eq!(text("{{extract_number \"none here\"}}"), "");
    assert_eq!(text("{{extract_email trigger.body.nope}}"), "");
    // Missing input stays missing, so `default` can fill it in.
    for helper in ["title", "slug", "base64_encode", "url_encode", "sha256"] {
        assert_eq!(
            text(&format!("[{{{{{helper} trigger.body.nope}}}}]")),
            "[]",
            "{helper}"
        );
    }
    assert_eq!(
        text("{{default (title trigger.body.nope) \"Friend\"}}"),
        "Friend"
    );
    assert_eq!(text("{{split trigger.body.nope \",\"}}"), "");
    assert!(render_error("{{join trigger.body.email \",\"}}").contains("join takes a list"));
    assert!(render_error("{{truncate trigger.body.email}}").contains("truncate needs"));
    assert!(render_error("{{split trigger.body.email \"\"}}").contains("separator is empty"));
}

#[test]
fn number_helpers_take_numbers_or_numeric_text() {
    assert_eq!(text("{{round 3.14159 2}}"), "3.14");
    assert_eq!(text("{{round trigger.body.price}}"), "2");
    assert_eq!(text("{{add trigger.body.amount_text 8}}"), "50");
    assert_eq!(
        text("{{subtract trigger.body.amount trigger.body.small}}"),
        "37"
    );
    assert_eq!(text("{{multiply trigger.body.price 3}}"), "4.5");
    assert_eq!(text("{{divide trigger.body.amount 8}}"), "5.25");
    assert_eq!(text("{{round (divide 10 3) 3}}"), "3.333");
    assert_eq!(
        text("{{add trigger.body.nope 1}}"),
        "",
        "missing stays missing"
    );
    assert!(render_error("{{divide 1 0}}").contains("cannot divide by zero"));
    assert!(render_error("{{add trigger.body.email 1}}")
        .contains("takes numbers, not `ada@example.com`"));
    assert!(render_error("{{round trigger.body.customer}}").contains("round takes a number"));
    assert!(render_error("{{add 1}}").contains("takes two numbers"));
}

#[test]
fn utility_helpers_encode_hash_and_make_ids() {
    assert_eq!(text("{{base64_encode \"ada:s3cret\"}}"), "YWRhOnMzY3JldA==");
    assert_eq!(text("{{base64_decode \"YWRhOnMzY3JldA==\"}}"), "ada:s3cret");
    assert!(render_error("{{base64_decode \"%%%\"}}").contains("takes base64 text"));
    assert_eq!(text("{{url_encode \"a b&c=d/é\"}}"), "a+b%26c%3Dd%2F%C3%A9");
    assert_eq!(
        text("{{sha256 \"abc\"}}"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let (a, b) = (text("{{uuid}}"), text("{{uuid}}"));
    assert_ne!(a, b);
    let parts: Vec<_> = a.split('-').map(str::len).collect();
    assert_eq!(parts, [8, 4, 4, 4, 12]);
    assert_eq!(&a[14..15], "4", "version 4");
}

#[test]
fn number_helpers_format_amounts() {
    assert_eq!(text("{{format_number 1234567.891 2}}"), "1,234,567.89");
    assert_eq!(
        text("{{format_number 1234567.891 2 \".\" \",\"}}"),
        "1.234.567,89"
    );
    assert_eq!(text("{{format_number -1234}}"), "-1,234");
    assert_eq!(text("{{format_number -0.001 2}}"), "0.00");
    assert_eq!(text("{{currency 1234.5 \"usd\"}}"), "$1,234.50");
    assert_eq!(
        text("{{currency (divide 490000 100) \"EUR\"}}"),
        "€4,900.00"
    );
    assert_eq!(text("{{currency 1500 \"jpy\"}}"), "¥1,500");
    assert_eq!(text("{{currency -12 \"sek\"}}"), "-12.00 SEK");
    assert_eq!(text("[{{currency trigger.body.nope \"usd\"}}]"), "[]");
    assert!(render_error("{{format_number trigger.body.email}}").contains("takes a number"));
    assert!(render_error("{{currency 5}}").contains("takes an amount and a currency code"));
}

#[test]
fn date_helpers_parse_format_shift_and_compare() {
    for written in [
        "2026-03-08T09:30:00Z",
        "2026-03-08T10:30:00+01:00",
        "Sun, 08 Mar 2026 09:30:00 +0000",
        "2026-03-08 09:30",
        "03/08/2026 09:30",
        "1772962200",
        "1772962200000",
    ] {
        assert_eq!(
            text(&format!("{{{{date_parse \"{written}\"}}}}")),
            "2026-03-08T09:30:00Z",
            "{written}"
        );
    }
    assert_eq!(
        text("{{date_parse \"2026-03-08\"}}"),
        "2026-03-08T00:00:00Z"
    );
    assert_eq!(
        text("{{date_format \"2026-03-08T09:30:00Z\" \"%d %b %Y, %H:%M\"}}"),
        "08 Mar 2026, 09:30"
    );
    assert_eq!(
        text("{{date_add \"2026-03-08T09:30:00Z\" \"2d 1h\"}}"),
        "2026-03-10T10:30:00Z"
    );
    assert_eq!(
        text("{{date_subtract \"2026-03-08T09:30:00Z\" \"90m\"}}"),
        "2026-03-08T08:00:00Z"
    );
    // New York moves to daylight saving time at 2:00 on 8 March 2026: 06:30Z is 01:30 EST, and
    // 07:30Z is 03:30 EDT.
    assert_eq!(
        text("{{date_tz \"2026-03-08T06:30:00Z\" \"America/New_York\"}}"),
        "2026-03-08T01:30:00-05:00"
    );
    assert_eq!(
        text("{{date_tz \"2026-03-08T07:30:00Z\" \"America/New_York\"}}"),
        "2026-03-08T03:30:00-04:00"
    );
    assert_eq!(
        text("{{date_format \"2026-07-01T12:00:00Z\" \"%H:%M %Z\" \"Europe/Paris\"}}"),
        "14:00 CEST"
    );
    assert_eq!(
        text("{{date_diff \"2026-03-01\" \"2026-03-08T12:00:00Z\"}}"),
        "7"
    );
    assert_eq!(
        text("{{date_diff \"2026-03-08T12:00:00Z\" \"2026-03-08T09:00:00Z\" \"hours\"}}"),
        "-3"
    );
    assert_eq!(
        text("{{date_before \"2026-01-01\" \"2026-01-02\"}}"),
        "true"
    );
    assert_eq!(
        text("{{date_after \"2026-01-01\" \"2026-01-02\"}}"),
        "false"
    );
    assert_eq!(text("[{{date_add trigger.body.nope \"1d\"}}]"), "[]");
    assert!(render_error("{{date_parse \"next tuesday\"}}").contains("takes a date"));
    assert!(render_error("{{date_add \"2026-01-01\" \"soon\"}}").contains("takes a duration"));
    assert!(render_error("{{date_tz \"2026-01-01\" \"Mars/Olympus\"}}").contains("not a timezone"));
    assert!(
        render_error("{{date_diff \"2026-01-01\" \"2026-01-02\" \"weeks\"}}")
            .contains("counts seconds")
    );
}

#[test]
fn lookup_and_json_helpers() {
    let mut c = Compiler::new();
    let expr = c
        .value(&json!({
            "plan": "{{lookup_or trigger.body.plans \"price_pro\" \"Other\"}}",
            "unknown": "{{lookup_or trigger.body.plans \"price_x\" \"Other\"}}",
            "parsed": "{{parse_json \"{\\\"a\\\": [1, 2]}\"}}",
            "picked": "{{pick trigger.body \"email\" \"nope\"}}",
            "merged": "{{merge (parse_json \"{\\\"a\\\": 1, \\\"b\\\": 1}\") (parse_json \"{\\\"b\\\": 2}\")}}",
        }))
        .expect("compiles");
    let t = c.finish(Vec::new());
    let mut data = ctx();
    data["trigger"]["body"]["plans"] = json!({ "price_pro": "Pro" });
    let out = expr.render(&t, &data).unwrap();
    assert_eq!(out["plan"], "Pro");
    assert_eq!(out["unknown"], "Other");
    assert_eq!(out["parsed"], json!({ "a": [1, 2] }));
    assert_eq!(out["picked"], json!({ "email": "ada@example.com" }));
    assert_eq!(out["merged"], json!({ "a": 1, "b": 2 }));
    assert!(render_error("{{parse_json \"{oops\"}}").contains("takes JSON text"));
    assert!(render_error("{{pick trigger.body.email \"a\"}}").contains("takes an object"));
    assert!(render_error("{{lookup_or trigger.body.email \"a\" \"b\"}}").contains("takes a table"));
}

#[test]
fn a_request_leaves_out_fields_that_resolved_to_nothing_and_clears_only_on_purpose() {
    let mut c = Compiler::new();
    let expr = c
        .value(&json!({
            "name": "{{trigger.body.new_name}}",
            "phone": "{{trigger.body.note}}",
            "email": "{{trigger.body.email}}",
            "greeting": "Hi {{trigger.body.missing}}",
            "metadata": { "plan": "{{steps.lookup.plan}}", "old": "{{trigger.body.nothing}}" },
            "description": "$clear",
            "literal": { "fax": "$clear", "kept": "" },
            "echo": "{{trigger.body.marker}}",
            "list": ["{{trigger.body.missing}}"],
        }))
        .unwrap();
    let t = c.finish(Vec::new());
    let mut ctx = ctx();
    ctx["trigger"]["body"]["marker"] = json!("$clear");
    let mut left_out = LeftOut::new();
    let request = expr.render_request(&t, &ctx, &mut left_out).unwrap();
    assert_eq!(
        request,
        json!({
            "email": "ada@example.com",
            "greeting": "Hi ",
            "metadata": { "plan": "Pro" },
            "description": null,
            "literal": { "fax": null, "kept": "" },
            // Data that reads `$clear` is data, not the marker.
            "echo": "$clear",
            "list": [null],
        })
    );
    assert_eq!(
        left_out,
        *json!({
            "name": "its expression resolved to nothing",
            "phone": "its expression resolved to empty text",
            "metadata.old": "its expression resolved to nothing",
        })
        .as_object()
        .unwrap()
    );
}

#[test]
fn deep_or_long_templates_are_refused_quickly_with_their_place() {
    let deep_call = |n: usize| format!("{{{{upper {}a{}}}}}", "(upper ".repeat(n), ")".repeat(n));
    let deep_if = |n: usize| format!("{}x{}", "{{#if a}}".repeat(n), "{{/if}}".repeat(n));
    let start = std::time::Instant::now();
    for (template, field) in [
        (deep_call(5_000), "subexpressions nest more than 32 deep"),
        (deep_if(10_000), "nest more than 32 deep"),
        (
            "{{#if a}}x{{/if}}".repeat(10_000),
            "more than 256 expressions",
        ),
        ("{{upper a}} ".repeat(10_000), "more than 256 expressions"),
    ] {
        let errors = value_errors(json!({ "x": template }));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "x");
        assert!(errors[0].1.contains(field), "{}", errors[0].1);
        assert!(
            errors[0].1.contains("at line 1, column "),
            "{}",
            errors[0].1
        );
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    // At the bounds, templates compile and render; quoted parentheses and comments do not count.
    assert_eq!(text(&deep_call(31)), "");
    assert_eq!(text(&deep_if(32)), "");
    assert_eq!(text("{{upper \"((((\"}}{{!-- ((( {{ --}}"), "((((");
    assert_eq!(text(&"{{x}}".repeat(256)), "");
}

/// Every helper, called alone as a whole value: (template, its typed value). Block helpers
/// (`if`, `unless`, `each`, `with`) render text by nature and are not here.
fn helpers_alone() -> Vec<(&'static str, Value)> {
    vec![
        ("{{upper trigger.body.email}}", json!("ADA@EXAMPLE.COM")),
        ("{{lower steps.lookup.plan}}", json!("pro")),
        ("{{trim trigger.body.name}}", json!("Ada Lovelace")),
        ("{{title \"ada LOVELACE\"}}", json!("Ada Lovelace")),
        ("{{truncate trigger.body.email 3}}", json!("ada")),
        (
            "{{replace trigger.body.email \"@\" \" at \"}}",
            json!("ada at example.com"),
        ),
        ("{{split \"a, b\" \",\"}}", json!(["a", "b"])),
        ("{{join trigger.body.tags \"+\"}}", json!("Urgent+new")),
        ("{{slug \"Plan #2: Pro\"}}", json!("plan-2-pro")),
        (
            "{{extract_email \"mail ada@example.com.\"}}",
            json!("ada@example.com"),
        ),
        (
            "{{extract_url \"see https://x.io/a.\"}}",
            json!("https://x.io/a"),
        ),
        ("{{extract_number \"Total: $1,234.50\"}}", json!(1234.5)),
        ("{{round trigger.body.price}}", json!(2)),
        ("{{add trigger.body.amount 1}}", json!(43)),
        ("{{subtract trigger.body.amount_text 2}}", json!(40)),
        ("{{multiply trigger.body.amount 2}}", json!(84)),
        ("{{divide trigger.body.amount 4}}", json!(10.5)),
        ("{{base64_encode \"hi\"}}", json!("aGk=")),
        ("{{base64_decode \"aGk=\"}}", json!("hi")),
        ("{{url_encode \"a b&c\"}}", json!("a+b%26c")),
        (
            "{{sha256 \"abc\"}}",
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ),
        (
            "{{default trigger.body.nope trigger.body.customer}}",
            json!({ "id": 7, "tier": "gold" }),
        ),
        ("{{default trigger.body.nope 0}}", json!(0)),
        ("{{json trigger.body.tags}}", json!("[\"Urgent\",\"new\"]")),
        ("{{format_number 1234.5 2}}", json!("1,234.50")),
        ("{{currency 49 \"usd\"}}", json!("$49.00")),
        (
            "{{date_parse \"2024-05-03\"}}",
            json!("2024-05-03T00:00:00Z"),
        ),
        (
            "{{date_format trigger.body.created \"%d %b %Y\"}}",
            json!("01 May 2024"),
        ),
        (
            "{{date_add trigger.body.created \"1d\"}}",
            json!("2024-05-02T10:00:00Z"),
        ),
        (
            "{{date_subtract trigger.body.created \"1h\"}}",
            json!("2024-05-01T09:00:00Z"),
        ),
        (
            "{{date_tz trigger.body.created \"Europe/Paris\"}}",
            json!("2024-05-01T12:00:00+02:00"),
        ),
        (
            "{{date_diff trigger.body.created \"2024-05-04T10:00:00Z\"}}",
            json!(3),
        ),
        (
            "{{date_before trigger.body.created trigger.body.due}}",
            json!(true),
        ),
        (
            "{{date_after trigger.body.created trigger.body.due}}",
            json!(false),
        ),
        (
            "{{lookup_or trigger.body \"customer\" \"none\"}}",
            json!({ "id": 7, "tier": "gold" }),
        ),
        ("{{parse_json \"[1,2]\"}}", json!([1, 2])),
        ("{{pick trigger.body.customer \"id\"}}", json!({ "id": 7 })),
        (
            "{{merge trigger.body.customer (pick steps.lookup \"plan\")}}",
            json!({ "id": 7, "tier": "gold", "plan": "Pro" }),
        ),
        (
            "{{upper (default trigger.body.nope \"anon\")}}",
            json!("ANON"),
        ),
        ("{{eq trigger.body.amount 42}}", json!(true)),
        ("{{ne trigger.body.amount 42}}", json!(false)),
        ("{{gt trigger.body.amount 40}}", json!(true)),
        ("{{gte trigger.body.amount 43}}", json!(false)),
        ("{{lt trigger.body.small 6}}", json!(true)),
        ("{{lte trigger.body.small 4}}", json!(false)),
        ("{{and trigger.body.vip true}}", json!(true)),
        ("{{or trigger.body.nope false}}", json!(false)),
        ("{{not trigger.body.vip}}", json!(false)),
        ("{{len trigger.body.items}}", json!(2)),
        ("{{lookup trigger.body.customer \"tier\"}}", json!("gold")),
        ("{{lookup trigger.body \"tags\"}}", json!(["Urgent", "new"])),
        (
            "{{@root.trigger.body.customer}}",
            json!({ "id": 7, "tier": "gold" }),
        ),
    ]
}

#[test]
fn a_value_that_is_one_helper_call_keeps_the_helpers_type() {
    for (template, expected) in helpers_alone() {
        assert_eq!(render(json!(template)), expected, "{template}");
    }
    assert!(
        render(json!("{{uuid}}"))
            .as_str()
            .is_some_and(|u| u.len() == 36),
        "uuid is text"
    );
    // Every helper a flow can call is above.
    let written: String = helpers_alone().iter().map(|(t, _)| *t).collect();
    for name in helpers::public_names() {
        if matches!(name, "if" | "unless" | "each" | "with" | "uuid") {
            continue;
        }
        assert!(
            written.contains(&format!("{{{{{name} ")) || written.contains(&format!("({name} ")),
            "no typed test for helper `{name}`"
        );
    }
}

#[test]
fn a_helper_call_inside_longer_text_renders_as_text() {
    for (template, expected) in helpers_alone() {
        let written = super::template::to_text(&expected);
        assert_eq!(
            render(json!(format!("<{template}>"))),
            json!(format!("<{written}>")),
            "{template}"
        );
        assert_eq!(text(template), written, "{template} as text");
    }
    assert_eq!(text("{{multiply trigger.body.amount 2}}"), "84");
    assert_eq!(
        render(json!("n={{multiply trigger.body.amount 2}}")),
        json!("n=84")
    );
    // Missing input stays missing: `null` as a value, nothing as text.
    assert_eq!(render(json!("{{upper trigger.body.nope}}")), Value::Null);
    assert_eq!(
        render(json!("{{parse_json (lower trigger.body.nope)}}")),
        Value::Null
    );
}
