//! The HubSpot and Stripe connectors through the real server, against local fakes of both APIs
//! (`fakes`): every action's request as the provider documents it, their answers and errors
//! mapped into runs, rate limits paced per account (also across a restart), idempotent Stripe
//! calls under retries, credentials kept out of history, and the shipped seed flows end to end.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::fakes::{self, FakeHubSpot, FakeSlack, FakeSmtp, FakeStripe, Scripted};
use crate::support::{eventually, hmac_sha256, now_secs, run_cli, step, Server, Sink};

const HUBSPOT_TOKEN: &str = "pat-na1-test-token-7f3a";
const STRIPE_KEY: &str = "sk_test_51fake";

fn hubspot_env(fake: &FakeHubSpot) -> Vec<(&'static str, String)> {
    vec![
        ("HUBSPOT_TOKEN", HUBSPOT_TOKEN.to_owned()),
        ("HUBSPOT_BASE_URL", fake.url.clone()),
    ]
}

fn stripe_env(fake: &FakeStripe) -> Vec<(&'static str, String)> {
    vec![
        ("STRIPE_SECRET_KEY", STRIPE_KEY.to_owned()),
        ("STRIPE_BASE_URL", fake.url.clone()),
    ]
}

fn start(flows: &[(&str, &str)], env: &[(&str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with(flows, &["--allow-outbound", "127.0.0.1"], &env)
}

async fn run_of(server: &Server, flow: &str, body: Value) -> Value {
    let (status, answer) = server.send(flow, &body).await;
    assert_eq!(status, 200, "{answer}");
    server
        .finished_run(answer["run_id"].as_str().unwrap())
        .await
}

const CRM_FLOW: &str = r#"
id: crm
trigger: { webhook: }
steps:
  - id: contact
    hubspot:
      upsert_contact:
        email: "{{trigger.body.email}}"
        properties: { firstname: "{{trigger.body.first}}", plan: "{{trigger.body.plan}}" }
  - id: again
    hubspot:
      get: { email: "{{trigger.body.email}}", properties: [email, plan] }
  - id: rename
    hubspot:
      update: { id: "{{steps.again.id}}", properties: { lastname: Doe } }
  - id: company
    hubspot:
      create: { object: companies, properties: { name: "{{trigger.body.company}}", domain: acme.com } }
  - id: deal
    hubspot:
      create: { object: deals, properties: { dealname: "{{trigger.body.company}} Pro", amount: 1200 } }
  - id: link_company
    hubspot:
      associate:
        from: { object: contacts, id: "{{steps.contact.id}}" }
        to: { object: companies, id: "{{steps.company.id}}" }
  - id: link_deal
    hubspot:
      associate:
        from: { object: deals, id: "{{steps.deal.id}}" }
        to: { object: contacts, id: "{{steps.contact.id}}" }
  - id: note
    hubspot:
      add_note: { to: { id: "{{steps.contact.id}}" }, body: "Upgraded to {{trigger.body.plan}}" }
  - id: task
    hubspot:
      add_task:
        to: { object: deals, id: "{{steps.deal.id}}" }
        subject: "Call {{trigger.body.first}}"
        owner_id: "42"
        priority: HIGH
  - id: pro_contacts
    hubspot:
      search:
        filters: [{ property: plan, value: pro }]
        properties: [email]
        sort: -createdate
        limit: 5
  - id: team
    hubspot:
      upsert_contacts: { contacts: "$.trigger.body.team" }
"#;

#[tokio::test]
async fn every_hubspot_action_sends_what_hubspot_documents() {
    let hubspot = FakeHubSpot::start(HUBSPOT_TOKEN).await;
    hubspot.page_size(2);
    for n in 0..6 {
        hubspot.insert(
            "contacts",
            json!({ "email": format!("pro{n}@example.com"), "plan": "pro" }),
        );
    }
    let server = start(&[("crm.yaml", CRM_FLOW)], &hubspot_env(&hubspot));
    let run = run_of(
        &server,
        "crm",
        json!({
            "email": "jane@acme.com", "first": "Jane", "plan": "pro", "company": "Acme",
            "team": [
                { "email": "a@acme.com", "properties": { "firstname": "A" } },
                { "email": "b@acme.com", "properties": { "firstname": "B" } },
            ],
        }),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    let contact = &step(&run, "contact")["output"];
    assert_eq!(contact["new"], true);
    assert_eq!(contact["properties"]["firstname"], "Jane");
    let contact_id = contact["id"].as_str().unwrap();
    assert_eq!(step(&run, "again")["output"]["id"], contact_id);
    assert_eq!(
        step(&run, "again")["output"]["properties"],
        json!({ "email": "jane@acme.com", "plan": "pro" })
    );
    let stored = hubspot
        .records("contacts")
        .into_iter()
        .find(|c| c["id"] == contact_id)
        .unwrap();
    assert_eq!(stored["properties"]["lastname"], "Doe");

    let company_id = step(&run, "company")["output"]["id"].clone();
    let deal_id = step(&run, "deal")["output"]["id"].clone();
    let ids = |v: &Value| v.as_str().unwrap().to_owned();
    assert_eq!(
        hubspot.associations(),
        [
            (
                "contacts".into(),
                contact_id.into(),
                "companies".into(),
                ids(&company_id)
            ),
            (
                "deals".into(),
                ids(&deal_id),
                "contacts".into(),
                contact_id.into()
            ),
        ]
    );
    let note = &hubspot.records("notes")[0];
    assert_eq!(note["properties"]["hs_note_body"], "Upgraded to pro");
    assert_eq!(
        note["associations"][0]["types"][0]["associationTypeId"],
        202
    );
    let task = &hubspot.records("tasks")[0];
    assert_eq!(task["properties"]["hs_task_subject"], "Call Jane");
    assert_eq!(task["properties"]["hubspot_owner_id"], "42");
    assert_eq!(task["properties"]["hs_task_priority"], "HIGH");
    assert_eq!(
        task["associations"][0]["types"][0]["associationTypeId"],
        216
    );

    // Search pages through results two at a time up to the limit.
    let search = &step(&run, "pro_contacts")["output"];
    assert_eq!(search["total"], 7);
    assert_eq!(search["results"].as_array().unwrap().len(), 5);
    let searches: Vec<_> = hubspot
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/search"))
        .collect();
    let pages: Vec<Value> = searches.iter().map(|c| c.json()).collect();
    assert_eq!(pages.len(), 3);
    // Search has its own limit (five a second, no headers): its calls are spaced.
    for pair in searches.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(190), "{gap:?}");
    }
    assert_eq!(
        pages[0]["filterGroups"][0]["filters"][0]["propertyName"],
        "plan"
    );
    assert_eq!(pages[0]["sorts"][0]["direction"], "DESCENDING");
    assert_eq!(
        (pages[1]["after"].clone(), pages[2]["limit"].clone()),
        (json!("2"), json!(1))
    );

    // Batch upsert answers in the inputs' order, though HubSpot does not keep it.
    let team = &step(&run, "team")["output"]["results"];
    assert_eq!(team[0]["properties"]["email"], "a@acme.com");
    assert_eq!(team[1]["properties"]["firstname"], "B");

    // Every call: HubSpot's paths, the bearer token, JSON bodies.
    let calls = hubspot.calls();
    for call in &calls {
        assert_eq!(
            call.header("authorization"),
            Some(format!("Bearer {HUBSPOT_TOKEN}").as_str())
        );
        if !call.body.is_empty() {
            assert_eq!(call.header("content-type"), Some("application/json"));
        }
    }
    let upsert = calls
        .iter()
        .find(|c| c.path == "/crm/v3/objects/contacts/batch/upsert")
        .unwrap();
    assert_eq!(
        upsert.json()["inputs"][0],
        json!({
            "id": "jane@acme.com",
            "idProperty": "email",
            "properties": { "email": "jane@acme.com", "firstname": "Jane", "plan": "pro" },
        })
    );
    let get = calls.iter().find(|c| c.method == "GET").unwrap();
    assert_eq!(get.path, "/crm/v3/objects/contacts/jane%40acme.com");
    assert!(get.query.contains(&("idProperty".into(), "email".into())));

    // The token never reaches run history.
    assert!(!run.to_string().contains(HUBSPOT_TOKEN));
    assert_eq!(step(&run, "contact")["input"]["action"], "upsert_contact");
}

#[tokio::test]
async fn hubspot_errors_are_explained_and_only_transient_ones_retried() {
    let hubspot = FakeHubSpot::start(HUBSPOT_TOKEN).await;
    let flows = [
        (
            "bad.yaml",
            r#"
id: bad
trigger: { webhook: }
steps:
  - id: contact
    hubspot: { upsert_contact: { email: "{{trigger.body.email}}" } }
"#,
        ),
        (
            "other.yaml",
            r#"
id: other
trigger: { webhook: }
steps:
  - id: contact
    hubspot: { account: sales, get: { id: "1" } }
"#,
        ),
        (
            "wrong-token.yaml",
            r#"
id: wrong-token
trigger: { webhook: }
steps:
  - id: contact
    hubspot: { account: old, get: { id: "1" } }
"#,
        ),
    ];
    let mut env = hubspot_env(&hubspot);
    env.push(("HUBSPOT_OLD_TOKEN", "pat-revoked".into()));
    let server = start(&flows, &env);

    let run = run_of(&server, "bad", json!({ "email": "not-an-email" })).await;
    assert_eq!(run["status"], "failed");
    let error = &step(&run, "contact")["error"];
    assert_eq!(
        error["message"],
        "HubSpot answered 400 VALIDATION_ERROR: Property values were not valid \
         (email: Email address not-an-email is invalid)"
    );
    assert_eq!(error["detail"]["errors"][0]["code"], "INVALID_EMAIL");
    assert_eq!(error["retryable"], false);
    assert_eq!(
        step(&run, "contact")["attempts"].as_array().unwrap().len(),
        1
    );

    let run = run_of(&server, "other", json!({})).await;
    let message = step(&run, "contact")["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("set `HUBSPOT_SALES_TOKEN`"), "{message}");

    let run = run_of(&server, "wrong-token", json!({})).await;
    let error = &step(&run, "contact")["error"];
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("HubSpot answered 401 INVALID_AUTHENTICATION"),
        "{error}"
    );
    assert!(!run.to_string().contains("pat-revoked"));
}

#[tokio::test]
async fn a_burst_waits_for_hubspots_rate_limit_instead_of_failing() {
    let hubspot = FakeHubSpot::start(HUBSPOT_TOKEN).await;
    let window = Duration::from_millis(1000);
    hubspot.limit(4, window);
    let flow = r#"
id: burst
trigger: { webhook: }
steps:
  - id: contact
    hubspot: { upsert_contact: { email: "{{trigger.body.email}}" } }
"#;
    let server = start(&[("burst.yaml", flow)], &hubspot_env(&hubspot));
    // One call teaches hookflow the account's limit (from HubSpot's headers).
    let first = run_of(&server, "burst", json!({ "email": "first@example.com" })).await;
    assert_eq!(first["status"], "succeeded");

    let mut ids = Vec::new();
    for n in 0..16 {
        let body = json!({ "email": format!("lead{n}@example.com") });
        let (status, answer) = server.send("burst", &body).await;
        assert_eq!(status, 200);
        ids.push(answer["run_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let run = server.finished_run(id).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        let attempts = step(&run, "contact")["attempts"].as_array().unwrap().len();
        assert!(
            attempts <= 2,
            "waiting for the rate limit used attempts: {run:#}"
        );
    }
    let calls = hubspot.calls();
    let limited = calls.iter().filter(|c| c.status == 429).count();
    assert!(
        limited <= 2,
        "{limited} calls were refused for the rate limit"
    );
    // 17 calls at 4 per second: the burst waited in the queue for at least three windows.
    let sent: Vec<_> = calls
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| c.at)
        .collect();
    assert_eq!(sent.len(), 17);
    assert!(sent[16] - sent[1] >= window * 3, "{:?}", sent[16] - sent[1]);
}

#[tokio::test]
async fn a_stripe_rate_limit_wait_is_kept_across_a_restart() {
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    stripe.insert(json!({ "id": "cus_1", "object": "customer", "email": "a@example.com" }));
    let rate_limited = Scripted {
        status: 429,
        body: json!({ "error": {
            "type": "invalid_request_error", "code": "rate_limit",
            "message": "Request rate limit exceeded.",
        }}),
        headers: vec![("retry-after", "3".into())],
    };
    stripe.script(vec![rate_limited]);
    let flow = r#"
id: lookup
trigger: { webhook: }
steps:
  - id: customer
    stripe: { get_customer: { id: cus_1 } }
"#;
    let mut server = start(&[("lookup.yaml", flow)], &stripe_env(&stripe));
    let (_, first) = server.send("lookup", &json!({})).await;
    let refused_at = eventually("Stripe to refuse a call", || async {
        stripe
            .calls()
            .first()
            .filter(|c| c.status == 429)
            .map(|c| c.at)
    })
    .await;
    assert!(server.stop_gracefully());
    server.restart();

    // A new event after the restart still waits for the account's rate limit to end.
    let (_, second) = server.send("lookup", &json!({})).await;
    for answer in [&first, &second] {
        let run = server
            .finished_run(answer["run_id"].as_str().unwrap())
            .await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
    let calls = stripe.calls();
    assert_eq!(calls.len(), 3, "one refused call, then one call per run");
    for call in &calls[1..] {
        assert!(
            call.at - refused_at >= Duration::from_millis(2900),
            "a call went out {:?} after the 429 that asked for 3s",
            call.at - refused_at
        );
    }
}

const BILLING_FLOW: &str = r#"
id: billing
trigger: { webhook: }
steps:
  - id: find
    stripe: { find_customer: { email: "{{trigger.body.email}}" } }
  - id: created
    stripe:
      create_customer:
        email: "new-{{trigger.body.email}}"
        name: Jane Doe
        metadata: { hubspot_id: "{{trigger.body.hubspot_id}}", seats: 3 }
  - id: updated
    stripe: { update_customer: { id: "{{steps.find.customer.id}}", metadata: { plan: pro } } }
  - id: subscription
    stripe: { get_subscription: { id: sub_1, expand: [customer] } }
  - id: upgrade
    stripe: { change_subscription_price: { id: sub_1, price: price_pro, proration_behavior: none } }
  - id: invoices
    stripe: { list_invoices: { customer: "{{steps.find.customer.id}}", limit: 3 } }
  - id: invoice
    stripe: { get_invoice: { id: in_2 } }
  - id: refund
    stripe: { create_refund: { payment_intent: pi_1, amount: 500, reason: requested_by_customer } }
  - id: cancel
    stripe: { cancel_subscription: { id: sub_1, at_period_end: true } }
  - id: raw
    stripe: { request: { method: GET, path: /v1/customers/cus_jane } }
"#;

#[tokio::test]
async fn every_stripe_action_sends_what_stripe_documents() {
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    stripe.page_size(2);
    stripe.insert(json!({ "id": "cus_jane", "object": "customer", "email": "jane@acme.com", "metadata": { "source": "web" } }));
    stripe.insert(json!({
        "id": "sub_1", "object": "subscription", "customer": "cus_jane", "status": "active",
        "items": { "object": "list", "data": [{ "id": "si_1", "price": { "id": "price_basic" }, "quantity": 1 }] },
    }));
    for n in 1..=3 {
        stripe.insert(json!({ "id": format!("in_{n}"), "object": "invoice", "customer": "cus_jane", "created": n }));
    }
    let server = start(&[("billing.yaml", BILLING_FLOW)], &stripe_env(&stripe));
    let run = run_of(
        &server,
        "billing",
        json!({ "email": "jane@acme.com", "hubspot_id": "901" }),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    assert_eq!(step(&run, "find")["output"]["found"], true);
    assert_eq!(step(&run, "find")["output"]["customer"]["id"], "cus_jane");
    let created = &step(&run, "created")["output"];
    assert_eq!(created["email"], "new-jane@acme.com");
    assert_eq!(
        created["metadata"],
        json!({ "hubspot_id": "901", "seats": "3" })
    );
    assert_eq!(
        stripe.object("cus_jane").unwrap()["metadata"],
        json!({ "source": "web", "plan": "pro" })
    );
    assert_eq!(
        step(&run, "subscription")["output"]["customer"]["email"],
        "jane@acme.com"
    );
    assert_eq!(
        stripe.object("sub_1").unwrap()["items"]["data"][0]["price"]["id"],
        "price_pro"
    );
    let invoices: Vec<Value> = step(&run, "invoices")["output"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].clone())
        .collect();
    assert_eq!(invoices, ["in_3", "in_2", "in_1"]);
    assert_eq!(step(&run, "invoice")["output"]["id"], "in_2");
    assert_eq!(stripe.objects("refund").len(), 1);
    assert_eq!(
        stripe.object("sub_1").unwrap()["cancel_at_period_end"],
        true
    );
    assert_eq!(step(&run, "raw")["output"]["id"], "cus_jane");

    // Requests as Stripe documents them: bearer key, form bodies with nested keys, an
    // idempotency key from the run and step on every mutating call and none on reads.
    let run_id = run["id"].as_str().unwrap();
    let calls = stripe.calls();
    for call in &calls {
        assert_eq!(
            call.header("authorization"),
            Some(format!("Bearer {STRIPE_KEY}").as_str())
        );
        match call.method.as_str() {
            "GET" => assert_eq!(call.header("idempotency-key"), None, "{call:?}"),
            _ => {
                assert_eq!(
                    call.header("content-type"),
                    Some("application/x-www-form-urlencoded")
                );
                let key = call.header("idempotency-key").unwrap_or_default();
                assert!(key.starts_with(&format!("{run_id}:")), "{call:?}");
            }
        }
    }
    let post = |path: &str| {
        calls
            .iter()
            .find(|c| c.method == "POST" && c.path == path)
            .unwrap_or_else(|| panic!("no POST {path}"))
    };
    let created = post("/v1/customers").form();
    assert!(
        created.contains(&("metadata[seats]".into(), "3".into())),
        "{created:?}"
    );
    assert_eq!(
        post("/v1/customers").header("idempotency-key"),
        Some(format!("{run_id}:created").as_str())
    );
    let upgrade = post("/v1/subscriptions/sub_1").form();
    assert_eq!(
        upgrade,
        [
            ("items[0][id]".to_owned(), "si_1".to_owned()),
            ("items[0][price]".to_owned(), "price_pro".to_owned()),
            ("proration_behavior".to_owned(), "none".to_owned()),
        ]
    );
    // `find_customer` uses the list's exact `email` filter (search is eventually consistent).
    let find = calls
        .iter()
        .find(|c| c.method == "GET" && c.path == "/v1/customers")
        .unwrap();
    assert!(find
        .query
        .contains(&("email".into(), "jane@acme.com".into())));
    // Every call pins the API version whose shapes the connector reads.
    for call in &calls {
        assert_eq!(
            call.header("stripe-version"),
            Some("2024-06-20"),
            "{call:?}"
        );
    }
    let pages: Vec<_> = calls.iter().filter(|c| c.path == "/v1/invoices").collect();
    assert_eq!(pages.len(), 2, "three invoices at two per page");
    assert!(pages[1]
        .query
        .contains(&("starting_after".into(), "in_2".into())));
    assert!(!run.to_string().contains(STRIPE_KEY));
}

#[tokio::test]
async fn a_refund_retried_after_a_lost_answer_is_made_once() {
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    stripe.slow_refunds(Duration::from_secs(3));
    let flow = r#"
id: refund
trigger: { webhook: }
steps:
  - id: refund
    timeout: 1s
    retry: { attempts: 3, backoff: fixed, initial: 100ms }
    stripe: { create_refund: { payment_intent: "{{trigger.body.payment_intent}}" } }
"#;
    let server = start(&[("refund.yaml", flow)], &stripe_env(&stripe));
    let run = run_of(&server, "refund", json!({ "payment_intent": "pi_9" })).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let attempts = step(&run, "refund")["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 2, "{run:#}");
    assert!(attempts[0]["error"].as_str().unwrap().contains("timed out"));
    assert_eq!(stripe.objects("refund").len(), 1, "one refund, not two");
    let keys: Vec<_> = stripe
        .calls()
        .iter()
        .map(|c| c.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1]);
}

#[tokio::test]
async fn stripe_errors_follow_stripe_should_retry() {
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    stripe.script(vec![
        Scripted {
            status: 409,
            body: json!({ "error": { "type": "invalid_request_error", "code": "lock_timeout",
                "message": "This object cannot be accessed right now because another API request is modifying it." } }),
            headers: vec![("stripe-should-retry", "true".into())],
        },
        Scripted {
            status: 402,
            body: json!({ "error": { "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.", "param": "payment_method" } }),
            headers: vec![("stripe-should-retry", "false".into())],
        },
    ]);
    let flow = r#"
id: charge
trigger: { webhook: }
steps:
  - id: refund
    retry: { attempts: 5, backoff: fixed, initial: 100ms }
    stripe: { create_refund: { charge: ch_1 } }
"#;
    let server = start(&[("charge.yaml", flow)], &stripe_env(&stripe));
    let run = run_of(&server, "charge", json!({})).await;
    assert_eq!(run["status"], "failed");
    let refund = step(&run, "refund");
    assert_eq!(refund["attempts"].as_array().unwrap().len(), 2, "{run:#}");
    assert_eq!(
        refund["error"]["message"],
        "Stripe answered 402 card_error (card_declined): Your card has insufficient funds. \
         (parameter `payment_method`)"
    );
    assert_eq!(
        refund["error"]["detail"]["decline_code"],
        "insufficient_funds"
    );

    // The customer topped up their card: a manual retry is a new request (Stripe would answer the
    // old key with the saved decline).
    let run_id = run["id"].as_str().unwrap();
    let (status, answer) = server
        .post(&format!("/api/v1/runs/{run_id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let run = server.finished_run(run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(stripe.objects("refund").len(), 1);
    let keys: Vec<String> = stripe
        .calls()
        .iter()
        .map(|c| c.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        [
            format!("{run_id}:refund"),
            format!("{run_id}:refund"),
            format!("{run_id}:refund:retry1"),
        ]
    );
}

#[test]
fn a_connector_step_with_two_actions_or_none_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.yaml");
    std::fs::write(
        &path,
        "id: two\ntrigger: { webhook: }\nsteps:\n  - id: s\n    stripe:\n      get_customer: { id: a }\n      get_invoice: { id: b }\n  - id: t\n    hubspot: { account: x }\n",
    )
    .unwrap();
    let out = run_cli(&["validate", path.to_str().unwrap()], dir.path());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("two.yaml:7:"), "{text}");
    assert!(
        text.contains("this one has `get_customer` and `get_invoice`"),
        "{text}"
    );
    assert!(text.contains("two.yaml:9:"), "{text}");
    assert!(text.contains("name one action"), "{text}");
}

// --- the shipped seed flows ------------------------------------------------------------------

fn seed(name: &str) -> String {
    let path = format!("{}/flows/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap()
}

async fn post_signed(url: &str, body: &str, headers: Vec<(&str, String)>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn stripe_event(server: &Server, flow: &str, event: &Value) -> Value {
    let body = event.to_string();
    let t = now_secs();
    let sig = hex::encode(hmac_sha256(b"whsec_seed", format!("{t}.{body}").as_bytes()));
    let headers = vec![("stripe-signature", format!("t={t},v1={sig}"))];
    let (status, answer) = post_signed(&server.catch_url(flow), &body, headers).await;
    assert_eq!(status, 200, "{answer}");
    server
        .finished_run(answer["run_id"].as_str().unwrap())
        .await
}

#[tokio::test]
async fn the_seed_flows_connect_stripe_and_hubspot() {
    let hubspot = FakeHubSpot::start(HUBSPOT_TOKEN).await;
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    let alerts = Sink::start().await;
    let enrichment = fakes::enrichment().await;
    stripe.insert(json!({ "id": "cus_7", "object": "customer", "email": "Jane@Acme.com" }));
    let owned = hubspot.insert(
        "contacts",
        json!({ "email": "ops@globex.com", "firstname": "Olga", "hubspot_owner_id": "77" }),
    );
    let created = hubspot.insert(
        "contacts",
        json!({ "email": "new@initech.com", "firstname": "Nia" }),
    );
    let mut env = hubspot_env(&hubspot);
    env.extend(stripe_env(&stripe));
    env.extend([
        ("STRIPE_WEBHOOK_SECRET", "whsec_seed".to_owned()),
        ("HUBSPOT_CLIENT_SECRET", "hs-client-secret".to_owned()),
        ("BILLING_ALERT_URL", alerts.url.clone()),
        ("ENRICHMENT_URL", format!("{enrichment}/v1/people")),
    ]);
    let names = [
        "stripe-subscription-to-hubspot.yaml",
        "stripe-payment-failed.yaml",
        "hubspot-contact-enrichment.yaml",
    ];
    let sources: Vec<String> = names.iter().map(|n| seed(n)).collect();
    let flows: Vec<(&str, &str)> = names
        .iter()
        .copied()
        .zip(sources.iter().map(String::as_str))
        .collect();
    let server = start(&flows, &env);

    // A plan change in Stripe → the HubSpot contact has the new plan.
    let subscription = json!({
        "id": "evt_1", "type": "customer.subscription.updated",
        "data": {
            "object": { "id": "sub_9", "object": "subscription", "customer": "cus_7", "status": "active",
                "items": { "data": [{ "id": "si_9", "price": { "id": "price_pro", "nickname": "Pro" } }] } },
            "previous_attributes": { "items": { "data": [{ "id": "si_9", "price": { "id": "price_basic" } }] } },
        },
    });
    let run = stripe_event(&server, "stripe-subscription-to-hubspot", &subscription).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let jane = hubspot
        .records("contacts")
        .into_iter()
        .find(|c| c["properties"]["email"] == "jane@acme.com")
        .expect("Jane's contact was created");
    assert_eq!(jane["properties"]["plan"], "Pro");
    assert_eq!(jane["properties"]["plan_price_id"], "price_pro");
    assert_eq!(jane["properties"]["stripe_customer_id"], "cus_7");

    // A failed payment → a task for the contact's owner, and an alert.
    let failed = json!({
        "id": "evt_2", "type": "invoice.payment_failed",
        "data": { "object": { "id": "in_5", "object": "invoice", "customer_email": "ops@globex.com",
            "amount_due": 4900, "currency": "usd", "number": "INV-0042", "attempt_count": 2,
            "hosted_invoice_url": "https://invoice.stripe.com/i/in_5" } },
    });
    let run = stripe_event(&server, "stripe-payment-failed", &failed).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let task = &hubspot.records("tasks")[0];
    assert_eq!(task["properties"]["hubspot_owner_id"], "77");
    assert_eq!(
        task["properties"]["hs_task_subject"],
        "Payment failed: call Olga"
    );
    assert!(task["properties"]["hs_task_body"]
        .as_str()
        .unwrap()
        .contains("49 USD for invoice INV-0042"));
    assert_eq!(task["associations"][0]["to"]["id"], owned);
    let alert = &alerts.received()[0].body;
    assert!(
        alert["text"]
            .as_str()
            .unwrap()
            .contains("ops@globex.com: 49 USD"),
        "{alert}"
    );

    // A customer missing from HubSpot: billing still hears about it (that is when it must), and
    // no task is made.
    let mut unknown = failed.clone();
    unknown["id"] = json!("evt_3");
    unknown["data"]["object"]["customer_email"] = json!("nobody@initech.com");
    let run = stripe_event(&server, "stripe-payment-failed", &unknown).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(step(&run, "follow_up")["status"], "skipped");
    assert_eq!(hubspot.records("tasks").len(), 1);
    let alert = &alerts.received()[1].body;
    assert!(
        alert["text"]
            .as_str()
            .unwrap()
            .ends_with("attempt 2 (not in HubSpot: no follow-up task)"),
        "{alert}"
    );

    // A new HubSpot contact → enriched and updated.
    let batch = json!([{ "eventId": 1, "subscriptionType": "contact.creation", "objectId": created.parse::<u64>().unwrap() }]).to_string();
    let url = server.catch_url("hubspot-contact-enrichment");
    let t = (now_secs() * 1000).to_string();
    let sig = hmac_sha256(
        b"hs-client-secret",
        format!("POST{url}{batch}{t}").as_bytes(),
    );
    let headers = vec![
        ("x-hubspot-request-timestamp", t),
        (
            "x-hubspot-signature-v3",
            base64::engine::general_purpose::STANDARD.encode(sig),
        ),
    ];
    let (status, answer) = post_signed(&url, &batch, headers).await;
    assert_eq!(status, 200, "{answer}");
    let run = server
        .finished_run(answer["events"][0]["run_id"].as_str().unwrap())
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let nia = hubspot
        .records("contacts")
        .into_iter()
        .find(|c| c["id"] == created)
        .unwrap();
    assert_eq!(nia["properties"]["jobtitle"], "Head of Revenue Operations");
    assert_eq!(nia["properties"]["company"], "initech Inc");
    assert_eq!(
        nia["properties"]["numemployees"], 250,
        "a helper call alone keeps its type"
    );
}

#[tokio::test]
async fn seed_flows_without_their_secret_load_and_refuse_every_request() {
    let source = seed("stripe-payment-failed.yaml");
    let server = Server::start(&[("stripe-payment-failed.yaml", &source)]);
    let (status, answer) = server
        .send("stripe-payment-failed", &json!({ "id": "evt_1" }))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("signature_not_configured")),
        "{answer}"
    );
    assert!(server.all_runs("stripe-payment-failed").await.is_empty());
}

#[tokio::test]
async fn credentials_can_come_from_the_secrets_file() {
    let hubspot = FakeHubSpot::start(HUBSPOT_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(&secrets, format!("HUBSPOT_TOKEN: {HUBSPOT_TOKEN}\n")).unwrap();
    let config = dir.path().join("hookflow.yaml");
    std::fs::write(&config, format!("secrets_file: {}\n", secrets.display())).unwrap();
    let flow = r#"
id: lookup
trigger: { webhook: }
steps:
  - id: contact
    hubspot: { upsert_contact: { email: "{{trigger.body.email}}" } }
"#;
    let server = Server::start_with(
        &[("lookup.yaml", flow)],
        &[
            "--allow-outbound",
            "127.0.0.1",
            "--config",
            config.to_str().unwrap(),
        ],
        &[("HUBSPOT_BASE_URL", hubspot.url.as_str())],
    );
    let run = run_of(&server, "lookup", json!({ "email": "file@example.com" })).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(hubspot.records("contacts").len(), 1);
}

#[tokio::test]
async fn a_field_that_resolved_to_nothing_is_left_out_and_only_clear_clears() {
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    stripe.insert(
        json!({ "id": "cus_1", "object": "customer", "name": "Jane Doe",
        "phone": "+15550100", "description": "VIP", "metadata": {} }),
    );
    let flow = r#"
id: tidy
trigger: { webhook: }
steps:
  - id: rename
    stripe:
      update_customer:
        id: "{{trigger.body.customer}}"
        name: "{{trigger.body.new_name}}"
        phone: "{{trigger.body.phone}}"
        description: $clear
        metadata: { plan: "{{trigger.body.plan}}" }
"#;
    let server = start(&[("tidy.yaml", flow)], &stripe_env(&stripe));
    let run = run_of(
        &server,
        "tidy",
        json!({ "customer": "cus_1", "plan": "pro" }),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let sent = stripe.calls()[0].form();
    assert_eq!(
        sent,
        [
            ("description".to_owned(), String::new()),
            ("metadata[plan]".to_owned(), "pro".to_owned()),
        ]
    );
    let customer = stripe.object("cus_1").unwrap();
    assert_eq!(customer["name"], "Jane Doe");
    assert_eq!(customer["phone"], "+15550100");
    assert_eq!(customer["description"], "");
    let left_out = &step(&run, "rename")["input"]["left_out"];
    assert_eq!(
        *left_out,
        json!({ "name": "its expression resolved to nothing", "phone": "its expression resolved to nothing" })
    );

    // The dry run and the preview say the same before anything is sent.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tidy.yaml"), flow).unwrap();
    std::fs::write(dir.path().join("e.json"), r#"{"customer": "cus_1"}"#).unwrap();
    let out = run_cli(
        &["run", "tidy.yaml", "--event", "e.json", "--dry-run"],
        dir.path(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"left_out\""), "{text}");
    assert!(
        text.contains("\"metadata.plan\": \"its expression resolved to nothing\""),
        "{text}"
    );
    let (status, preview) = server
        .post(
            "/api/v1/flows/tidy/preview",
            &json!({ "event": { "body": { "customer": "cus_1", "new_name": "Jo" } } }),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    let input = &preview["steps"][0]["input"];
    assert_eq!(input["name"], "Jo", "{preview:#}");
    assert_eq!(
        input["left_out"]["phone"],
        "its expression resolved to nothing"
    );
    assert_eq!(stripe.calls().len(), 1, "previews send nothing");
}

#[tokio::test]
async fn a_retry_resends_the_recorded_request_under_its_key() {
    // The refund is made but its answer is lost to the step's timeout; the retry must send the
    // same parameters, or Stripe refuses the reused key with `idempotency_error`.
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    stripe.slow_refunds(Duration::from_secs(3));
    let refund = r#"
id: refund
trigger: { webhook: }
steps:
  - id: refund
    timeout: 1s
    retry: { attempts: 3, backoff: fixed, initial: 100ms }
    stripe:
      create_refund:
        payment_intent: "{{trigger.body.payment_intent}}"
        metadata: { request: "{{uuid}}" }
"#;
    // A plain HTTP call with a credential: the credential is never recorded, yet the retry sends
    // it, with the same body.
    let sink = crate::support::Sink::scripted(&[503]).await;
    let notify = format!(
        r#"
id: notify
trigger: {{ webhook: }}
steps:
  - id: post
    retry: {{ attempts: 3, backoff: fixed, initial: 100ms }}
    http:
      url: "{}/notify"
      auth: {{ bearer: "${{env:SINK_TOKEN}}" }}
      json: {{ id: "{{{{uuid}}}}" }}
"#,
        sink.url
    );
    let mut env = stripe_env(&stripe);
    env.push(("SINK_TOKEN", "sink-secret-1".to_owned()));
    let server = start(&[("refund.yaml", refund), ("notify.yaml", &notify)], &env);

    let run = run_of(&server, "refund", json!({ "payment_intent": "pi_7" })).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let calls = stripe.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].body, calls[1].body, "the same bytes");
    assert_eq!(calls[1].status, 200);
    assert_eq!(stripe.objects("refund").len(), 1);

    let run = run_of(&server, "notify", json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let received = sink.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].body, received[1].body);
    for r in &received {
        assert_eq!(r.headers["authorization"], "Bearer sink-secret-1");
    }
    assert!(!run.to_string().contains("sink-secret-1"));
    assert!(server
        .metrics()
        .await
        .contains("hookflow_step_requests_resent_total{flow=\"notify\"} 1"));
}

#[tokio::test]
async fn a_task_due_in_epoch_milliseconds_is_due_then() {
    let hubspot = FakeHubSpot::start(HUBSPOT_TOKEN).await;
    let contact = hubspot.insert("contacts", json!({ "email": "jane@acme.com" }));
    let flow = r#"
id: remind
trigger: { webhook: }
steps:
  - id: by_number
    hubspot:
      add_task: { to: { id: "{{trigger.body.contact}}" }, subject: Call, due: "{{trigger.body.due}}" }
  - id: by_text
    hubspot:
      add_task: { to: { id: "{{trigger.body.contact}}" }, subject: Call, due: "{{trigger.body.due_text}}" }
"#;
    let server = start(&[("remind.yaml", flow)], &hubspot_env(&hubspot));
    let run = run_of(
        &server,
        "remind",
        json!({ "contact": contact, "due": 1_798_761_600_000_i64, "due_text": "1798761600000" }),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let tasks = hubspot.records("tasks");
    assert_eq!(tasks.len(), 2);
    for task in tasks {
        assert_eq!(task["properties"]["hs_timestamp"], "2027-01-01T00:00:00Z");
    }
}

#[tokio::test]
async fn a_partly_failed_batch_upsert_fails_or_says_which_contacts_failed() {
    let hubspot = FakeHubSpot::start(HUBSPOT_TOKEN).await;
    let flow = r#"
id: team
trigger: { webhook: }
steps:
  - id: strict
    hubspot:
      upsert_contacts: { contacts: "$.trigger.body.team" }
  - id: lenient
    needs: []
    on_error: continue
    hubspot:
      upsert_contacts: { contacts: "$.trigger.body.team" }
"#;
    let server = start(&[("team.yaml", flow)], &hubspot_env(&hubspot));
    let team = json!({ "team": [
        { "email": "a@acme.com", "properties": { "firstname": "A" } },
        { "email": "not-an-email", "properties": { "firstname": "B" } },
    ] });
    let run = run_of(&server, "team", team).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let strict = step(&run, "strict");
    assert_eq!(
        strict["error"]["message"],
        "HubSpot upserted 1 of 2 contacts; failed: not-an-email: Email address not-an-email is invalid"
    );
    assert_eq!(
        strict["attempts"].as_array().unwrap().len(),
        1,
        "not retried"
    );
    // With `on_error: continue`, the output says which contact failed and carries the others.
    let results = &step(&run, "lenient")["output"]["error"]["detail"]["results"];
    assert_eq!(results[0]["ok"], true);
    assert_eq!(results[0]["record"]["properties"]["firstname"], "A");
    assert_eq!(results[1]["ok"], false);
    assert_eq!(results[1]["email"], "not-an-email");
    assert_eq!(results[1]["errors"][0]["category"], "VALIDATION_ERROR");
    assert!(
        hubspot.calls().iter().all(|c| c.status == 207),
        "HubSpot answered 207 Multi-Status"
    );
}

#[tokio::test]
async fn hubspot_search_sends_in_and_between_as_documented() {
    let hubspot = FakeHubSpot::start(HUBSPOT_TOKEN).await;
    for (email, status, amount) in [
        ("a@x.com", "NEW", "50"),
        ("b@x.com", "OPEN", "500"),
        ("c@x.com", "CLOSED", "150"),
        ("d@x.com", "OPEN", "120"),
    ] {
        hubspot.insert(
            "contacts",
            json!({ "email": email, "hs_lead_status": status, "amount": amount }),
        );
    }
    let flow = r#"
id: find
trigger: { webhook: }
steps:
  - id: leads
    hubspot:
      search:
        filters:
          - { property: hs_lead_status, operator: IN, values: "{{trigger.body.statuses}}" }
          - { property: amount, operator: BETWEEN, value: 100, high_value: "{{trigger.body.max}}" }
        properties: [email]
"#;
    let server = start(&[("find.yaml", flow)], &hubspot_env(&hubspot));
    let run = run_of(
        &server,
        "find",
        json!({ "statuses": ["NEW", "OPEN"], "max": 200 }),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let found: Vec<&Value> = step(&run, "leads")["output"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["properties"]["email"])
        .collect();
    assert_eq!(found, [&json!("d@x.com")]);
    let filters = hubspot.calls()[0].json()["filterGroups"][0]["filters"].clone();
    assert_eq!(
        filters,
        json!([
            { "propertyName": "hs_lead_status", "operator": "IN", "values": ["NEW", "OPEN"] },
            { "propertyName": "amount", "operator": "BETWEEN", "value": "100", "highValue": "200" },
        ])
    );

    // `IN` with a single `value` is refused when the flow loads, with the field.
    let dir = tempfile::tempdir().unwrap();
    let bad = flow.replace("values:", "value:");
    std::fs::write(dir.path().join("find.yaml"), bad).unwrap();
    let out = run_cli(&["validate", "find.yaml"], dir.path());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("search.filters[0]"), "{text}");
    assert!(
        text.contains("`IN` and `NOT_IN` take `values: [..]`"),
        "{text}"
    );
}

#[tokio::test]
async fn hubspot_creates_are_not_retried_blindly_and_a_spent_daily_allowance_holds_calls() {
    let hubspot = FakeHubSpot::start(HUBSPOT_TOKEN).await;
    let contact = hubspot.insert("contacts", json!({ "email": "jane@acme.com" }));
    // A note whose answer is lost: HubSpot made it, but hookflow cannot know.
    let flow = format!(
        r#"
id: note
trigger: {{ webhook: }}
steps:
  - id: note
    timeout: 1s
    retry: {{ attempts: 3, backoff: fixed, initial: 100ms }}
    hubspot:
      add_note: {{ to: {{ id: "{contact}" }}, body: "{{{{trigger.body.text}}}}" }}
"#
    );
    let mut env = hubspot_env(&hubspot);
    // Answers never come back: every call times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    env.push(("HUBSPOT_LOST_TOKEN", HUBSPOT_TOKEN.to_owned()));
    env.push(("HUBSPOT_LOST_BASE_URL", silent_url));
    let lost = flow
        .replace("id: note\ntrigger", "id: lost\ntrigger")
        .replace("    hubspot:\n", "    hubspot:\n      account: lost\n");
    let server = start(&[("note.yaml", &flow), ("lost.yaml", &lost)], &env);
    let run = run_of(&server, "lost", json!({ "text": "Called" })).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let note = step(&run, "note");
    assert_eq!(note["attempts"].as_array().unwrap().len(), 1, "{run:#}");
    assert!(note["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not retried"));
    drop(silent);

    // One call left today: its answer says none are left, so the next event's call waits (an
    // hour) instead of being sent and refused.
    hubspot.daily(250_000, 1);
    let run = run_of(&server, "note", json!({ "text": "First" })).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let (status, answer) = server.send("note", &json!({ "text": "Second" })).await;
    assert_eq!(status, 200);
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    // Postponed: the run started, its step is back in the queue, and no attempt was made.
    let waiting = eventually("the step to wait for the daily allowance", || async {
        let (_, run) = server.get(&format!("/api/v1/runs/{run_id}")).await;
        let postponed = run["status"] == "running"
            && run["steps"][0]["status"] == "queued"
            && run["steps"][0]["attempts"] == json!([]);
        postponed.then_some(run)
    })
    .await;
    assert_eq!(hubspot.records("notes").len(), 1);
    assert_eq!(hubspot.calls().len(), 1, "{waiting:#}");
}

#[tokio::test]
async fn a_stripe_conflict_is_retried_and_the_api_version_is_configurable() {
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    stripe.script(vec![Scripted {
        status: 409,
        body: json!({ "error": { "type": "invalid_request_error", "code": "lock_timeout",
            "message": "This object cannot be accessed right now because another API request or Stripe process is currently accessing it." } }),
        headers: vec![],
    }]);
    let flow = r#"
id: refund
trigger: { webhook: }
steps:
  - id: refund
    retry: { attempts: 3, backoff: fixed, initial: 100ms }
    stripe: { create_refund: { charge: ch_1 } }
"#;
    let mut env = stripe_env(&stripe);
    env.push(("STRIPE_API_VERSION", "2025-03-31.basil".to_owned()));
    let server = start(&[("refund.yaml", flow)], &env);
    let run = run_of(&server, "refund", json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let calls = stripe.calls();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [409, 200]
    );
    assert!(calls
        .iter()
        .all(|c| c.header("stripe-version") == Some("2025-03-31.basil")));
}

const SLACK_TOKEN: &str = "xoxb-test-1234-abcd";

fn slack_env(fake: &FakeSlack) -> Vec<(&'static str, String)> {
    vec![
        ("SLACK_BOT_TOKEN", SLACK_TOKEN.to_owned()),
        ("SLACK_BASE_URL", fake.url.clone()),
        ("SLACK_WEBHOOK_URL", fake.webhook_url.clone()),
    ]
}

const SLACK_FLOW: &str = r##"
id: demo
trigger: { webhook: }
steps:
  - id: rep
    slack: { find_user: { email: "{{trigger.body.rep}}" } }
  - id: post
    slack:
      post_message:
        channel: "#sales"
        text: "Demo request from {{trigger.body.company}}"
        blocks: [{ type: section, text: { type: mrkdwn, text: "*{{trigger.body.company}}* wants a demo" } }]
        unfurl_links: false
  - id: dm
    slack: { post_message: { user: "{{steps.rep.user.id}}", text: "Yours: {{trigger.body.company}}" } }
  - id: edit
    slack:
      update_message: { channel: "{{steps.post.channel}}", ts: "{{steps.post.ts}}", text: "Taken by <@{{steps.rep.user.id}}>" }
  - id: nobody
    slack: { find_user: { email: nobody@acme.com } }
  - id: hook
    slack: { webhook: { url: "${env:SLACK_WEBHOOK_URL}", text: "Demo request: {{trigger.body.company}}" } }
"##;

#[tokio::test]
async fn every_slack_action_sends_what_slack_documents() {
    let slack = FakeSlack::start(SLACK_TOKEN).await;
    let server = start(&[("demo.yaml", SLACK_FLOW)], &slack_env(&slack));
    let run = run_of(
        &server,
        "demo",
        json!({ "rep": "jane@acme.com", "company": "Acme" }),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(step(&run, "rep")["output"]["user"]["id"], "U0JANE");
    assert_eq!(
        step(&run, "nobody")["output"],
        json!({ "found": false, "user": null })
    );
    assert_eq!(step(&run, "post")["output"]["channel"], "C0SALES");
    let messages = slack.messages();
    let (channel, _, posted) = &messages[0];
    assert_eq!(channel, "C0SALES");
    assert_eq!(posted["text"], "Taken by <@U0JANE>", "updated in place");
    assert_eq!(messages[1].0, "D0JANE", "a direct message to the user");
    assert_eq!(
        messages[2],
        (
            "webhook".into(),
            messages[2].1.clone(),
            json!({ "text": "Demo request: Acme" })
        )
    );

    let calls = slack.calls();
    let post = calls
        .iter()
        .find(|c| c.path == "/api/chat.postMessage")
        .unwrap();
    assert_eq!(
        post.json(),
        json!({
            "channel": "#sales",
            "text": "Demo request from Acme",
            "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": "*Acme* wants a demo" } }],
            "unfurl_links": false,
        })
    );
    for call in &calls {
        if call.path.starts_with("/api/") {
            assert_eq!(
                call.header("authorization"),
                Some(format!("Bearer {SLACK_TOKEN}").as_str())
            );
        } else {
            assert_eq!(
                call.header("authorization"),
                None,
                "a webhook needs no token"
            );
        }
    }
    let text = run.to_string();
    assert!(!text.contains(SLACK_TOKEN));
    assert!(
        !text.contains("/services/T000"),
        "the webhook URL is a secret"
    );
}

#[tokio::test]
async fn slack_failures_answered_with_200_fail_the_step_and_rate_limits_wait() {
    let slack = FakeSlack::start(SLACK_TOKEN).await;
    let flow = r#"
id: alerts
trigger: { webhook: }
steps:
  - id: post
    retry: { attempts: 3, backoff: fixed, initial: 100ms }
    slack: { post_message: { channel: "{{trigger.body.channel}}", text: "{{trigger.body.text}}" } }
"#;
    let hook = r#"
id: hooked
trigger: { webhook: }
steps:
  - id: hook
    slack: { webhook: { url: "${env:SLACK_WEBHOOK_URL}", text: "{{trigger.body.text}}" } }
"#;
    let mut env = slack_env(&slack);
    env.push(("SLACK_WRONG_BOT_TOKEN", "xoxb-revoked".to_owned()));
    let wrong = flow
        .replace("id: alerts", "id: wrong")
        .replace("slack: {", "slack: { account: wrong,");
    let server = start(
        &[
            ("alerts.yaml", flow),
            ("hooked.yaml", hook),
            ("wrong.yaml", &wrong),
        ],
        &env,
    );

    // The app is not in #other: Slack answers 200 {"ok": false}; not retried.
    let run = run_of(
        &server,
        "alerts",
        json!({ "channel": "#other", "text": "hi" }),
    )
    .await;
    assert_eq!(run["status"], "failed");
    let post = step(&run, "post");
    assert_eq!(
        post["error"]["message"],
        "Slack answered not_in_channel (invite the Slack app to the channel)"
    );
    assert_eq!(post["error"]["detail"]["status"], 200);
    assert_eq!(post["attempts"].as_array().unwrap().len(), 1);

    let run = run_of(
        &server,
        "wrong",
        json!({ "channel": "#sales", "text": "hi" }),
    )
    .await;
    assert!(step(&run, "post")["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Slack answered invalid_auth"));

    // A 429 holds the account's posts for its Retry-After, then the post is made.
    slack.rate_limit(1);
    let run = run_of(
        &server,
        "alerts",
        json!({ "channel": "C0SALES", "text": "hi" }),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let statuses: Vec<u16> = slack.calls().iter().map(|c| c.status).collect();
    assert_eq!(&statuses[statuses.len() - 2..], [429, 200]);

    // Nothing to say: the text resolved to nothing and was left out; the webhook refuses it.
    let run = run_of(&server, "hooked", json!({})).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(
        step(&run, "hook")["error"]["message"],
        "Slack's incoming webhook answered 400 no_text"
    );
}

#[tokio::test]
async fn the_seed_upgrade_flow_posts_to_the_sales_channel() {
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    let slack = FakeSlack::start(SLACK_TOKEN).await;
    stripe.insert(json!({ "id": "cus_QxJane", "object": "customer", "name": "Jane Doe", "email": "jane@acme.com" }));
    let mut env = stripe_env(&stripe);
    env.extend(slack_env(&slack));
    env.push(("STRIPE_WEBHOOK_SECRET", "whsec_seed".to_owned()));
    let source = seed("stripe-upgrade-to-slack.yaml");
    let server = start(&[("stripe-upgrade-to-slack.yaml", &source)], &env);
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("flows/samples/stripe-upgrade-to-slack/upgraded-to-pro.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let run = stripe_event(&server, "stripe-upgrade-to-slack", &sample["body"]).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let (channel, _, message) = &slack.messages()[0];
    assert_eq!(channel, "C0SALES");
    assert_eq!(message["text"], "Upgrade: Jane Doe moved from Basic to Pro");
    assert_eq!(
        message["blocks"][0]["text"]["text"],
        ":tada: *Jane Doe* upgraded from *Basic* to *Pro* (+30 USD a month)"
    );
}

fn smtp_env(smtp: &FakeSmtp) -> Vec<(&'static str, String)> {
    vec![
        ("SMTP_HOST", "127.0.0.1".to_owned()),
        ("SMTP_PORT", smtp.port.to_string()),
        ("SMTP_TLS", "none".to_owned()),
        ("SMTP_USERNAME", "hookflow".to_owned()),
        ("SMTP_PASSWORD", "smtp-s3cret".to_owned()),
        ("SMTP_FROM", "hookflow <flows@acme.com>".to_owned()),
    ]
}

#[tokio::test]
async fn an_email_goes_to_every_recipient_with_text_and_html_over_smtp() {
    let smtp = FakeSmtp::start("hookflow", "smtp-s3cret").await;
    let flow = r#"
id: mail
trigger: { webhook: }
steps:
  - id: notify
    retry: { attempts: 3, backoff: fixed, initial: 100ms }
    email:
      to: ["Jane Doe <jane@acme.com>", "{{trigger.body.owner}}"]
      cc: "ops@acme.com, {{trigger.body.cc}}"
      bcc: [audit@acme.com]
      reply_to: billing@acme.com
      subject: "Payment failed: {{trigger.body.invoice}}"
      text: "Invoice {{trigger.body.invoice}} failed."
      html: "<p>Invoice <b>{{trigger.body.invoice}}</b> failed.</p>"
"#;
    let server = start(&[("mail.yaml", flow)], &smtp_env(&smtp));
    let run = run_of(
        &server,
        "mail",
        json!({ "owner": "busy@acme.com", "invoice": "INV-7" }),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    // The first attempt met a temporary refusal (451) and was retried with the same message.
    let notify = step(&run, "notify");
    assert_eq!(notify["attempts"].as_array().unwrap().len(), 2, "{run:#}");
    assert!(notify["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("451"));
    assert_eq!(
        notify["input"]["left_out"],
        json!(null),
        "cc kept its literal part"
    );

    let mail = smtp.mail();
    assert_eq!(mail.len(), 1);
    let sent = &mail[0];
    assert_eq!(sent.from, "flows@acme.com");
    assert_eq!(
        sent.to,
        [
            "jane@acme.com",
            "busy@acme.com",
            "ops@acme.com",
            "audit@acme.com"
        ]
    );
    let run_id = run["id"].as_str().unwrap();
    for header in [
        "From: hookflow <flows@acme.com>",
        "To: \"Jane Doe\" <jane@acme.com>, busy@acme.com",
        "Cc: ops@acme.com",
        "Reply-To: billing@acme.com",
        "Subject: Payment failed: INV-7",
        &format!("Message-ID: <{run_id}.notify@hookflow>"),
        "Content-Type: multipart/alternative",
    ] {
        assert!(sent.data.contains(header), "{header} in\n{}", sent.data);
    }
    assert!(!sent.data.contains("Bcc:"), "blind copies stay blind");
    assert!(sent.data.contains("Invoice INV-7 failed."));
    assert!(sent.data.contains("<p>Invoice <b>INV-7</b> failed.</p>"));
    assert_eq!(
        smtp.logins()[0],
        ("hookflow".to_owned(), "smtp-s3cret".to_owned())
    );
    assert!(!run.to_string().contains("smtp-s3cret"));

    // A recipient the server refuses for good (550) fails the step at once.
    let run = run_of(
        &server,
        "mail",
        json!({ "owner": "bounce@acme.com", "invoice": "INV-8" }),
    )
    .await;
    assert_eq!(run["status"], "failed");
    let notify = step(&run, "notify");
    assert_eq!(notify["attempts"].as_array().unwrap().len(), 1);
    assert!(
        notify["error"]["message"].as_str().unwrap().contains("550"),
        "{notify}"
    );
}

#[tokio::test]
async fn an_oauth_account_refreshes_its_access_token_once_and_again_after_a_401() {
    let hubspot = FakeHubSpot::start("unused-private-app-token").await;
    hubspot.oauth("client-1", "client-secret-1", "refresh-1");
    let contact = hubspot.insert("contacts", json!({ "email": "jane@acme.com" }));
    let flow = format!(
        r#"
id: read
trigger: {{ webhook: }}
steps:
  - id: contact
    hubspot: {{ get: {{ id: "{contact}" }} }}
"#
    );
    let env = vec![
        ("HUBSPOT_BASE_URL", hubspot.url.clone()),
        ("HUBSPOT_REFRESH_TOKEN", "refresh-1".to_owned()),
        ("HUBSPOT_CLIENT_ID", "client-1".to_owned()),
        ("HUBSPOT_CLIENT_SECRET", "client-secret-1".to_owned()),
    ];
    let server = start(&[("read.yaml", &flow)], &env);
    for _ in 0..2 {
        let run = run_of(&server, "read", json!({})).await;
        assert_eq!(run["status"], "succeeded", "{run:#}");
        assert!(
            !run.to_string().contains("oauth-access"),
            "tokens stay out of history"
        );
    }
    assert_eq!(
        hubspot.tokens_issued(),
        1,
        "the access token is cached between runs"
    );

    // HubSpot stops taking it: the 401 refreshes it and the call is made again.
    hubspot.revoke_access_tokens();
    let run = run_of(&server, "read", json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(hubspot.tokens_issued(), 2);
    let calls = hubspot.calls();
    let statuses: Vec<u16> = calls.iter().rev().take(3).map(|c| c.status).collect();
    assert_eq!(statuses, [200, 200, 401], "refused, refreshed, made again");
    let refresh = calls.iter().find(|c| c.path == "/oauth/v1/token").unwrap();
    assert!(refresh
        .form()
        .contains(&("grant_type".into(), "refresh_token".into())));
}
