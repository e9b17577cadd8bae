//! Secrets stay secret through transformations: a value any text helper computes from a secret is
//! redacted wherever the secret itself would be (run history, `respond: result`, preview, the
//! request inspector).

use serde_json::{json, Value};

use crate::support::Server;

/// A secret every text helper changes: mixed case, spaces, `+` and `/`, an email and a URL.
const SECRET: &str = "Tok3n Val+ue/42 ops@Example.com https://Hooks.example.com/k?x=1";

/// Each text helper over the secret, by output key.
const HELPERS: [(&str, &str); 17] = [
    ("upper", "{{upper \\\"${env:SEC}\\\"}}"),
    ("lower", "{{lower \\\"${env:SEC}\\\"}}"),
    ("trim", "{{trim \\\"  ${env:SEC}  \\\"}}"),
    ("title", "{{title \\\"${env:SEC}\\\"}}"),
    ("truncate", "{{truncate \\\"${env:SEC}\\\" 12}}"),
    (
        "replace",
        "{{replace \\\"${env:SEC}\\\" \\\"Tok3n\\\" \\\"T\\\"}}",
    ),
    ("split", "{{split \\\"${env:SEC}\\\" \\\" \\\"}}"),
    (
        "join",
        "{{join (split \\\"${env:SEC}\\\" \\\" \\\") \\\"-\\\"}}",
    ),
    ("slug", "{{slug \\\"${env:SEC}\\\"}}"),
    ("extract_email", "{{extract_email \\\"${env:SEC}\\\"}}"),
    ("extract_url", "{{extract_url \\\"${env:SEC}\\\"}}"),
    ("base64", "{{base64_encode \\\"${env:SEC}\\\"}}"),
    (
        "base64_twice",
        "{{base64_encode (base64_encode \\\"${env:SEC}\\\")}}",
    ),
    ("url_encode", "{{url_encode \\\"${env:SEC}\\\"}}"),
    ("sha256", "{{sha256 \\\"${env:SEC}\\\"}}"),
    ("json", "{{json \\\"${env:SEC}\\\"}}"),
    ("in_text", "Bearer {{upper \\\"${env:SEC}\\\"}}!"),
];

fn flow(inspector: &str) -> String {
    let map: String = HELPERS
        .iter()
        .map(|(k, t)| format!("      {k}: \"{t}\"\n"))
        .collect();
    format!(
        "id: vault\ntrigger: {{ webhook: {{ respond: result }} }}\nsteps:\n  - id: send\n    http:\n      url: \"{inspector}/inspect/vault\"\n      headers: {{ Authorization: \"Bearer ${{env:SEC}}\", X-Derived: \"{{{{base64_encode \\\"${{env:SEC}}\\\"}}}}\" }}\n      json: {{ loud: \"{{{{upper \\\"${{env:SEC}}\\\"}}}}\" }}\n  - id: shape\n    map:\n{map}"
    )
}

/// Asserts that no transformed form of the secret, nor any piece of it, is in `value`.
fn assert_clean(what: &str, value: &Value) {
    let text = value.to_string();
    for piece in SECRET.split(' ') {
        let forms = [piece.to_owned(), piece.to_uppercase(), piece.to_lowercase()];
        for form in forms {
            assert!(!text.contains(&form), "{what} shows `{form}`: {text}");
        }
    }
    assert!(
        !text.contains("VG9rM2"),
        "{what} shows the base64 form: {text}"
    );
}

#[tokio::test]
async fn every_text_helper_over_a_secret_is_redacted_everywhere() {
    // The server's own address is not known before it starts: a first start finds the port.
    let mut server = Server::start_with(&[], &[], &[("SEC", SECRET)]);
    server.write_flow("vault.yaml", &flow(&server.base));
    server.stop_gracefully();
    server.restart();

    let (status, answer) = server.send("vault", &json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_clean("respond: result", &answer);
    let output = &answer["output"];
    for (key, _) in HELPERS {
        let shown = &output[key];
        let redacted = match shown {
            Value::Array(items) => items.iter().all(|i| i == "[redacted]"),
            Value::String(s) => s.contains("[redacted]"),
            _ => false,
        };
        assert!(redacted, "{key}: {shown}");
    }

    let run = server
        .finished_run(answer["run_id"].as_str().unwrap())
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_clean("run history", &run["steps"]);

    let (status, preview) = server
        .post(
            "/api/v1/flows/vault/preview",
            &json!({ "event": { "body": {} } }),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_clean("preview", &preview);

    let (status, bin) = server.get("/api/v1/inspector/vault").await;
    assert_eq!(status, 200, "{bin}");
    let request = &bin["requests"][0];
    assert_eq!(request["headers"]["authorization"], "[redacted]");
    assert_eq!(request["headers"]["x-derived"], "[redacted]");
    assert_eq!(request["body"]["loud"], "[redacted]");
    assert_clean("inspector", &bin);
}
