//! `stripe`: actions on Stripe's form-encoded API with a secret key.
//!
//! A step names one action: customers (`get_customer`, `find_customer` by email, `create_customer`,
//! `update_customer`), subscriptions (`get_subscription`, `change_subscription_price`,
//! `cancel_subscription`), invoices (`get_invoice`, `list_invoices`), `create_refund`, or a generic
//! `request`. Parameters use Stripe's own names and nest as Stripe expects (`metadata[plan]`);
//! `expand` lists objects to expand. Every mutating call sends an `Idempotency-Key` derived from the
//! run and step, so a retried step never charges or refunds twice. The key is `STRIPE_SECRET_KEY`
//! (or `STRIPE_<ACCOUNT>_SECRET_KEY`), the API `STRIPE_BASE_URL` (default `https://api.stripe.com`);
//! every call pins `Stripe-Version` ([`API_VERSION`], or `STRIPE_API_VERSION`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hookflow_engine::expr::{Templates, ValueExpr};
use hookflow_engine::pacing::Observation;
use hookflow_engine::steps::{
    Action, BuildContext, ExecContext, Outcome, Registry, StepError, StepKind,
};
use reqwest::header::HeaderMap;
use reqwest::Method;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{
    self, call, collect, dry_run, http_error, outcome, params_without, render_action, required,
    segment, Account, CallError, Next, Paging, Place, Request, Service,
};
use crate::{config, Connector};

/// The Stripe connector.
pub struct StripeConnector;

impl Connector for StripeConnector {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn register(&self, registry: &mut Registry) {
        registry.register::<StripeSpec>();
    }
}

/// Stripe as an API [`Service`].
pub struct Stripe;

/// The Stripe API version calls pin by default: the shapes the shipped flows and this connector
/// read (`invoice.subscription`, `subscription.current_period_end` at the top level).
pub const API_VERSION: &str = "2024-06-20";

/// How long the account's calls wait after a 429 without `Retry-After`.
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// The most objects one list page holds.
const PAGE: u64 = 100;

impl Service for Stripe {
    const NAME: &'static str = "Stripe";
    const ENV: &'static str = "STRIPE";
    const CREDENTIAL: &'static str = "SECRET_KEY";
    const BASE_URL: &'static str = "https://api.stripe.com";

    /// `Stripe-Version`: the account's `STRIPE_API_VERSION` (or `STRIPE_<ACCOUNT>_API_VERSION`),
    /// else [`API_VERSION`], so answers keep the shapes flows were written against whatever the
    /// account's default version is.
    fn default_headers(setting: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let version = setting("API_VERSION").unwrap_or_else(|| API_VERSION.to_owned());
        vec![("Stripe-Version".to_owned(), version)]
    }

    fn observe(status: u16, headers: &HeaderMap) -> Vec<Observation> {
        (status == 429)
            .then(|| Observation::Limited {
                wait: api::retry_after(headers).unwrap_or(RATE_LIMIT_WAIT),
            })
            .into_iter()
            .collect()
    }

    fn error(status: u16, headers: &HeaderMap, body: &Value) -> StepError {
        let e = &body["error"];
        let kind = e["type"].as_str().unwrap_or("api_error");
        let message = e["message"]
            .as_str()
            .map_or_else(|| api::scalar(body), str::to_owned);
        let mut text = format!("Stripe answered {status} {kind}");
        if let Some(code) = e["code"].as_str() {
            text = format!("{text} ({code})");
        }
        text = format!("{text}: {message}");
        if let Some(param) = e["param"].as_str() {
            text = format!("{text} (parameter `{param}`)");
        }
        let detail = json!({
            "status": status,
            "type": kind,
            "code": e["code"],
            "decline_code": e["decline_code"],
            "message": message,
            "param": e["param"],
            "request_id": headers.get("request-id").and_then(|v| v.to_str().ok()),
        });
        // Stripe says whether a retry may succeed; without that, 409s (a conflict with a request
        // in flight, e.g. a lock timeout), 429s and 5xx are retried, as Stripe's libraries do.
        let retryable = match headers
            .get("stripe-should-retry")
            .and_then(|v| v.to_str().ok())
        {
            Some(v) => v == "true",
            None => status >= 500 || matches!(status, 409 | 429),
        };
        http_error(status, headers, text, detail, retryable)
    }
}

