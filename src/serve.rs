//! `hookflow serve`: opens the store, loads and deploys the flows (and watches them for changes),
//! starts the workers and the HTTP server, and shuts down gracefully on Ctrl-C or SIGTERM (stop accepting, let executing steps finish
//! for a while, leave the rest queued for the next start).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hookflow_engine::flow::{self, process_env, EnvLookup, Flow, FlowError};
use hookflow_engine::outbound::HttpClient;
use hookflow_engine::runtime::catalog::Catalog;
use hookflow_engine::runtime::{Engine, EngineConfig};
use hookflow_engine::store::postgres::PgStore;
use hookflow_engine::store::sled::SledStore;
use hookflow_engine::store::{NodeId, Store};
use tokio::sync::watch;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::cli::ServeArgs;
use crate::config::{Config, LogFormat, StoreChoice};
use crate::reload::{Env, Problems};
use crate::server::{
    self, AppState, AuditRecord, Auth, Captures, HookLimits, HookLog, Inspector, LogWriter,
};
use crate::worker_runtime::WorkerRuntime;

/// How long executing steps may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// How long log entries (the audit record, hook logs) still waiting at shutdown may take to reach
/// the store.
const LOG_DRAIN: Duration = Duration::from_secs(2);

/// The flows shipped in `flows/`, used when the flows directory does not exist (e.g. an installed
/// binary started outside the repository).
const EMBEDDED_FLOWS: [(&str, &str); 5] = [
    (
        "flows/plan-change-sync.yaml",
        include_str!("../flows/plan-change-sync.yaml"),
    ),
    (
        "flows/new-lead-routing.yaml",
        include_str!("../flows/new-lead-routing.yaml"),
    ),
    (
        "flows/stripe-subscription-to-hubspot.yaml",
        include_str!("../flows/stripe-subscription-to-hubspot.yaml"),
    ),
    (
        "flows/stripe-payment-failed.yaml",
        include_str!("../flows/stripe-payment-failed.yaml"),
    ),
    (
        "flows/hubspot-contact-enrichment.yaml",
        include_str!("../flows/hubspot-contact-enrichment.yaml"),
    ),
];

/// Runs the server until a shutdown signal.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    apply_flags(&mut config, args);
    config.validate()?;
    init_logging(config.log_format);
    let secrets = config.secrets()?;
    let env: Env =
        Arc::new(move |name: &str| process_env(name).or_else(|| secrets.get(name).cloned()));
    let https = config
        .public_url
        .as_deref()
        .is_some_and(|u| u.to_ascii_lowercase().starts_with("https://"));
    let auth = Auth::new(
        env("HOOKFLOW_ADMIN_PASSWORD"),
        env("HOOKFLOW_API_TOKEN"),
        https,
    );
    if auth.weak_password() && !config.listen.ip().is_loopback() {
        anyhow::bail!(
            "HOOKFLOW_ADMIN_PASSWORD is shorter than {} characters: too weak to listen on {} \
             (use a longer password, or listen on 127.0.0.1)",
            server::MIN_PASSWORD_CHARS,
            config.listen
        );
    }
    let alerts = config.alerts.prepare(&|n| env(n))?;
    let open_notice = (!auth.enabled()).then(|| {
        if !config.listen.ip().is_loopback() {
            config.listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        "no admin credential is set, so the UI and API are open and the server listens on 127.0.0.1 \
         only; set HOOKFLOW_ADMIN_PASSWORD (login) or HOOKFLOW_API_TOKEN (bearer) to require one"
    });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let base_url = match &config.public_url {
        Some(_) => config.base_url(),
        None => format!("http://{address}"),
    };
    // Flows read `${server.url}` as this server's base URL.
    let env: Env = {
        let (env, base_url) = (env.clone(), base_url.clone());
        Arc::new(move |name: &str| match name {
            flow::SERVER_URL => Some(base_url.clone()),
            _ => env(name),
        })
    };

    let node = match &config.node_id {
        Some(name) => NodeId::new(name).map_err(anyhow::Error::msg)?,
        None => NodeId::generate(),
    };
    let choice = config.store_choice(&*env)?;
    let store = open_store(&config, &choice, &node).await?;
    let http = HttpClient::new(config.outbound_policy(address)?)
        .context("cannot set up the HTTP client")?;
    if config.lease.0 < std::time::Duration::from_secs(3) {
        anyhow::bail!("lease: {:?} is too short (at least 3s)", config.lease.0);
    }
    let engine_config = EngineConfig {
        workers: config.workers,
        retention: config.retention.to_engine(),
        node,
        lease: config.lease.0,
        base_url: Some(base_url.clone()),
        ..EngineConfig::default()
    };
    let mut registry = crate::registry();
    registry.set_code_maxima(config.code.maxima());
    let engine = Engine::new(
        store,
        Catalog::with_env(registry, env.clone()),
        http,
        engine_config,
    );

    let problems = Problems::default();
    let flows = load_flows(&config, engine.catalog().registry(), &|n| env(n), &problems);
    let deployed = engine.deploy(flows).await?;

    println!(
        "hookflow {} listening on {base_url}",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "store: {}   flows: {}   node: {}",
        choice.describe(&config.data),
        config.flows.display(),
        engine.node()
    );
    if let Some(notice) = open_notice {
        println!("{notice}");
    }
    if deployed.is_empty() {
        println!(
            "no flows loaded: add a flow file to {} and restart",
            config.flows.display()
        );
    }
    let width = deployed
        .iter()
        .map(|(f, _)| f.id.as_str().len())
        .max()
        .unwrap_or(0);
    for (flow, token) in &deployed {
        match flow.trigger {
            flow::Trigger::Webhook { .. } => println!(
                "  {:<width$} POST {base_url}/hooks/catch/{}/{token}",
                flow.id, flow.id
            ),
            flow::Trigger::Manual => println!("  {:<width$} (manual trigger)", flow.id),
            flow::Trigger::Schedule(ref s) => println!(
                "  {:<width$} schedule `{}` ({})",
                flow.id, s.cron, s.timezone
            ),
        }
    }
    println!("request inspector: {base_url}/inspect/NAME   (see what HTTP actions sent: hookflow inspect NAME)");

    let (stop, stopped) = watch::channel(false);
    if config.flows.exists() {
        let watcher = crate::reload::watch(
            engine.clone(),
            config.flows.clone(),
            env.clone(),
            problems.clone(),
            stopped.clone(),
        );
        tokio::spawn(watcher);
    }
    let (log_writer, log_task) = LogWriter::start(engine.clone());
    let hook_log = HookLog::kept_by(log_writer.clone());
    if let Some(alerts) = alerts {
        alerts.spawn(
            engine.clone(),
            hook_log.clone(),
            base_url.clone(),
            stopped.clone(),
        );
    }
    let worker_runtime = WorkerRuntime::start().context("cannot start the workers' threads")?;
    let workers = {
        let engine = engine.clone();
        let mut stopped = stopped.clone();
        worker_runtime.handle().spawn(async move {
            engine
                .run(
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                    DRAIN,
                )
                .await
        })
    };
    let connections = Arc::new(server::ConnectionStats::default());
    let state = AppState {
        engine: engine.clone(),
        base_url: base_url.into(),
        max_body_bytes: config.max_body_bytes,
        inspector: Inspector::default(),
        hook_log,
        audit: AuditRecord::kept_by(log_writer.clone()),
        log_writer,
        captures: Captures::default(),
        problems,
        auth,
        hook_limits: HookLimits::default(),
        connections: connections.clone(),
    };
    let app = server::router(state);
    let shutdown = async move {
        shutdown_signal().await;
        info!("shutting down: no new requests; letting executing steps finish");
        let _ = stop.send(true);
    };
    server::serve(listener, app, config.http.limits(), connections, shutdown).await;
    workers.await.context("the workers panicked")??;
    // The log entries handed over before the server stopped reach the store (the alert task may
    // hold a writer a moment longer: wait a little, not for ever).
    let _ = tokio::time::timeout(LOG_DRAIN, log_task).await;
    engine.store().flush().await?;
    info!("stopped");
    Ok(())
}

