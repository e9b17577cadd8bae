//! Server configuration: an embedded default, an optional YAML file (`--config`), and command-line
//! flags on top, in that order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hookflow_engine::flow::spec::HumanDuration;
use hookflow_engine::runtime::RetentionConfig;
use hookflow_engine::steps::code::Maxima;
use hookflow_engine::store::postgres::PgOptions;
use serde::Deserialize;

/// The configuration used when no file is given; also the reference for the file's format.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.yaml");

/// The largest `max_body_bytes` allowed: the store keeps events up to this size fully durable.
pub const MAX_BODY_LIMIT: usize = 1024 * 1024;

/// How a hookflow server runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The address the HTTP server listens on.
    pub listen: SocketAddr,
    /// The base URL senders reach this server at, for the catch URLs printed and shown
    /// (default: `http://` + `listen`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// The directory of flow files.
    pub flows: PathBuf,
    /// The directory of the sled database (when `store` is sled).
    pub data: PathBuf,
    /// The store: `sled` (embedded, in `data`; the default) or a PostgreSQL URL
    /// (`postgres://user@host/db`) shared by several nodes.
    #[serde(default)]
    pub store: Option<String>,
    /// The largest request body a catch hook accepts, in bytes.
    pub max_body_bytes: usize,
    /// How many steps may execute at once (0: store events, execute nothing).
    pub workers: usize,
    /// This node's id, the owner of its leases (default: the host's name and a random suffix,
    /// new at every start).
    #[serde(default)]
    pub node_id: Option<String>,
    /// How long a step's claim lasts unless renewed: a running step renews it every third of
    /// this; the steps of a node that died are taken over once it has passed.
    #[serde(default = "default_lease")]
    pub lease: HumanDuration,
    /// How long run history is kept.
    #[serde(default)]
    pub retention: RetentionSection,
    /// The most memory the store's page cache uses, in MiB.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// Whether a new store is created compressed (an existing one keeps its setting).
    #[serde(default)]
    pub compression: bool,
    /// Outbound HTTP settings.
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// Limits on the connections clients open.
    #[serde(default)]
    pub http: HttpSection,
    /// A YAML file of `NAME: value` secrets (connector tokens, signing secrets), read where the
    /// environment has no such variable: `${env:NAME}` in flows and connector credentials.
    #[serde(default)]
    pub secrets_file: Option<PathBuf>,
    /// `text` or `json` logs.
    pub log_format: LogFormat,
    /// Failure alerts for the whole server (see `alerts.rs`).
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    /// The most a `code` step may ask for.
    #[serde(default)]
    pub code: CodeSection,
}

fn default_lease() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

fn default_cache_mb() -> u64 {
    hookflow_engine::store::sled::DEFAULT_CACHE_BYTES >> 20
}

/// Which store a node uses.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// The embedded sled database in the data directory (one node).
    Sled,
    /// A PostgreSQL database (any number of nodes).
    Postgres(PgOptions),
}

impl StoreChoice {
    /// The store for people: `sled (DIR)` or the URL without its password.
    pub fn describe(&self, data: &Path) -> String {
        match self {
            Self::Sled => format!("sled ({})", data.display()),
            Self::Postgres(options) => match url::Url::parse(&options.url) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    url.to_string()
                }
                Err(_) => "postgres".to_owned(),
            },
        }
    }
}

/// How long run history is kept; a flow's own `retention:` overrides the first two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Finished runs older than this are deleted.
    pub max_age: HumanDuration,
    /// At most this many finished runs are kept per flow (the newest).
    pub max_runs: usize,
    /// How often old runs are looked for.
    pub every: HumanDuration,
    /// Audit record and hook log entries older than this are deleted.
    pub log_max_age: HumanDuration,
    /// At most this many audit record entries are kept (the newest).
    pub audit_max_entries: usize,
    /// At most this many hook log entries are kept per flow (the newest).
    pub hook_log_max_entries: usize,
}

impl Default for RetentionSection {
    fn default() -> Self {
        let d = RetentionConfig::default();
        Self {
            max_age: HumanDuration(d.max_age),
            max_runs: d.max_runs,
            every: HumanDuration(d.every),
            log_max_age: HumanDuration(d.log_max_age),
            audit_max_entries: d.audit_max_entries,
            hook_log_max_entries: d.hook_log_max_entries,
        }
    }
}

impl RetentionSection {
    /// The engine's retention settings.
    pub fn to_engine(&self) -> RetentionConfig {
        RetentionConfig {
            max_age: self.max_age.0,
            max_runs: self.max_runs,
            every: self.every.0,
            log_max_age: self.log_max_age.0,
            audit_max_entries: self.audit_max_entries,
            hook_log_max_entries: self.hook_log_max_entries,
        }
    }
}

