//! `slack`: messages through Slack's Web API with a bot token, or through an incoming webhook.
//!
//! A step names one action: `post_message` (text and/or Block Kit `blocks`, to a `channel` or to a
//! `user` — a direct message, opened with `conversations.open`), `update_message`, `find_user` (by
//! email), or `webhook` (an incoming-webhook URL, no token). The token is `SLACK_BOT_TOKEN` (or
//! `SLACK_<ACCOUNT>_BOT_TOKEN`), the API `SLACK_BASE_URL` (default `https://slack.com/api`).
//!
//! Slack answers most failures with `200 {"ok": false, "error": "channel_not_found"}`: the kit's
//! [`Service::failure`] turns them into step errors (`not_in_channel` says to invite the app;
//! `missing_scope` names the scope needed). Posts are paced at one per second per channel (Slack's
//! documented limit for `chat.postMessage`) besides the account's 429s. Slack has no idempotency
//! keys: a post retried after a lost answer may show twice, which is kept as the lesser harm for a
//! notification (a `fatal_error`, which Slack says may have half-happened, is not retried).

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
use serde_json::{json, Map, Value};

use crate::api::{
    self, call, dry_run, http_error, outcome, params_without, render_action, required, Account,
    Auth, CallError, Request, Rule, Service,
};
use crate::{config, Connector};

/// The Slack connector.
pub struct SlackConnector;

impl Connector for SlackConnector {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn register(&self, registry: &mut Registry) {
        registry.register::<SlackSpec>();
    }
}

/// Slack's Web API as a [`Service`].
pub struct Slack;

/// Slack's errors that another attempt may fix.
const TRANSIENT: [&str; 4] = [
    "ratelimited",
    "internal_error",
    "service_unavailable",
    "request_timeout",
];

impl Service for Slack {
    const NAME: &'static str = "Slack";
    const ENV: &'static str = "SLACK";
    const CREDENTIAL: &'static str = "BOT_TOKEN";
    const BASE_URL: &'static str = "https://slack.com/api";

    fn observe(status: u16, headers: &HeaderMap) -> Vec<Observation> {
        rate_limited(status, headers)
    }

    fn failure(status: u16, headers: &HeaderMap, body: &Value) -> Option<StepError> {
        (body["ok"] == json!(false)).then(|| web_api_error(status, headers, body))
    }

    fn error(status: u16, headers: &HeaderMap, body: &Value) -> StepError {
        web_api_error(status, headers, body)
    }
}

/// A Slack incoming webhook as a [`Service`]: no credential (the URL is the secret), answers in
/// plain text (`ok`, or an error code with a 4xx/5xx status).
pub struct SlackWebhook;

impl Service for SlackWebhook {
    const NAME: &'static str = "Slack";
    const ENV: &'static str = "SLACK_WEBHOOK";
    const CREDENTIAL: &'static str = "";
    const BASE_URL: &'static str = "";
    const AUTH: Auth = Auth::None;

    fn observe(status: u16, headers: &HeaderMap) -> Vec<Observation> {
        rate_limited(status, headers)
    }

    fn error(status: u16, headers: &HeaderMap, body: &Value) -> StepError {
        let code = api::scalar(body);
        let message = format!("Slack's incoming webhook answered {status} {code}");
        let detail = json!({ "status": status, "error": code });
        let retryable = status >= 500 || status == 429;
        http_error(status, headers, message, detail, retryable)
    }
}

fn rate_limited(status: u16, headers: &HeaderMap) -> Vec<Observation> {
    (status == 429)
        .then(|| Observation::Limited {
            wait: api::retry_after(headers).unwrap_or(Duration::from_secs(1)),
        })
        .into_iter()
        .collect()
}

