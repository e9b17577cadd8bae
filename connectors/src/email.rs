//! `email`: sends a message over SMTP (with `lettre`): to, cc, bcc, reply-to, subject, text and/or
//! HTML.
//!
//! The server is the operator's, set in the environment or the secrets file, never in the flow:
//! `SMTP_HOST`, `SMTP_PORT` (default 587, 465 with `SMTP_TLS=tls`, 25 with `none`), `SMTP_TLS`
//! (`starttls`, the default and required; `tls`, implicit TLS; `none`, plain — a local relay
//! only), `SMTP_USERNAME` and `SMTP_PASSWORD` (redacted everywhere), `SMTP_FROM` (the default
//! sender); `account: x` reads `SMTP_X_…` instead. Because the host comes from the operator and not
//! from flows or events, the outbound address guard (which stops flows from reaching private
//! addresses) does not apply to it.
//!
//! The message's `Message-ID` is made from the step's idempotency key and its `Date` is fixed when
//! the input is rendered, so a retry sends the same message (SMTP has no idempotency keys: a retry
//! after a lost answer may deliver twice, and mail clients can tell the copies are one message).
//! A 4xx answer is retried, a 5xx is not.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hookflow_engine::expr::{Templates, ValueExpr};
use hookflow_engine::model::Timestamp;
use hookflow_engine::steps::{
    Action, BuildContext, ExecContext, Outcome, Registry, StepError, StepKind,
};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{dry_run, render_action};
use crate::Connector;

/// The email connector.
pub struct EmailConnector;

impl Connector for EmailConnector {
    fn name(&self) -> &'static str {
        "email"
    }

    fn register(&self, registry: &mut Registry) {
        registry.register::<EmailSpec>();
    }
}

/// Send an email over SMTP (the server is set in the environment: `SMTP_HOST`, …).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// Which SMTP server: read from `SMTP_<ACCOUNT>_HOST`, … (default: `SMTP_HOST`, …).
    #[serde(default, skip_serializing)]
    pub account: Option<String>,
    /// Recipients: a list, or text with addresses separated by commas (`Jane <jane@acme.com>`).
    pub to: Value,
    /// Copy recipients.
    #[serde(default)]
    pub cc: Option<Value>,
    /// Blind-copy recipients (not shown to the others).
    #[serde(default)]
    pub bcc: Option<Value>,
    /// Where replies go.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The sender (default: `SMTP_FROM`).
    #[serde(default)]
    pub from: Option<String>,
    /// The subject.
    pub subject: String,
    /// The plain-text body.
    #[serde(default)]
    pub text: Option<String>,
    /// The HTML body (with `text`, the message carries both and mail clients pick).
    #[serde(default)]
    pub html: Option<String>,
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// Plain connection upgraded with `STARTTLS`, required (port 587).
    Upgrade,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS: a local relay.
    None,
}

/// The SMTP server a step sends through.
#[derive(Clone)]
struct Server {
    host: Option<String>,
    port: Option<u16>,
    tls: Tls,
    credentials: Option<Credentials>,
    from: Option<String>,
    /// The variable prefix, for messages (`SMTP`, `SMTP_SALES`).
    scope: String,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Server")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl StepKind for EmailSpec {
    const KIND: &'static str = "email";

    fn build(self, cx: &mut BuildContext<'_>) -> Option<Arc<dyn Action>> {
        if self.text.is_none() && self.html.is_none() {
            cx.error("", "give `text`, `html` or both");
        }
        let server = server(cx, self.account.as_deref());
        let mut fields = serde_json::to_value(&self).expect("email configs serialize");
        if let Value::Object(map) = &mut fields {
            map.retain(|_, v| !v.is_null());
        }
        let params = cx.value("", &fields);
        Some(Arc::new(EmailStep {
            server: server?,
            params: params?,
        }))
    }
}

/// The SMTP server of `account` (or the default one), from the environment.
fn server(cx: &mut BuildContext<'_>, account: Option<&str>) -> Option<Server> {
    let read = |cx: &mut BuildContext<'_>, name: &str, secret: bool| match secret {
        true => cx.credential(name),
        false => cx.setting(name),
    };
    let mut setting = |name: &str, secret: bool| read(cx, name, secret);
    match server_from(account, &mut setting) {
        Ok(server) => Some(server),
        Err(message) => {
            cx.error("account", message);
            None
        }
    }
}

