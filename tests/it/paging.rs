//! The `http` step's `paginate:` against a real list API on 127.0.0.1: a cursor, an offset and
//! `Link: rel="next"`, `max_pages`, a page retried on its own, and a next page on another server
//! refused.

use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::support::{run_cli, step, Server};

/// Seven items, three to a page.
const ITEMS: usize = 7;
const PAGE: usize = 3;

/// A list API: `/cursor?cursor=N`, `/offset?offset=N`, `/link?page=N` and `/away` (a `Link` to
/// another server), recording each request's query and `Idempotency-Key`, and failing the
/// requests listed in `fail` (by their query string) once each with 503.
#[derive(Clone, Default)]
struct ListApi {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    fail: Arc<Mutex<Vec<String>>>,
}

impl ListApi {
    async fn start(fail: &[&str]) -> (Self, String) {
        let api = Self {
            fail: Arc::new(Mutex::new(fail.iter().map(|s| s.to_string()).collect())),
            ..Self::default()
        };
        let app = Router::new()
            .route("/cursor", get(cursor))
            .route("/offset", get(offset))
            .route("/link", get(link))
            .route("/away", get(away))
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (api, url)
    }

    /// Records the request; whether it is to fail this time.
    fn record(&self, query: &[(String, String)], headers: &HeaderMap) -> bool {
        let query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.seen.lock().unwrap().push((query.clone(), key));
        let mut fail = self.fail.lock().unwrap();
        match fail.iter().position(|f| *f == query) {
            Some(i) => {
                fail.remove(i);
                true
            }
            None => false,
        }
    }

    fn queries(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(q, _)| q.clone())
            .collect()
    }

    fn keys(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, k)| k.clone())
            .collect()
    }
}

fn page(from: usize) -> Vec<Value> {
    (from..(from + PAGE).min(ITEMS))
        .map(|i| json!({ "id": i }))
        .collect()
}

fn number(query: &[(String, String)], name: &str) -> usize {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map_or(0, |(_, v)| v.parse().unwrap())
}

const UNAVAILABLE: (StatusCode, &str) = (StatusCode::SERVICE_UNAVAILABLE, "try again");

async fn cursor(
    State(api): State<ListApi>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    if api.record(&query, &headers) {
        return UNAVAILABLE.into_response();
    }
    let from = number(&query, "cursor");
    let next = (from + PAGE < ITEMS).then(|| (from + PAGE).to_string());
    Json(json!({ "data": page(from), "meta": { "next": next } })).into_response()
}

async fn offset(
    State(api): State<ListApi>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    if api.record(&query, &headers) {
        return UNAVAILABLE.into_response();
    }
    let from = number(&query, "offset");
    let items: Vec<Value> = if from < ITEMS { page(from) } else { Vec::new() };
    Json(json!(items)).into_response()
}

async fn link(
    State(api): State<ListApi>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    if api.record(&query, &headers) {
        return UNAVAILABLE.into_response();
    }
    let n = number(&query, "page").max(1);
    let from = (n - 1) * PAGE;
    let mut answer = Json(json!({ "results": page(from) })).into_response();
    if from + PAGE < ITEMS {
        let next = format!(
            "</link?page={}>; rel=\"next\", </link?page=1>; rel=\"first\"",
            n + 1
        );
        answer.headers_mut().insert("link", next.parse().unwrap());
    }
    answer
}

async fn away(
    State(api): State<ListApi>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    api.record(&query, &headers);
    let mut answer = Json(json!({ "results": page(0) })).into_response();
    let next = "<http://127.0.0.2:9/stolen?page=2>; rel=\"next\"";
    answer.headers_mut().insert("link", next.parse().unwrap());
    answer
}

/// A flow of one paged `http` step at `url` with this `paginate:` (YAML flow mapping).
fn flow(url: &str, paginate: &str) -> String {
    format!(
        "id: list\ntrigger: {{ webhook: }}\nsteps:\n  - id: fetch\n    http:\n      url: \"{url}\"\n      headers: {{ Authorization: \"Bearer t0ken\" }}\n      paginate: {paginate}\n    retry: {{ attempts: 1 }}\n"
    )
}

async fn run_flow(yaml: &str) -> Value {
    let server = Server::start(&[("list.yaml", yaml)]);
    let (status, ack) = server.send("list", &json!({})).await;
    assert_eq!(status, 200, "{ack}");
    server.finished_run(ack["run_id"].as_str().unwrap()).await
}

