//! Verified catch hooks: a request whose signature does not verify gets 401 with a reason and
//! stores nothing; a valid one is accepted. Checked with GitHub's, Stripe's and Standard Webhooks'
//! schemes through the real server, with secrets from the environment and a secret rotation.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::support::{hmac_sha256, now_secs, run_cli, Server};

fn flow(id: &str, verify: &str) -> String {
    format!(
        r#"
id: {id}
trigger:
  webhook:
    verify: {verify}
steps:
  - id: shape
    map: {{ id: "{{{{trigger.body.id}}}}" }}
"#
    )
}

/// POSTs raw bytes with headers to a flow's catch URL; returns status and JSON.
async fn post(server: &Server, flow: &str, body: &str, headers: &[(&str, String)]) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(server.catch_url(flow))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn only_correctly_signed_requests_start_runs() {
    let github = flow("gh", r#"{ provider: github, secret: "${env:GH_SECRET}" }"#);
    let stripe = flow(
        "pay",
        r#"{ provider: stripe, secret: "${env:STRIPE_SECRET}", tolerance: 60s }"#,
    );
    let standard = flow(
        "std",
        r#"{ provider: standard-webhooks, secrets: ["whsec_b2xkb2xkb2xkb2xk", "${env:SW_SECRET}"] }"#,
    );
    let server = Server::start_with(
        &[
            ("gh.yaml", &github),
            ("pay.yaml", &stripe),
            ("std.yaml", &standard),
        ],
        &[],
        &[
            ("GH_SECRET", "gh-s3cret"),
            ("STRIPE_SECRET", "whsec_stripe"),
            ("SW_SECRET", "whsec_bmV3bmV3bmV3bmV3"),
        ],
    );
    let body = r#"{"id":"evt_1"}"#;

    let good = format!(
        "sha256={}",
        hex::encode(hmac_sha256(b"gh-s3cret", body.as_bytes()))
    );
    let (status, ack) = post(
        &server,
        "gh",
        body,
        &[("x-hub-signature-256", good.clone())],
    )
    .await;
    assert_eq!(
        (status, ack["status"].as_str()),
        (200, Some("queued")),
        "{ack}"
    );
    let wrong = format!(
        "sha256={}",
        hex::encode(hmac_sha256(b"guess", body.as_bytes()))
    );
    let (status, err) = post(&server, "gh", body, &[("x-hub-signature-256", wrong)]).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (401, Some("invalid_signature"))
    );
    assert!(err["detail"].as_str().unwrap().contains("github"), "{err}");
    let (status, _) = post(
        &server,
        "gh",
        r#"{"id":"evt_2"}"#,
        &[("x-hub-signature-256", good)],
    )
    .await;
    assert_eq!(status, 401, "a changed body");
    let (status, err) = post(&server, "gh", body, &[]).await;
    assert_eq!(status, 401);
    assert!(err["detail"].as_str().unwrap().contains("missing"), "{err}");
    assert_eq!(
        server.all_runs("gh").await.len(),
        1,
        "refused requests store nothing"
    );
    // The flow's hook log shows each request and why it was refused; metrics count them.
    let (status, log) = server.get("/api/v1/flows/gh/hooks").await;
    assert_eq!(status, 200);
    let outcomes: Vec<(&str, &str)> = log["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let why = r["reason"].as_str().unwrap_or_default();
            (r["outcome"].as_str().unwrap(), why)
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("rejected", "invalid_signature"),
            ("rejected", "invalid_signature"),
            ("rejected", "invalid_signature"),
            ("queued", ""),
        ],
        "newest first: {log:#}"
    );
    assert!(log["requests"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("missing"));
    let metrics = server.metrics().await;
    for line in [
        r#"hookflow_events_rejected_total{flow="gh",reason="invalid_signature"} 3"#,
        r#"hookflow_events_received_total{flow="gh",outcome="queued"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    let stripe_header = |t: u64| {
        let sig = hmac_sha256(b"whsec_stripe", format!("{t}.{body}").as_bytes());
        format!("t={t},v1={}", hex::encode(sig))
    };
    let (status, _) = post(
        &server,
        "pay",
        body,
        &[("stripe-signature", stripe_header(now_secs()))],
    )
    .await;
    assert_eq!(status, 200);
    let stale = stripe_header(now_secs() - 600);
    let (status, err) = post(&server, "pay", body, &[("stripe-signature", stale)]).await;
    assert_eq!(status, 401);
    assert!(
        err["detail"].as_str().unwrap().contains("tolerance 60 s"),
        "{err}"
    );

    // Signed with the second (new) secret of a rotation.
    let t = now_secs().to_string();
    let key = base64::engine::general_purpose::STANDARD
        .decode("bmV3bmV3bmV3bmV3")
        .unwrap();
    let sig = hmac_sha256(&key, format!("msg_1.{t}.{body}").as_bytes());
    let signature = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(sig)
    );
    let headers = [
        ("webhook-id", "msg_1".to_owned()),
        ("webhook-timestamp", t),
        ("webhook-signature", signature),
    ];
    let (status, ack) = post(&server, "std", body, &headers).await;
    assert_eq!(status, 200, "{ack}");
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;
    let stored = run.to_string();
    assert!(
        !stored.contains("bmV3bmV3") && !stored.contains("gh-s3cret"),
        "secrets never stored"
    );
}