/// The SMTP server of `account` (or the default one), read through `setting` (a variable's name,
/// and whether it is a secret); why not, in words.
fn server_from(
    account: Option<&str>,
    setting: &mut dyn FnMut(&str, bool) -> Option<String>,
) -> Result<Server, String> {
    let scope = match account {
        None => "SMTP".to_owned(),
        Some(n) if !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            format!("SMTP_{}", n.to_ascii_uppercase())
        }
        Some(n) => {
            return Err(format!(
                "`{n}` is not an account name: use letters, digits and `_`"
            ))
        }
    };
    let tls = match setting(&format!("{scope}_TLS"), false).as_deref() {
        None | Some("starttls") => Tls::Upgrade,
        Some("tls") => Tls::Implicit,
        Some("none") => Tls::None,
        Some(other) => {
            return Err(format!(
                "{scope}_TLS is `{other}`: use `starttls`, `tls` or `none`"
            ))
        }
    };
    let port = match setting(&format!("{scope}_PORT"), false) {
        None => None,
        Some(p) => Some(
            p.parse()
                .map_err(|_| format!("{scope}_PORT is `{p}`: not a port"))?,
        ),
    };
    let username = setting(&format!("{scope}_USERNAME"), false);
    let password = setting(&format!("{scope}_PASSWORD"), true);
    Ok(Server {
        host: setting(&format!("{scope}_HOST"), false),
        port,
        tls,
        credentials: username.map(|u| Credentials::new(u, password.unwrap_or_default())),
        from: setting(&format!("{scope}_FROM"), false),
        scope,
    })
}

/// Sends plain-text mail through the SMTP server the environment names (`SMTP_HOST`, …), outside
/// any flow: the server's failure alerts.
#[derive(Debug, Clone)]
pub struct Mailer {
    server: Server,
}

impl Mailer {
    /// The default SMTP server, read through `env` (the environment, then the secrets file).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut setting = |name: &str, _secret: bool| env(name).filter(|v| !v.is_empty());
        let server = server_from(None, &mut setting)?;
        if server.host.is_none() {
            return Err(
                "set `SMTP_HOST` (and `SMTP_FROM`, `SMTP_USERNAME`, `SMTP_PASSWORD`)".into(),
            );
        }
        Ok(Self { server })
    }

    /// Sends `text` under `subject` to `to` (addresses separated by commas), within `timeout`;
    /// `key` makes the `Message-ID`. Why not, in words.
    pub async fn send(
        &self,
        to: &str,
        subject: &str,
        text: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let input = json!({
            "from": self.server.from, "to": to, "subject": subject, "text": text,
            "date": Timestamp::now().to_rfc3339(),
        });
        let message = message(&input, key).map_err(|e| e.message)?;
        let transport = self.server.transport(timeout).map_err(|e| e.message)?;
        transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| smtp_error(&e).message)
    }
}

#[derive(Debug)]
struct EmailStep {
    server: Server,
    params: ValueExpr,
}

#[async_trait]
impl Action for EmailStep {
    /// `{action: send, to, cc, bcc, reply_to, from, subject, text, html, date}`: the sender
    /// defaults to the server's, and the date is fixed here, so a retry sends the same message.
    fn render(&self, t: &Templates, ctx: &Value) -> Result<Value, StepError> {
        let mut input = render_action("send", &self.params, t, ctx)?;
        if input["from"].is_null() {
            if let Some(from) = &self.server.from {
                input["from"] = json!(from);
            }
        }
        input["date"] = json!(Timestamp::now().to_rfc3339());
        Ok(input)
    }

    async fn execute(&self, input: Value, cx: &ExecContext) -> Result<Outcome, StepError> {
        let message = message(&input, &cx.idempotency_key)?;
        if cx.dry_run {
            return Ok(dry_run(input));
        }
        let transport = self.server.transport(cx.timeout)?;
        let response = transport.send(message).await.map_err(|e| smtp_error(&e))?;
        tracing::info!(code = %response.code(), "email accepted");
        Ok(Outcome::Output(json!({
            "accepted": true,
            "message_id": message_id(&cx.idempotency_key),
            "response": format!("{} {}", response.code(), response.message().collect::<Vec<_>>().join(" ")),
        })))
    }
}