/// Limits on the connections clients open (see `server::connections`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// How long a request's head may take from its first byte.
    pub header_timeout: HumanDuration,
    /// How long a request's body may take from its head.
    pub body_timeout: HumanDuration,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: HumanDuration,
    /// The most connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        let secs = |s| HumanDuration(std::time::Duration::from_secs(s));
        Self {
            header_timeout: secs(10),
            body_timeout: secs(30),
            idle_timeout: secs(60),
            max_connections: 1000,
        }
    }
}

impl HttpSection {
    /// The server's connection limits.
    pub fn limits(&self) -> crate::server::Limits {
        crate::server::Limits {
            header_timeout: self.header_timeout.0,
            body_timeout: self.body_timeout.0,
            idle_timeout: self.idle_timeout.0,
            max_connections: self.max_connections,
        }
    }
}

/// The most a `code` step may set its `cpu_time` and `memory_mb` to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodeSection {
    /// The longest CPU time a step's script may be given.
    pub max_cpu_time: HumanDuration,
    /// The most memory a step's script may be given, in MB.
    pub max_memory_mb: u32,
}

impl Default for CodeSection {
    fn default() -> Self {
        Self::from(Maxima::default())
    }
}

impl From<Maxima> for CodeSection {
    fn from(m: Maxima) -> Self {
        Self {
            max_cpu_time: HumanDuration(m.cpu_time),
            max_memory_mb: m.memory_mb,
        }
    }
}

impl CodeSection {
    /// The engine's limits.
    pub fn maxima(&self) -> Maxima {
        Maxima {
            cpu_time: self.max_cpu_time.0,
            memory_mb: self.max_memory_mb,
        }
    }
}