fn ids(output: &Value) -> Vec<u64> {
    output["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {output:#}"))
        .iter()
        .map(|i| i["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_cursor_is_followed_to_the_last_page_and_a_failed_page_is_retried_on_its_own() {
    let (api, base) = ListApi::start(&["cursor=3"]).await;
    let yaml = flow(
        &format!("{base}/cursor"),
        "{ items: $.body.data, next: { cursor: { from: $.body.meta.next, param: cursor } } }",
    );
    let run = run_flow(&yaml).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let fetch = step(&run, "fetch");
    let output = &fetch["output"];
    assert_eq!(ids(output), [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(output["truncated"], false);
    assert_eq!(
        api.queries(),
        ["", "cursor=3", "cursor=3", "cursor=6"],
        "the second page failed once and was asked again; the first was not"
    );
    let attempts: Vec<usize> = output["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["attempts"].as_array().unwrap().len())
        .collect();
    assert_eq!(attempts, [1, 2, 1], "each page's attempts are recorded");
    assert!(output["pages"][1]["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("503"));
    assert_eq!(
        fetch["attempts"].as_array().unwrap().len(),
        1,
        "one step attempt"
    );
    let run_id = run["id"].as_str().unwrap();
    assert_eq!(
        api.keys(),
        [
            format!("{run_id}:fetch"),
            format!("{run_id}:fetch:page2"),
            format!("{run_id}:fetch:page2"),
            format!("{run_id}:fetch:page3"),
        ],
        "each page has its own idempotency key, the same on its retry"
    );
}

#[tokio::test]
async fn an_offset_pages_until_an_empty_page_and_max_pages_truncates() {
    let (api, base) = ListApi::start(&[]).await;
    let all = run_flow(&flow(
        &format!("{base}/offset"),
        "{ items: $.body, next: { offset: offset } }",
    ))
    .await;
    let output = &step(&all, "fetch")["output"];
    assert_eq!(ids(output), [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(
        api.queries(),
        ["", "offset=3", "offset=6", "offset=7"],
        "the offset is the number of items so far; the empty page ends"
    );

    let (api, base) = ListApi::start(&[]).await;
    let two = run_flow(&flow(
        &format!("{base}/offset"),
        "{ items: $.body, next: { offset: offset }, max_pages: 2 }",
    ))
    .await;
    let output = &step(&two, "fetch")["output"];
    assert_eq!(ids(output), [0, 1, 2, 3, 4, 5]);
    assert_eq!(output["truncated"], true);
    assert_eq!(api.queries().len(), 2, "no more than max_pages requests");
}

#[tokio::test]
async fn a_link_header_is_followed_on_the_same_server_only() {
    let (api, base) = ListApi::start(&[]).await;
    let run = run_flow(&flow(
        &format!("{base}/link"),
        "{ items: \"$.body.results[*]\", next: { link: true } }",
    ))
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let output = &step(&run, "fetch")["output"];
    assert_eq!(ids(output), [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(api.queries(), ["", "page=2", "page=3"]);
    assert!(output["pages"][2]["url"]
        .as_str()
        .unwrap()
        .ends_with("/link?page=3"));

    let (_, base) = ListApi::start(&[]).await;
    let run = run_flow(&flow(
        &format!("{base}/away"),
        "{ items: $.body.results, next: { link: true } }",
    ))
    .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = step(&run, "fetch")["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("not on the first page's server"), "{error}");
}

#[test]
fn a_dry_run_shows_the_first_page_and_how_it_would_page() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = flow(
        "https://api.example.com/items",
        "{ items: $.body.data, next: { cursor: { from: $.body.next, param: cursor } } }",
    );
    std::fs::write(dir.path().join("list.yaml"), yaml).unwrap();
    std::fs::write(dir.path().join("event.json"), "{}").unwrap();
    let out = run_cli(
        &["run", "list.yaml", "--event", "event.json", "--dry-run"],
        dir.path(),
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("only the first page's request is shown"),
        "{shown}"
    );
    assert!(shown.contains("\"param\": \"cursor\""), "{shown}");
    assert!(
        !shown.contains("resolved to nothing"),
        "paging's JSONPaths read pages, not the run: {shown}"
    );
}

#[test]
fn the_schema_describes_paging() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&["schema"], dir.path());
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    let paginate = &schema["$defs"]["PaginateSpec"];
    let fields: Vec<&String> = paginate["properties"].as_object().unwrap().keys().collect();
    assert_eq!(fields, ["items", "next", "max_pages", "page_attempts"]);
    assert_eq!(paginate["required"], json!(["items", "next"]));
    let next: Vec<&String> = schema["$defs"]["NextSpec"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(next, ["cursor", "offset", "link"]);
}