/// The step error for Slack's `{"ok": false, "error": …}` (any status).
fn web_api_error(status: u16, headers: &HeaderMap, body: &Value) -> StepError {
    let code = body["error"]
        .as_str()
        .map_or_else(|| api::scalar(body), str::to_owned);
    let hint = match code.as_str() {
        "not_in_channel" => " (invite the Slack app to the channel)".to_owned(),
        "channel_not_found" => {
            " (a channel id such as C0123, or a name the app can see)".to_owned()
        }
        "missing_scope" => format!(
            " (the token needs the `{}` scope)",
            body["needed"].as_str().unwrap_or("?")
        ),
        "invalid_auth" | "not_authed" | "token_revoked" => {
            " (check the bot token, `SLACK_BOT_TOKEN`)".to_owned()
        }
        _ => String::new(),
    };
    let message = format!("Slack answered {code}{hint}");
    let detail = json!({
        "status": status,
        "error": code,
        "needed": body["needed"],
        "provided": body["provided"],
        "errors": body["response_metadata"]["messages"],
    });
    let retryable = TRANSIENT.contains(&code.as_str()) || status >= 500 || status == 429;
    http_error(status, headers, message, detail, retryable)
}

/// Post to Slack: give `account` (optional) and exactly one action.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackSpec {
    /// Which Slack app: its bot token is read from `SLACK_<ACCOUNT>_BOT_TOKEN` (default:
    /// `SLACK_BOT_TOKEN`).
    #[serde(default)]
    pub account: Option<String>,
    /// Post a message to a channel or, as a direct message, to a user:
    /// `{ts, channel, message}`.
    #[serde(default)]
    pub post_message: Option<PostMessage>,
    /// Change a message the app posted.
    #[serde(default)]
    pub update_message: Option<UpdateMessage>,
    /// Find a workspace member by email: `{found, user}`.
    #[serde(default)]
    pub find_user: Option<FindUser>,
    /// Post through an incoming webhook (no bot token: the URL, usually `${env:…}`, is the secret).
    #[serde(default)]
    pub webhook: Option<WebhookMessage>,
}

/// A message to post.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct PostMessage {
    /// The channel: an id (`C0123…`) or a name (`#sales`).
    #[serde(default)]
    pub channel: Option<String>,
    /// Or a user id (`U0123…`, e.g. from `find_user`): a direct message from the app.
    #[serde(default)]
    pub user: Option<String>,
    /// The text (Slack's `mrkdwn`); with `blocks`, the fallback shown in notifications.
    #[serde(default)]
    pub text: Option<String>,
    /// Block Kit blocks (a list, or a lone `{{path}}` to one).
    #[serde(default)]
    pub blocks: Option<Value>,
    /// Reply in the thread of this message.
    #[serde(default)]
    pub thread_ts: Option<String>,
    /// Other `chat.postMessage` arguments as Slack names them (`unfurl_links`, `icon_emoji`, …).
    #[serde(flatten)]
    pub more: Map<String, Value>,
}

/// A message to change.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMessage {
    /// The message's channel id.
    pub channel: String,
    /// The message's `ts` (from `post_message`'s output).
    pub ts: String,
    /// The new text.
    #[serde(default)]
    pub text: Option<String>,
    /// The new blocks.
    #[serde(default)]
    pub blocks: Option<Value>,
}

/// A member to look up.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindUser {
    /// The email (a template).
    pub email: String,
}

/// A message for an incoming webhook.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct WebhookMessage {
    /// The webhook's URL (`https://hooks.slack.com/services/…`; use `${env:NAME}`).
    pub url: String,
    /// The text.
    #[serde(default)]
    pub text: Option<String>,
    /// Block Kit blocks.
    #[serde(default)]
    pub blocks: Option<Value>,
    /// Other payload fields (`thread_ts`, `unfurl_links`, …).
    #[serde(flatten)]
    pub more: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Post,
    Update,
    FindUser,
    Webhook,
}

/// How long one channel waits between posts (Slack allows about one message a second per channel).
const POST_GAP: Duration = Duration::from_secs(1);

