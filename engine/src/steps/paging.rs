//! Paging through a list API: the `http` step's `paginate:`, and the `Link: rel="next"` reading
//! the connector kit shares.
//!
//! A paged `http` step requests page after page, following a cursor from each answer (a
//! JSONPath), an offset (the number of items so far) or the `Link` header's `rel="next"` URL, and
//! collects each page's items (a JSONPath) into one output:
//! `{status, headers, body, items, pages, truncated}` (`status`, `headers` and `body` are the last
//! page's).
//!
//! Invariants:
//! - At most `max_pages` requests are made; an empty page, or an answer with no next page, ends
//!   the walk; stopping at `max_pages` with more to come says `truncated: true`.
//! - A next page is requested only at the first page's origin (scheme, host and port): a `Link`
//!   header cannot send the step's credentials elsewhere.
//! - Each page is one request with its own attempts ([`PAGE_ATTEMPTS`] by default), retried on its
//!   own when it fails transiently (`Retry-After` honoured); every attempt is listed under its
//!   page in `pages`. A page that fails for good fails the step with the pages so far in the
//!   error's detail; the step's own `retry` then starts again from the first page.
//! - The first page is sent under the step's idempotency key, page `n` under `{key}:page{n}`.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{BuildContext, StepError};
use crate::expr::{Templates, ValueExpr};

/// Pages requested by default, and at most.
const DEFAULT_MAX_PAGES: u32 = 10;
const MAX_MAX_PAGES: u32 = 1000;

/// Attempts per page by default, and at most.
pub const PAGE_ATTEMPTS: u32 = 3;
const MAX_PAGE_ATTEMPTS: u32 = 10;

/// Follow a list API's pages, collecting their items into one output.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaginateSpec {
    /// Where a page's items are: a JSONPath into the page's response `{status, headers, body}`
    /// (`$.body.data`; `$.body` when the body is the list).
    pub items: String,
    /// Where the next page starts: `{cursor: {from, param}}`, `{offset: PARAM}` or `{link: true}`.
    pub next: NextSpec,
    /// The most pages requested (default 10, at most 1000).
    #[serde(default)]
    pub max_pages: Option<u32>,
    /// How many times each page is tried before the step fails (default 3, at most 10).
    #[serde(default)]
    pub page_attempts: Option<u32>,
}

/// How an API says where its next page starts: exactly one of `cursor`, `offset` and `link`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NextSpec {
    /// A cursor in each answer, sent back as a query parameter; no cursor (missing, `null` or
    /// `""`) is the last page.
    #[serde(default)]
    pub cursor: Option<CursorSpec>,
    /// The query parameter (`offset`) that sends the number of items received so far; an empty
    /// page is the last.
    #[serde(default)]
    pub offset: Option<String>,
    /// `true`: follow the `Link` header's `rel="next"` URL (GitHub-style); none is the last page.
    #[serde(default)]
    pub link: bool,
}

/// Where a cursor is read and how it is sent back.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CursorSpec {
    /// A JSONPath to the cursor in the page's response (`$.body.meta.next_cursor`).
    pub from: String,
    /// The query parameter that sends it (`cursor`).
    pub param: String,
}

/// [`PaginateSpec`], built.
#[derive(Debug)]
pub(super) struct Paginate {
    items: ValueExpr,
    next: Next,
    max_pages: u32,
    /// Attempts per page.
    pub(super) attempts: u32,
    /// The spec as written, recorded in the step's input.
    described: Value,
}

#[derive(Debug)]
enum Next {
    Cursor { from: ValueExpr, param: String },
    Offset { param: String },
    Link,
}