#[test]
fn a_bad_verify_block_is_reported_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, flow("bad", "{ provider: stripee, secret: x }")).unwrap();
    std::fs::write(
        dir.path().join("nosecret.yaml"),
        flow("nosecret", "{ provider: github }"),
    )
    .unwrap();
    let out = run_cli(&["validate", dir.path().to_str().unwrap()], dir.path());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("bad.yaml:5:")
            && text.contains("trigger.webhook.verify.provider: unknown provider `stripee`"),
        "{text}"
    );
    assert!(
        text.contains("`stripe`") && text.contains("`github`"),
        "{text}"
    );
    assert!(
        text.contains("nosecret.yaml:5:") && text.contains("missing field `secret`"),
        "{text}"
    );
}

#[tokio::test]
async fn a_hubspot_batch_becomes_one_run_per_wanted_event_and_redeliveries_are_duplicates() {
    let hubspot = r#"
id: hs
trigger:
  webhook:
    verify: { provider: hubspot, secret: "${env:HUBSPOT_SECRET}" }
    events: [contact.creation]
steps:
  - id: shape
    map: { contact: "{{trigger.body.objectId}}" }
"#;
    let github = flow(
        "gh",
        r#"{ provider: github, secret: s }
    events: [push]"#,
    );
    let server = Server::start_with(
        &[("hs.yaml", hubspot), ("gh.yaml", &github)],
        &[],
        &[("HUBSPOT_SECRET", "client-secret")],
    );
    let batch = json!([
        { "eventId": 101, "subscriptionType": "contact.creation", "objectId": 1 },
        { "eventId": 102, "subscriptionType": "contact.creation", "objectId": 2 },
        { "eventId": 103, "subscriptionType": "contact.deletion", "objectId": 3 },
    ])
    .to_string();
    let url = server.catch_url("hs");
    let signed = |body: &str| {
        let t = (now_secs() * 1000).to_string();
        let sig = hmac_sha256(b"client-secret", format!("POST{url}{body}{t}").as_bytes());
        vec![
            ("x-hubspot-request-timestamp", t),
            (
                "x-hubspot-signature-v3",
                base64::engine::general_purpose::STANDARD.encode(sig),
            ),
        ]
    };
    let (status, answer) = post(&server, "hs", &batch, &signed(&batch)).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    let statuses: Vec<_> = answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].clone())
        .collect();
    assert_eq!(statuses, ["queued", "queued", "ignored"]);
    let first = answer["events"][0]["run_id"].clone();
    let run = server.finished_run(first.as_str().unwrap()).await;
    assert_eq!(run["steps"][0]["output"]["contact"], 1);

    // HubSpot redelivers the same batch: the provider's event ids make them duplicates.
    let (_, again) = post(&server, "hs", &batch, &signed(&batch)).await;
    let statuses: Vec<_> = again["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].clone())
        .collect();
    assert_eq!(statuses, ["duplicate", "duplicate", "ignored"]);
    assert_eq!(again["events"][0]["run_id"], first);
    assert_eq!(server.all_runs("hs").await.len(), 2);

    let body = r#"{"action":"opened"}"#;
    let sig = format!("sha256={}", hex::encode(hmac_sha256(b"s", body.as_bytes())));
    let headers = [
        ("x-hub-signature-256", sig),
        ("x-github-event", "issues".to_owned()),
    ];
    let (status, answer) = post(&server, "gh", body, &headers).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("ignored")),
        "{answer}"
    );
    assert!(
        answer["reason"].as_str().unwrap().contains("`issues`"),
        "{answer}"
    );
    assert!(server.all_runs("gh").await.is_empty());
}