impl Server {
    /// A connection to the server, as configured.
    fn transport(
        &self,
        timeout: Duration,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, StepError> {
        let host = self.host.as_deref().ok_or_else(|| {
            StepError::permanent(format!(
                "no SMTP server: set `{}_HOST` (and `_USERNAME`, `_PASSWORD`, `_FROM`) in the \
                 environment or the secrets file, restart, then retry the run",
                self.scope
            ))
        })?;
        let tls_error = |e: lettre::transport::smtp::Error| {
            StepError::permanent(format!("SMTP over TLS to {host}: {e}"))
        };
        let mut builder = match self.tls {
            Tls::Upgrade => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(tls_error)?
            }
            Tls::Implicit => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(tls_error)?
            }
            Tls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(25),
        };
        if let Some(port) = self.port {
            builder = builder.port(port);
        }
        if let Some(credentials) = &self.credentials {
            builder = builder.credentials(credentials.clone());
        }
        Ok(builder.timeout(Some(timeout)).build())
    }
}

/// The message's `Message-ID`, from the step's idempotency key: the same on every retry.
fn message_id(key: &str) -> String {
    let local: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '.'
            }
        })
        .collect();
    format!("<{local}@hookflow>")
}

/// The message for a rendered input.
fn message(input: &Value, key: &str) -> Result<Message, StepError> {
    let from = mailbox(&input["from"], "from")?
        .ok_or_else(|| StepError::permanent("no sender: give `from`, or set `SMTP_FROM`"))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(input["subject"].as_str().unwrap_or_default())
        .message_id(Some(message_id(key)));
    if let Some(date) = input["date"].as_str().and_then(Timestamp::parse_rfc3339) {
        let since = Duration::from_millis(u64::try_from(date.millis()).unwrap_or_default());
        builder = builder.date(SystemTime::UNIX_EPOCH + since);
    }
    if let Some(reply_to) = mailbox(&input["reply_to"], "reply_to")? {
        builder = builder.reply_to(reply_to);
    }
    let mut recipients = 0;
    for field in ["to", "cc", "bcc"] {
        for address in addresses(&input[field]) {
            let mailbox: Mailbox = address.parse().map_err(|e| {
                StepError::permanent(format!(
                    "`{field}`: `{address}` is not an email address: {e}"
                ))
            })?;
            recipients += 1;
            builder = match field {
                "to" => builder.to(mailbox),
                "cc" => builder.cc(mailbox),
                _ => builder.bcc(mailbox),
            };
        }
    }
    if recipients == 0 {
        return Err(StepError::permanent(
            "`to` resolved to nothing: a recipient is needed",
        ));
    }
    let text = input["text"].as_str().map(str::to_owned);
    let html = input["html"].as_str().map(str::to_owned);
    let built = match (text, html) {
        (Some(text), Some(html)) => {
            builder.multipart(MultiPart::alternative_plain_html(text, html))
        }
        (None, Some(html)) => builder.singlepart(SinglePart::html(html)),
        (text, None) => builder
            .header(ContentType::TEXT_PLAIN)
            .body(text.unwrap_or_default()),
    };
    built.map_err(|e| StepError::permanent(format!("the message cannot be built: {e}")))
}

/// One address field, if given.
fn mailbox(value: &Value, field: &str) -> Result<Option<Mailbox>, StepError> {
    match value.as_str().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|e| {
            StepError::permanent(format!("`{field}`: `{text}` is not an email address: {e}"))
        }),
    }
}

/// The addresses of a recipients field: a list, or comma-separated text.
fn addresses(value: &Value) -> Vec<String> {
    let texts: Vec<String> = match value {
        Value::Array(items) => items.iter().map(crate::api::scalar).collect(),
        Value::String(s) => s.split(',').map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    texts
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The step error for a failed send: a 4xx answer or a lost connection may pass on retry; a 5xx
/// will not.
fn smtp_error(e: &lettre::transport::smtp::Error) -> StepError {
    let code = e.status().map(|c| c.to_string());
    let message = match &code {
        Some(code) => format!("the SMTP server answered {code}: {e}"),
        None => format!("sending the email failed: {e}"),
    };
    let error = if e.is_permanent() {
        StepError::permanent(message)
    } else {
        StepError::transient(message)
    };
    error.with_detail(json!({ "smtp_code": code }))
}