/// Call Stripe's API: give `account` (optional) and exactly one action.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StripeSpec {
    /// Which Stripe account: its key is read from `STRIPE_<ACCOUNT>_SECRET_KEY` (default:
    /// `STRIPE_SECRET_KEY`).
    #[serde(default)]
    pub account: Option<String>,
    /// Read a customer.
    #[serde(default)]
    pub get_customer: Option<ById>,
    /// Find customers by email (the customer list's exact, case-sensitive `email` filter):
    /// `{found, customer, customers}`.
    #[serde(default)]
    pub find_customer: Option<FindCustomer>,
    /// Create a customer (`email`, `name`, `metadata`, … as Stripe names them).
    #[serde(default)]
    pub create_customer: Option<Params>,
    /// Update a customer.
    #[serde(default)]
    pub update_customer: Option<UpdateParams>,
    /// Read a subscription.
    #[serde(default)]
    pub get_subscription: Option<ById>,
    /// Move a single-item subscription to another price (plan).
    #[serde(default)]
    pub change_subscription_price: Option<ChangePrice>,
    /// Cancel a subscription, now or at the end of its period.
    #[serde(default)]
    pub cancel_subscription: Option<Cancel>,
    /// Read an invoice.
    #[serde(default)]
    pub get_invoice: Option<ById>,
    /// List a customer's invoices, newest first, paging up to `limit`.
    #[serde(default)]
    pub list_invoices: Option<ListInvoices>,
    /// Refund a payment (`payment_intent` or `charge`, optional `amount`, `reason`).
    #[serde(default)]
    pub create_refund: Option<Params>,
    /// Any other endpoint.
    #[serde(default)]
    pub request: Option<RawRequest>,
}

/// An object by id.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ById {
    /// The object's id (a template).
    pub id: String,
    /// Objects to expand (`customer`, `latest_invoice.payment_intent`).
    #[serde(default)]
    pub expand: Vec<String>,
}

/// Customers with an email.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindCustomer {
    /// The email (a template).
    pub email: String,
    /// Objects to expand.
    #[serde(default)]
    pub expand: Vec<String>,
}

/// Parameters as Stripe names them, plus `expand`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Params {
    /// Objects to expand.
    #[serde(default)]
    pub expand: Vec<String>,
    /// The parameters (templates; objects nest as `metadata[plan]`).
    #[serde(flatten)]
    pub params: BTreeMap<String, Value>,
}

/// An object's id and the parameters to change.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct UpdateParams {
    /// The object's id.
    pub id: String,
    /// Objects to expand.
    #[serde(default)]
    pub expand: Vec<String>,
    /// The parameters to set.
    #[serde(flatten)]
    pub params: BTreeMap<String, Value>,
}

/// A new price for a subscription.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePrice {
    /// The subscription's id.
    pub id: String,
    /// The new price's id (`price_…`).
    pub price: String,
    /// The new quantity (default: unchanged).
    #[serde(default)]
    pub quantity: Option<Value>,
    /// `create_prorations` (Stripe's default), `none` or `always_invoice`.
    #[serde(default)]
    pub proration_behavior: Option<String>,
}

/// A subscription to cancel.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// The subscription's id.
    pub id: String,
    /// Cancel when the paid period ends instead of now.
    #[serde(default)]
    pub at_period_end: bool,
}

/// A customer's invoices.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInvoices {
    /// The customer's id.
    pub customer: String,
    /// `draft`, `open`, `paid`, `uncollectible` or `void`.
    #[serde(default)]
    pub status: Option<String>,
    /// The most invoices to collect (default 10, at most 1000).
    #[serde(default)]
    pub limit: Option<u64>,
    /// Objects to expand (`data.payment_intent`).
    #[serde(default)]
    pub expand: Vec<String>,
}

/// A request to any endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    /// `GET`, `POST` or `DELETE`.
    pub method: String,
    /// The path, e.g. `/v1/prices`.
    pub path: String,
    /// Parameters: the query of a `GET`, the form body otherwise.
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    GetCustomer,
    FindCustomer,
    CreateCustomer,
    UpdateCustomer,
    GetSubscription,
    ChangePrice,
    Cancel,
    GetInvoice,
    ListInvoices,
    CreateRefund,
    Request,
}

/// The most customers `find_customer` answers (Stripe's email filter is exact but not unique).
const FIND_LIMIT: u32 = 10;

/// The most invoices `list_invoices` collects.
const MAX_INVOICES: u64 = 1000;