impl StepKind for SlackSpec {
    const KIND: &'static str = "slack";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        let actions = [
            (Op::Post, "post_message", config(&self.post_message)),
            (Op::Update, "update_message", config(&self.update_message)),
            (Op::FindUser, "find_user", config(&self.find_user)),
            (Op::Webhook, "webhook", config(&self.webhook)),
        ];
        let (op, name, params) = crate::one_action(cx, actions)?;
        if let Some(post) = &self.post_message {
            if post.channel.is_some() == post.user.is_some() {
                cx.error("post_message", "give `channel` or `user`");
            }
        }
        let messages = [
            (
                "post_message",
                self.post_message.as_ref().map(|p| (&p.text, &p.blocks)),
            ),
            (
                "update_message",
                self.update_message.as_ref().map(|u| (&u.text, &u.blocks)),
            ),
            (
                "webhook",
                self.webhook.as_ref().map(|w| (&w.text, &w.blocks)),
            ),
        ];
        for (field, message) in messages {
            if let Some((None, None)) = message {
                cx.error(field, "give `text`, `blocks` or both");
            }
        }
        // A webhook step needs no token; the others call as an account.
        let account = match op {
            Op::Webhook => Some(None),
            _ => Account::resolve::<Slack>(cx, self.account.as_deref()).map(Some),
        };
        let params = cx.value(name, &params);
        Some(Arc::new(SlackStep {
            op,
            name,
            account: account?,
            params: params?,
        }))
    }
}

#[derive(Debug)]
struct SlackStep {
    op: Op,
    name: &'static str,
    account: Option<Account>,
    params: ValueExpr,
}

#[async_trait]
impl Action for SlackStep {
    /// `{action, …the action's rendered fields}`.
    fn render(&self, t: &Templates, ctx: &Value) -> Result<Value, StepError> {
        render_action(self.name, &self.params, t, ctx)
    }

    async fn execute(&self, input: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        if cx.dry_run {
            return Ok(dry_run(input));
        }
        match self.op {
            Op::Webhook => outcome::<SlackWebhook>(webhook(&input, cx).await),
            _ => outcome::<Slack>(self.run(&input, cx).await),
        }
    }
}

impl SlackStep {
    async fn run(&self, input: &Value, cx: &ExecContext) -> Result<Value, CallError> {
        let account = self
            .account
            .as_ref()
            .expect("every action but `webhook` has an account");
        let call = |request| call::<Slack>(cx, account, request);
        match self.op {
            Op::Post => {
                let channel = match input["user"].as_str() {
                    Some(_) => {
                        let user = required(input, "user", "the user to message")?;
                        let opened = call(
                            Request::new(Method::POST, "/conversations.open")
                                .json(json!({ "users": user })),
                        )
                        .await?;
                        api::scalar(&opened["channel"]["id"])
                    }
                    None => required(input, "channel", "the channel to post to")?,
                };
                let mut body = Value::Object(params_without(input, &["user"]));
                body["channel"] = json!(channel);
                let rule = Rule {
                    name: format!("post:{channel}"),
                    max: 1,
                    window: POST_GAP,
                };
                call(
                    Request::new(Method::POST, "/chat.postMessage")
                        .json(body)
                        .paced(rule),
                )
                .await
            }
            Op::Update => {
                required(input, "ts", "the message's `ts`")?;
                let body = Value::Object(params_without(input, &[]));
                call(Request::new(Method::POST, "/chat.update").json(body)).await
            }
            Op::FindUser => {
                let email = required(input, "email", "the email to look for")?;
                let request = Request::new(Method::GET, "/users.lookupByEmail")
                    .query(vec![("email".into(), email)]);
                match call(request).await {
                    Ok(found) => Ok(json!({ "found": true, "user": found["user"] })),
                    // Nobody with that email: an answer, not a failure.
                    Err(CallError::Failed(e)) if e.detail["error"] == "users_not_found" => {
                        Ok(json!({ "found": false, "user": null }))
                    }
                    Err(e) => Err(e),
                }
            }
            Op::Webhook => unreachable!("webhooks are sent by `webhook`"),
        }
    }
}

/// Posts an incoming-webhook message: `{ok: true}`.
async fn webhook(input: &Value, cx: &ExecContext) -> Result<Value, CallError> {
    let url = required(input, "url", "the webhook's URL")?;
    let account = Account::at_url::<SlackWebhook>(&url)?;
    let body = Value::Object(params_without(input, &["url"]));
    let rule = Rule {
        name: "post".into(),
        max: 1,
        window: POST_GAP,
    };
    let request = Request::new(Method::POST, "").json(body).paced(rule);
    call::<SlackWebhook>(cx, &account, request).await?;
    Ok(json!({ "ok": true }))
}