impl PaginateSpec {
    /// Builds it, recording problems under `paginate`.
    pub(super) fn build(self, cx: &mut BuildContext<'_>) -> Option<Paginate> {
        let items = jsonpath(cx, "paginate.items", &self.items);
        let (next, described) = match self.next {
            NextSpec {
                cursor: Some(CursorSpec { from, param }),
                offset: None,
                link: false,
            } => (
                jsonpath(cx, "paginate.next.cursor.from", &from).map(|from| Next::Cursor {
                    from,
                    param: param.clone(),
                }),
                json!({ "cursor": { "from": from, "param": param } }),
            ),
            NextSpec {
                cursor: None,
                offset: Some(param),
                link: false,
            } => (
                Some(Next::Offset {
                    param: param.clone(),
                }),
                json!({ "offset": param }),
            ),
            NextSpec {
                cursor: None,
                offset: None,
                link: true,
            } => (Some(Next::Link), json!({ "link": true })),
            _ => {
                cx.error(
                    "paginate.next",
                    "give exactly one of `cursor: {from, param}`, `offset: PARAM` and `link: true`",
                );
                (None, Value::Null)
            }
        };
        let described = json!({ "items": self.items, "next": described });
        let max_pages = self.max_pages.unwrap_or(DEFAULT_MAX_PAGES);
        if !(1..=MAX_MAX_PAGES).contains(&max_pages) {
            cx.error(
                "paginate.max_pages",
                format!("between 1 and {MAX_MAX_PAGES}, not {max_pages}"),
            );
        }
        let attempts = self.page_attempts.unwrap_or(PAGE_ATTEMPTS);
        if !(1..=MAX_PAGE_ATTEMPTS).contains(&attempts) {
            cx.error(
                "paginate.page_attempts",
                format!("between 1 and {MAX_PAGE_ATTEMPTS}, not {attempts}"),
            );
        }
        let mut described = described;
        described["max_pages"] = json!(max_pages);
        described["page_attempts"] = json!(attempts);
        Some(Paginate {
            items: items?,
            next: next?,
            max_pages,
            attempts,
            described,
        })
    }
}

/// Compiles a JSONPath (and only a JSONPath) at `field`.
fn jsonpath(cx: &mut BuildContext<'_>, field: &str, path: &str) -> Option<ValueExpr> {
    if !(path.starts_with("$.") || path.starts_with("$[")) {
        cx.error(
            field,
            format!("`{path}` is not a JSONPath: write one such as `$.body.data`"),
        );
        return None;
    }
    cx.value(field, &json!(path))
}

impl Paginate {
    /// How the step's recorded input shows it.
    pub(super) fn describe(&self) -> Value {
        self.described.clone()
    }

    /// A walk through the pages, starting with the request `input`.
    pub(super) fn walk<'a>(&'a self, input: Value, templates: &'a Templates) -> Walk<'a> {
        Walk {
            paginate: self,
            templates,
            origin: origin(input["url"].as_str().unwrap_or_default()),
            next: Some(input),
            items: Vec::new(),
            pages: Vec::new(),
            last: Value::Null,
        }
    }
}

/// Where a walk through the pages stands.
pub(super) struct Walk<'a> {
    paginate: &'a Paginate,
    templates: &'a Templates,
    /// The first page's scheme, host and port.
    origin: Option<String>,
    /// The next page's request, if there is one.
    next: Option<Value>,
    items: Vec<Value>,
    /// One record per page requested: `{page, url, attempts}`.
    pages: Vec<Value>,
    /// The latest page's response.
    last: Value,
}