impl StepKind for StripeSpec {
    const KIND: &'static str = "stripe";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        let actions = [
            (Op::GetCustomer, "get_customer", config(&self.get_customer)),
            (
                Op::FindCustomer,
                "find_customer",
                config(&self.find_customer),
            ),
            (
                Op::CreateCustomer,
                "create_customer",
                config(&self.create_customer),
            ),
            (
                Op::UpdateCustomer,
                "update_customer",
                config(&self.update_customer),
            ),
            (
                Op::GetSubscription,
                "get_subscription",
                config(&self.get_subscription),
            ),
            (
                Op::ChangePrice,
                "change_subscription_price",
                config(&self.change_subscription_price),
            ),
            (
                Op::Cancel,
                "cancel_subscription",
                config(&self.cancel_subscription),
            ),
            (Op::GetInvoice, "get_invoice", config(&self.get_invoice)),
            (
                Op::ListInvoices,
                "list_invoices",
                config(&self.list_invoices),
            ),
            (
                Op::CreateRefund,
                "create_refund",
                config(&self.create_refund),
            ),
            (Op::Request, "request", config(&self.request)),
        ];
        let (op, name, params) = crate::one_action(cx, actions)?;
        if let Some(r) = &self.request {
            if !matches!(
                r.method.to_ascii_uppercase().as_str(),
                "GET" | "POST" | "DELETE"
            ) {
                cx.error(
                    "request.method",
                    "Stripe's API takes `GET`, `POST` or `DELETE`",
                );
            }
            if !r.path.starts_with('/') {
                cx.error(
                    "request.path",
                    "the path starts with `/`, e.g. `/v1/prices`",
                );
            }
        }
        if let Some(limit) = self.list_invoices.as_ref().and_then(|l| l.limit) {
            if limit == 0 || limit > MAX_INVOICES {
                cx.error(
                    "list_invoices.limit",
                    format!("must be 1 to {MAX_INVOICES}"),
                );
            }
        }
        let account = Account::resolve::<Stripe>(cx, self.account.as_deref());
        let params = cx.value(name, &params);
        Some(Arc::new(StripeStep {
            op,
            name,
            account: account?,
            params: params?,
        }))
    }
}

#[derive(Debug)]
struct StripeStep {
    op: Op,
    name: &'static str,
    account: Account,
    params: ValueExpr,
}

#[async_trait]
impl Action for StripeStep {
    /// `{action, …the action's rendered fields}`.
    fn render(&self, t: &Templates, ctx: &Value) -> Result<Value, StepError> {
        render_action(self.name, &self.params, t, ctx)
    }

    async fn execute(&self, input: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        if cx.dry_run {
            return Ok(dry_run(input));
        }
        outcome::<Stripe>(self.run(&input, cx).await)
    }
}