/// Opens the configured store: sled in the data directory (created if missing), or PostgreSQL
/// (its schema migrated to this version).
pub async fn open_store(
    config: &Config,
    choice: &StoreChoice,
    node: &NodeId,
) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match choice {
        StoreChoice::Sled => {
            std::fs::create_dir_all(&config.data)
                .with_context(|| format!("cannot create {}", config.data.display()))?;
            let store = SledStore::open(&config.data, config.cache_mb << 20, config.compression)
                .with_context(|| {
                    format!("cannot open the data directory {}", config.data.display())
                })?;
            Arc::new(store)
        }
        StoreChoice::Postgres(options) => {
            let store = PgStore::open(options, node).await.with_context(|| {
                format!("cannot open the store {}", choice.describe(&config.data))
            })?;
            Arc::new(store)
        }
    })
}

fn apply_flags(config: &mut Config, args: ServeArgs) {
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.flows {
        config.flows = v;
    }
    if let Some(v) = args.data {
        config.data = v;
    }
    if let Some(v) = args.store {
        config.store = Some(v);
    }
    if let Some(v) = args.workers {
        config.workers = v;
    }
    if let Some(v) = args.node_id {
        config.node_id = Some(v);
    }
    if let Some(v) = args.max_body_bytes {
        config.max_body_bytes = v;
    }
    if let Some(v) = args.log_format {
        config.log_format = v;
    }
    config.outbound.allow.extend(args.allow_outbound);
}

/// Loads the flows, logging every problem; invalid flows are left out, the rest are served.
fn load_flows(
    config: &Config,
    registry: &hookflow_engine::steps::Registry,
    env: EnvLookup<'_>,
    problems: &Problems,
) -> Vec<Flow> {
    let (flows, errors): (Vec<Flow>, Vec<FlowError>) = if config.flows.exists() {
        flow::load(std::slice::from_ref(&config.flows), registry, env)
    } else {
        warn!(dir = %config.flows.display(), "the flows directory does not exist; serving the built-in example flows");
        let sources = EMBEDDED_FLOWS
            .iter()
            .map(|(f, t)| (f.to_string(), Ok(t.to_string())));
        flow::load_sources(sources, registry, env)
    };
    for e in &errors {
        warn!("{e}");
    }
    problems.set(&errors);
    if !errors.is_empty() {
        eprintln!("{} problem(s) in flow files; the flows with problems are not served (see `hookflow validate`)", errors.len());
    }
    flows
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn,sled=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