#[tokio::test]
async fn an_http_action_signs_with_standard_webhooks_and_a_verified_hook_accepts_it() {
    // Two flows on one server: `sender` posts to `receiver`'s catch URL, signing with the secret
    // `receiver` verifies with; `forger` signs with another secret and is refused.
    let receiver = flow(
        "receiver",
        r#"{ provider: standard-webhooks, secret: "${env:SHARED}" }"#,
    );
    let sender = |id: &str, secret: &str| {
        format!(
            r#"
id: {id}
trigger: {{ webhook: }}
steps:
  - id: forward
    http:
      url: "${{env:RECEIVER_URL}}"
      json: {{ id: "{{{{trigger.body.id}}}}" }}
      sign: {{ standard_webhooks: "{secret}" }}
    retry: {{ attempts: 1 }}
"#
        )
    };
    // The sender posts to this server's own catch hook: allowed, as only the inspector is by itself.
    let mut server = Server::start_with(
        &[("receiver.yaml", &receiver)],
        &["--allow-outbound", "127.0.0.1"],
        &[("SHARED", "whsec_c2hhcmVkc2hhcmVk")],
    );
    let receiver_url = server.catch_url("receiver");
    server.stop_gracefully();
    server.write_flow("sender.yaml", &sender("sender", "${env:SHARED}"));
    server.write_flow("forger.yaml", &sender("forger", "whsec_Zm9yZ2VkZm9yZ2Vk"));
    server.set_env("RECEIVER_URL", &receiver_url);
    server.restart();

    let (_, ack) = server.send("sender", &json!({ "id": "evt_9" })).await;
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][0]["input"]["sign"], "standard-webhooks");
    assert!(
        !run.to_string().contains("c2hhcmVk"),
        "the secret is not recorded"
    );
    let received = server.all_runs("receiver").await;
    assert_eq!(received.len(), 1);
    let delivered = server
        .finished_run(received[0]["id"].as_str().unwrap())
        .await;
    let headers = &delivered["event"]["trigger"]["headers"];
    assert_eq!(
        headers["webhook-id"],
        format!("{}:forward", ack["run_id"].as_str().unwrap())
    );
    assert_eq!(delivered["event"]["trigger"]["body"]["id"], "evt_9");

    let (_, ack) = server.send("forger", &json!({ "id": "evt_10" })).await;
    let run = server.finished_run(ack["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "failed");
    assert!(run["reason"].as_str().unwrap().contains("401"), "{run:#}");
    assert_eq!(server.all_runs("receiver").await.len(), 1);
    assert!(server.stop_gracefully());
}

/// What Svix and Twilio send, through the real server: Standard Webhooks under `svix-*` header
/// names, and a Twilio form with a repeated identical value signed the way Twilio's SDKs count it.
#[tokio::test]
async fn svix_headers_and_twilio_repeated_values_are_accepted_and_tampering_refused() {
    let svix = flow(
        "svix",
        r#"{ provider: standard-webhooks, secret: "whsec_b2xkb2xkb2xkb2xk" }"#,
    );
    let twilio = flow(
        "sms",
        r#"{ provider: twilio, secret: "${env:TWILIO_TOKEN}" }"#,
    );
    let server = Server::start_with(
        &[("svix.yaml", &svix), ("sms.yaml", &twilio)],
        &[],
        &[("TWILIO_TOKEN", "twilio-auth-token")],
    );
    let body = r#"{"id":"evt_svix"}"#;
    let t = now_secs().to_string();
    let key = base64::engine::general_purpose::STANDARD
        .decode("b2xkb2xkb2xkb2xk")
        .unwrap();
    let sig = hmac_sha256(&key, format!("msg_svix.{t}.{body}").as_bytes());
    let signature = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(sig)
    );
    let headers = [
        ("svix-id", "msg_svix".to_owned()),
        ("svix-timestamp", t),
        ("svix-signature", signature),
    ];
    let (status, ack) = post(&server, "svix", body, &headers).await;
    assert_eq!(status, 200, "{ack}");
    let (status, again) = post(&server, "svix", body, &headers).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["run_id"], ack["run_id"], "svix-id deduplicates");
    let (status, _) = post(&server, "svix", r#"{"id":"evt_other"}"#, &headers).await;
    assert_eq!(status, 401);

    // Twilio signs the URL and the sorted fields, each distinct value once.
    let url = server.catch_url("sms");
    let signed = format!("{url}Digits1234From+14158675309");
    let sig = base64::engine::general_purpose::STANDARD
        .encode(hmac_sha1(b"twilio-auth-token", signed.as_bytes()));
    let send = |form: &'static str| {
        let request = reqwest::Client::new()
            .post(url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", sig.clone())
            .body(form);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        send("Digits=1234&Digits=1234&From=%2B14158675309").await,
        200
    );
    assert_eq!(send("Digits=1234&From=%2B14158675309").await, 200);
    assert_eq!(
        send("Digits=1234&Digits=9999&From=%2B14158675309").await,
        401
    );
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}