/// Outbound HTTP settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Private, loopback or link-local networks (CIDR) that HTTP actions may reach anyway.
    #[serde(default)]
    pub allow: Vec<String>,
    /// The proxy every HTTP action goes through (`http://host:port`); without it no proxy is used,
    /// whatever `HTTP_PROXY`/`HTTPS_PROXY` say.
    #[serde(default)]
    pub proxy: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The embedded default, with a file's settings on top (a file need only name what it
    /// changes).
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let mut merged: serde_yaml::Value = serde_yaml::from_str(DEFAULT_CONFIG)
            .expect("the embedded default configuration parses");
        let Some(p) = path else {
            return Ok(serde_yaml::from_value(merged).expect("the embedded default is valid"));
        };
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let file: serde_yaml::Value = serde_yaml::from_str(&text)
            .with_context(|| format!("{}: invalid configuration", p.display()))?;
        overlay(&mut merged, file);
        serde_yaml::from_value(merged)
            .with_context(|| format!("{}: invalid configuration", p.display()))
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        // Larger events would leave sled's log for blob files, which sled does not sync.
        anyhow::ensure!(
            self.max_body_bytes <= MAX_BODY_LIMIT,
            "max_body_bytes may be at most {MAX_BODY_LIMIT} (1 MiB), not {}",
            self.max_body_bytes
        );
        anyhow::ensure!(
            !self.retention.every.0.is_zero(),
            "retention.every must be longer than 0s"
        );
        anyhow::ensure!(self.cache_mb >= 1, "cache_mb must be at least 1");
        anyhow::ensure!(
            self.http.max_connections >= 1,
            "http.max_connections must be at least 1"
        );
        for (name, d) in [
            ("header_timeout", &self.http.header_timeout),
            ("body_timeout", &self.http.body_timeout),
            ("idle_timeout", &self.http.idle_timeout),
        ] {
            anyhow::ensure!(!d.0.is_zero(), "http.{name} must be longer than 0s");
        }
        anyhow::ensure!(
            !self.code.max_cpu_time.0.is_zero() && self.code.max_memory_mb >= 1,
            "code.max_cpu_time must be longer than 0s and code.max_memory_mb at least 1"
        );
        Ok(())
    }

    /// The secrets file's values (none without a file). Values must be strings, numbers or
    /// booleans.
    pub fn secrets(&self) -> anyhow::Result<HashMap<String, String>> {
        let Some(path) = &self.secrets_file else {
            return Ok(HashMap::new());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the secrets file {}", path.display()))?;
        let values: HashMap<String, serde_yaml::Value> =
            serde_yaml::from_str(&text).with_context(|| {
                format!(
                    "{}: the secrets file must be a map of NAME: value",
                    path.display()
                )
            })?;
        values
            .into_iter()
            .map(|(name, value)| {
                let text = match value {
                    serde_yaml::Value::String(s) => s,
                    serde_yaml::Value::Number(n) => n.to_string(),
                    serde_yaml::Value::Bool(b) => b.to_string(),
                    _ => anyhow::bail!("{}: `{name}` must be a text value", path.display()),
                };
                Ok((name, text))
            })
            .collect()
    }

    /// The store this configuration names. A PostgreSQL password may be kept out of the URL: it is
    /// read from `HOOKFLOW_STORE_PASSWORD` in `env` (the environment, then the secrets file).
    pub fn store_choice(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<StoreChoice> {
        match self.store.as_deref().map(str::trim) {
            None | Some("") | Some("sled") => Ok(StoreChoice::Sled),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let mut options = PgOptions::new(url);
                options.password = env("HOOKFLOW_STORE_PASSWORD");
                options.config().context("store: invalid PostgreSQL URL")?;
                Ok(StoreChoice::Postgres(options))
            }
            Some(other) => anyhow::bail!(
                "store: `{other}` is neither `sled` nor a PostgreSQL URL (postgres://user@host/database)"
            ),
        }
    }

    /// The base URL of this server.
    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }

    /// The outbound policy, with this server's own address allowed for the request inspector.
    pub fn outbound_policy(
        &self,
        own_address: SocketAddr,
    ) -> anyhow::Result<hookflow_engine::outbound::OutboundPolicy> {
        let allow = self
            .outbound
            .allow
            .iter()
            .map(|n| {
                n.parse()
                    .map_err(|e: String| anyhow::anyhow!("outbound.allow: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(hookflow_engine::outbound::OutboundPolicy {
            allow,
            own_address: Some(own_address),
            proxy: self.outbound.proxy.clone(),
        })
    }
}

/// Puts `top`'s settings over `base`: mappings merge key by key, anything else replaces.
fn overlay(base: &mut serde_yaml::Value, top: serde_yaml::Value) {
    match (base, top) {
        (serde_yaml::Value::Mapping(base), serde_yaml::Value::Mapping(top)) => {
            for (key, value) in top {
                match base.get_mut(&key) {
                    Some(slot) => overlay(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, serde_yaml::Value::Null) if base.is_mapping() => {}
        (base, top) => *base = top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.max_body_bytes, 1024 * 1024);
        assert_eq!(c.base_url(), "http://127.0.0.1:8080");
        c.validate().unwrap();
    }

    #[test]
    fn a_file_is_read_checked_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookflow.yaml");
        let write = |text: &str| std::fs::write(&path, text).unwrap();

        write("listen: 0.0.0.0:9000\npublic_url: https://hooks.example.com/\nflows: f\ndata: d\nmax_body_bytes: 2048\nworkers: 4\noutbound: { allow: [10.0.0.0/8] }\nlog_format: json\n");
        let c = Config::load(Some(&path)).unwrap();
        c.validate().unwrap();
        assert_eq!(c.base_url(), "https://hooks.example.com");
        assert_eq!(c.log_format, LogFormat::Json);
        let policy = c.outbound_policy(c.listen).unwrap();
        assert!(policy.refusal("10.1.1.1".parse().unwrap()).is_none());

        write("listen: 127.0.0.1:1\nflows: f\ndata: d\nmax_body_bytes: 2048\nworkers: 4\nlog_format: text\nworkerz: 3\n");
        let e = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(
            e.contains("hookflow.yaml") && e.contains("unknown field `workerz`"),
            "{e}"
        );

        write("listen: 127.0.0.1:1\nflows: f\ndata: d\nmax_body_bytes: 99999999\nworkers: 4\nlog_format: text\n");
        let e = Config::load(Some(&path))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 1048576"), "{e}");

        write("listen: 127.0.0.1:1\nflows: f\ndata: d\nmax_body_bytes: 1\nworkers: 4\nlog_format: text\noutbound: { allow: [nonsense] }\n");
        let e = Config::load(Some(&path))
            .unwrap()
            .outbound_policy(c.listen)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outbound.allow") && e.contains("nonsense"),
            "{e}"
        );
    }

    #[test]
    fn a_file_names_only_what_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookflow.yaml");
        std::fs::write(
            &path,
            "workers: 0\nretention: { max_runs: 5, every: 200ms }\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        c.validate().unwrap();
        assert_eq!((c.workers, c.retention.max_runs), (0, 5));
        let retention = c.retention.to_engine();
        assert_eq!(retention.every, std::time::Duration::from_millis(200));
        assert_eq!(
            retention.max_age,
            std::time::Duration::from_secs(14 * 24 * 3600)
        );
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080", "the default stays");
    }

    #[test]
    fn code_step_maxima_default_to_the_engines_and_are_checked() {
        assert_eq!(Config::load(None).unwrap().code.maxima(), Maxima::default());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookflow.yaml");
        std::fs::write(&path, "code: { max_cpu_time: 30s, max_memory_mb: 512 }\n").unwrap();
        let c = Config::load(Some(&path)).unwrap();
        c.validate().unwrap();
        let expected = Maxima {
            cpu_time: std::time::Duration::from_secs(30),
            memory_mb: 512,
        };
        assert_eq!(c.code.maxima(), expected);
        std::fs::write(&path, "code: { max_memory_mb: 0 }\n").unwrap();
        let e = Config::load(Some(&path)).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("code.max_memory_mb"), "{e}");
    }
}