impl Walk<'_> {
    /// The next page's request and idempotency key (`key` is the step's), or `None` when the
    /// walk is over.
    pub(super) fn next_request(&mut self, key: &str) -> Option<(Value, String)> {
        if self.pages.len() as u32 >= self.paginate.max_pages {
            return None;
        }
        let input = self.next.take()?;
        let page = self.pages.len() + 1;
        self.pages
            .push(json!({ "page": page, "url": input["url"], "attempts": [] }));
        let key = if page == 1 {
            key.to_owned()
        } else {
            format!("{key}:page{page}")
        };
        Some((input, key))
    }

    /// Records an attempt of the current page: `{duration_ms, status}` or `{duration_ms, error}`.
    pub(super) fn attempt(&mut self, attempt: Value) {
        if let Some(Value::Array(attempts)) =
            self.pages.last_mut().and_then(|p| p.get_mut("attempts"))
        {
            attempts.push(attempt);
        }
    }

    /// Takes the current page's response (`{status, headers, body}`, as sent by `request`):
    /// collects its items and works out the next page's request.
    pub(super) fn page(&mut self, request: Value, response: Value) -> Result<(), StepError> {
        let found = self.paginate.items.render(self.templates, &response)?;
        let got = match found {
            Value::Null => 0,
            Value::Array(items) => {
                let n = items.len();
                self.items.extend(items);
                n
            }
            other => {
                return Err(StepError::permanent(format!(
                    "`paginate.items` found {} on page {}, not a list",
                    crate::expr::kind_of(&other),
                    self.pages.len()
                )))
            }
        };
        self.next = if got == 0 {
            None
        } else {
            self.next_after(request, &response)?
        };
        self.last = response;
        Ok(())
    }

    fn next_after(&self, mut request: Value, response: &Value) -> Result<Option<Value>, StepError> {
        let param = match &self.paginate.next {
            Next::Cursor { from, param } => {
                let cursor = match from.render(self.templates, response)? {
                    Value::Null => return Ok(None),
                    Value::String(s) if s.is_empty() => return Ok(None),
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                if request["query"][param] == json!(cursor) {
                    return Ok(None); // the same cursor again: the API is not moving on
                }
                (param, json!(cursor))
            }
            Next::Offset { param } => (param, json!(self.items.len())),
            Next::Link => {
                let links = response["headers"]["link"].as_str();
                let Some(url) = links.and_then(|l| next_link([l])) else {
                    return Ok(None);
                };
                let base = reqwest::Url::parse(request["url"].as_str().unwrap_or_default());
                let url = base.and_then(|b| b.join(&url)).map_err(|e| {
                    StepError::permanent(format!("the next page `{url}` is not a URL: {e}"))
                })?;
                if origin(url.as_str()) != self.origin {
                    return Err(StepError::permanent(format!(
                        "the next page `{url}` is not on the first page's server: not followed"
                    )));
                }
                request["url"] = json!(url.as_str());
                request["query"] = json!({});
                return Ok(Some(request));
            }
        };
        let (name, value) = param;
        match request.get_mut("query") {
            Some(Value::Object(query)) => {
                query.insert(name.clone(), value);
            }
            _ => request["query"] = Value::Object(Map::from_iter([(name.clone(), value)])),
        }
        Ok(Some(request))
    }

    /// The step's output.
    pub(super) fn finish(self) -> Value {
        let truncated = self.next.is_some();
        json!({
            "status": self.last["status"],
            "headers": self.last["headers"],
            "body": self.last["body"],
            "items": self.items,
            "pages": self.pages,
            "truncated": truncated,
        })
    }

    /// A page's failure as the step's error, with the pages so far in its detail.
    pub(super) fn failed(self, mut e: StepError) -> StepError {
        let page = self.pages.len();
        e.message = format!("page {page}: {}", e.message);
        e.detail =
            json!({ "page": e.detail, "pages": self.pages, "items_so_far": self.items.len() });
        e
    }
}

/// A URL's scheme, host and port.
fn origin(url: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

/// The `rel="next"` URL among `Link` header values (`<https://…?page=2>; rel="next", <…>; rel="last"`).
pub fn next_link<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find(|part| {
            part.split(';').skip(1).any(|p| {
                let p = p.trim();
                p == "rel=\"next\"" || p == "rel=next"
            })
        })
        .and_then(|part| {
            let url = part.split(';').next()?.trim();
            Some(url.trim_start_matches('<').trim_end_matches('>').to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::parse_flow;
    use crate::steps::Registry;

    fn problems(paginate: &str) -> Vec<String> {
        let yaml = format!(
            "id: l\ntrigger: {{ webhook: }}\nsteps:\n  - id: get\n    http:\n      url: https://api.example.com/items\n      paginate: {paginate}\n"
        );
        match parse_flow("l.yaml", &yaml, &Registry::builtin(), &|_| None) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        }
    }

    #[test]
    fn paging_is_checked_when_the_flow_loads() {
        assert!(problems("{ items: $.body.data, next: { link: true } }").is_empty());
        assert_eq!(
            problems("{ items: body.data, next: { offset: offset, link: true }, max_pages: 0 }"),
            [
                "steps[0].http.paginate.items: `body.data` is not a JSONPath: write one such as `$.body.data`",
                "steps[0].http.paginate.next: give exactly one of `cursor: {from, param}`, `offset: PARAM` and `link: true`",
                "steps[0].http.paginate.max_pages: between 1 and 1000, not 0",
            ]
        );
        assert_eq!(
            problems("{ items: $.body, next: { cursor: { from: \"{{x}}\", param: c } }, page_attempts: 11 }"),
            [
                "steps[0].http.paginate.next.cursor.from: `{{x}}` is not a JSONPath: write one such as `$.body.data`",
                "steps[0].http.paginate.page_attempts: between 1 and 10, not 11",
            ]
        );
    }

    #[test]
    fn next_link_finds_rel_next_among_others() {
        let header =
            r#"<https://api.x/items?page=1>; rel="prev", <https://api.x/items?page=3>; rel="next""#;
        assert_eq!(
            next_link([header]).as_deref(),
            Some("https://api.x/items?page=3")
        );
        assert_eq!(next_link(["</a?p=2>; rel=next"]).as_deref(), Some("/a?p=2"));
        assert_eq!(
            next_link([r#"<https://api.x/items?page=9>; rel="last""#]),
            None
        );
    }
}
