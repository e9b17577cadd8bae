//! The OpenAPI document: it parses as OpenAPI 3, and every route the server registers is in it
//! with its methods.

use std::collections::BTreeSet;

use regex::Regex;
use serde_json::Value;

use crate::support::Server;

/// (method, path) of every `.route(…)` in the server's sources.
fn registered_routes() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let route = Regex::new(r#"(?s)\.route\(\s*"([^"]+)",\s*((?:[a-z_]+\([^)]*\)\.?)+)"#).unwrap();
    let method = Regex::new(r"\b(get|post|put|patch|delete|any)\(").unwrap();
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for c in route.captures_iter(&text) {
            for m in method.captures_iter(&c[2]) {
                let verb = match &m[1] {
                    "any" => "post".to_owned(),
                    other => other.to_owned(),
                };
                routes.insert((verb, c[1].to_owned()));
            }
        }
    }
    routes
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_lists_every_route() {
    let server = Server::start(&[]);
    let (status, doc) = server.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    let parsed: openapiv3::OpenAPI =
        serde_json::from_value(doc.clone()).expect("a valid OpenAPI 3 document");
    assert!(parsed.openapi.starts_with("3."));

    let routes = registered_routes();
    assert!(routes.len() > 25, "the route scan found {routes:?}");
    for (method, path) in &routes {
        if path == "/" || path.starts_with("/assets") {
            continue; // the UI's page and files
        }
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not in the OpenAPI document"
        );
    }
    // Request bodies come from the handlers' own types.
    let body = &doc["paths"]["/api/v1/flows/{flow_id}/capture"]["post"]["requestBody"];
    let schema = body["content"]["application/json"]["schema"].clone();
    let name = schema["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
    let count = &doc["components"]["schemas"][name]["properties"]["count"];
    assert_eq!(count["type"], Value::from("integer"), "{schema}");
    assert_eq!(
        (count["minimum"].as_u64(), count["maximum"].as_u64()),
        (Some(1), Some(100))
    );
    // Ids have the patterns the handlers accept, and bounds are stated.
    let run = &doc["paths"]["/api/v1/runs/{run_id}"]["get"]["parameters"][0]["schema"];
    assert!(
        run["pattern"].as_str().unwrap().starts_with("^run_"),
        "{run}"
    );
    let flow = &doc["paths"]["/api/v1/flows/{flow_id}"]["get"]["parameters"][0]["schema"];
    assert!(flow["pattern"].is_string(), "{flow}");
    let limit = doc["paths"]["/api/v1/runs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()["schema"]
        .clone();
    assert_eq!(limit["maximum"], 1000, "{limit}");
    // Without credentials configured, nothing declares authentication.
    assert!(doc.get("security").is_none() && doc["components"].get("securitySchemes").is_none());
}

#[tokio::test]
async fn the_openapi_document_declares_the_security_configured() {
    let server = Server::start_with(&[], &[], &[("HOOKFLOW_API_TOKEN", "tok-123")]);
    let (status, doc) = server.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
    assert!(doc["components"]["securitySchemes"]
        .get("session")
        .is_none());
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        serde_json::json!([])
    );
    assert!(doc["paths"]["/api/v1/runs"]["get"]
        .get("security")
        .is_none());
}