impl StripeStep {
    async fn run(&self, input: &Value, cx: &ExecContext) -> Result<Value, CallError> {
        let key = cx.idempotency_key.as_str();
        let id = || required(input, "id", "the object's id").map(|id| segment(&id));
        let expand = expand_params(&input["expand"]);
        let call = |request| call::<Stripe>(cx, &self.account, request);
        match self.op {
            Op::GetCustomer => call(get(format!("/v1/customers/{}", id()?), expand)).await,
            Op::GetSubscription => call(get(format!("/v1/subscriptions/{}", id()?), expand)).await,
            Op::GetInvoice => call(get(format!("/v1/invoices/{}", id()?), expand)).await,
            Op::FindCustomer => {
                // The customer list's `email` filter, not search: Stripe's search is eventually
                // consistent (a customer made a minute ago may be missing) and not in every region.
                let email = required(input, "email", "the email to look for")?;
                let mut params = vec![
                    ("email".to_owned(), email),
                    ("limit".to_owned(), FIND_LIMIT.to_string()),
                ];
                params.extend(expand);
                let found = call(get("/v1/customers".into(), params)).await?;
                let customers = found["data"].as_array().cloned().unwrap_or_default();
                Ok(json!({
                    "found": !customers.is_empty(),
                    "customer": customers.first(),
                    "customers": customers,
                }))
            }
            Op::CreateCustomer => {
                let body = form(&params_without(input, &["expand"]), expand);
                call(
                    Request::new(Method::POST, "/v1/customers")
                        .form(body)
                        .idempotent(key),
                )
                .await
            }
            Op::UpdateCustomer => {
                let body = form(&params_without(input, &["expand", "id"]), expand);
                let path = format!("/v1/customers/{}", id()?);
                call(Request::new(Method::POST, path).form(body).idempotent(key)).await
            }
            Op::CreateRefund => {
                let body = form(&params_without(input, &["expand"]), expand);
                call(
                    Request::new(Method::POST, "/v1/refunds")
                        .form(body)
                        .idempotent(key),
                )
                .await
            }
            Op::ChangePrice => {
                let path = format!("/v1/subscriptions/{}", id()?);
                let subscription = call(Request::new(Method::GET, path.clone())).await?;
                let items = subscription["items"]["data"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let [item] = items.as_slice() else {
                    return Err(StepError::permanent(format!(
                        "subscription {} has {} items: `change_subscription_price` changes \
                         single-item subscriptions (use `request` for others)",
                        api::text(input, "id"),
                        items.len()
                    ))
                    .into());
                };
                let mut changes = serde_json::Map::new();
                changes.insert(
                    "items".into(),
                    json!([{ "id": item["id"], "price": input["price"] }]),
                );
                if !input["quantity"].is_null() {
                    changes["items"][0]["quantity"] = input["quantity"].clone();
                }
                if let Some(p) = input["proration_behavior"].as_str() {
                    changes.insert("proration_behavior".into(), json!(p));
                }
                let body = form(&changes, Vec::new());
                call(Request::new(Method::POST, path).form(body).idempotent(key)).await
            }
            Op::Cancel => {
                let path = format!("/v1/subscriptions/{}", id()?);
                let request = if input["at_period_end"] == json!(true) {
                    let body = vec![("cancel_at_period_end".to_owned(), "true".to_owned())];
                    Request::new(Method::POST, path).form(body)
                } else {
                    Request::new(Method::DELETE, path)
                };
                call(request.idempotent(key)).await
            }
            Op::ListInvoices => self.list_invoices(input, expand, cx).await,
            Op::Request => {
                let method = api::text(input, "method").to_ascii_uppercase();
                let method = Method::from_bytes(method.as_bytes())
                    .map_err(|_| StepError::permanent("invalid method"))?;
                let params = form(
                    input["params"].as_object().unwrap_or(&Default::default()),
                    Vec::new(),
                );
                let path = api::text(input, "path");
                let request = if method == Method::GET {
                    Request::new(method, path).query(params)
                } else {
                    Request::new(method, path).form(params).idempotent(key)
                };
                call(request).await
            }
        }
    }

    /// A customer's invoices, newest first, paging with `starting_after` up to the limit.
    async fn list_invoices(
        &self,
        input: &Value,
        expand: Vec<(String, String)>,
        cx: &ExecContext,
    ) -> Result<Value, CallError> {
        let customer = required(input, "customer", "the customer's id")?;
        let limit = input["limit"].as_u64().unwrap_or(10);
        let mut query = vec![("customer".to_owned(), customer)];
        if let Some(status) = input["status"].as_str().filter(|s| !s.is_empty()) {
            query.push(("status".into(), status.into()));
        }
        query.extend(expand);
        let paging = Paging {
            items: "/data",
            size: Some((Place::Query("limit"), PAGE)),
            next: Next::AfterLast {
                more: "/has_more",
                to: Place::Query("starting_after"),
            },
        };
        let first = get("/v1/invoices".into(), query);
        let (data, _) = collect::<Stripe>(cx, &self.account, first, paging, limit).await?;
        Ok(json!({ "data": data }))
    }
}

fn get(path: String, query: Vec<(String, String)>) -> Request {
    Request::new(Method::GET, path).query(query)
}

/// `expand: [a, b]` as Stripe's `expand[0]=a&expand[1]=b`.
fn expand_params(expand: &Value) -> Vec<(String, String)> {
    expand
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, v)| (format!("expand[{i}]"), api::scalar(v)))
        .collect()
}

/// Parameters as Stripe's form encoding: objects nest as `a[b]`, lists as `a[0]`, `null` (what the
/// flow's `$clear` renders) as `""`, which unsets a field. Fields that resolved to nothing never get
/// here: they were left out when the input was rendered.
pub fn form(
    params: &serde_json::Map<String, Value>,
    extra: Vec<(String, String)>,
) -> Vec<(String, String)> {
    fn flatten(key: String, value: &Value, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    flatten(format!("{key}[{k}]"), v, out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    flatten(format!("{key}[{i}]"), v, out);
                }
            }
            other => out.push((key, api::scalar(other))),
        }
    }
    let mut out = Vec::new();
    for (k, v) in params {
        flatten(k.clone(), v, &mut out);
    }
    out.extend(extra);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_nest_the_way_stripe_reads_them() {
        let params = json!({
            "email": "a@example.com",
            "metadata": { "plan": "pro", "seats": 3 },
            "items": [{ "id": "si_1", "price": "price_2" }],
            "description": null,
        });
        let pairs = form(
            params.as_object().unwrap(),
            expand_params(&json!(["customer"])),
        );
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("email", "a@example.com"),
                ("metadata[plan]", "pro"),
                ("metadata[seats]", "3"),
                ("items[0][id]", "si_1"),
                ("items[0][price]", "price_2"),
                ("description", ""),
                ("expand[0]", "customer"),
            ]
        );
    }
}
