//! The command line: `hookflow serve | validate | test | schema | run | hooks | runs | replay |
//! capture | diff | inspect | audit | quarantine | storage`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::LogFormat;

/// hookflow: webhooks in, durable flows out.
#[derive(Debug, Parser)]
#[command(name = "hookflow", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A hookflow command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server: catch hooks, workers, API and UI.
    Serve(ServeArgs),
    /// Create or upgrade the PostgreSQL store's schema to this version (`serve` does it too).
    Migrate(MigrateArgs),
    /// Check flow files and print every problem as `file:line:col: field: message`.
    Validate {
        /// Flow files or directories (default: flows).
        paths: Vec<PathBuf>,
        /// Also run each flow offline on each of its samples (`samples/FLOW/*.json` beside it)
        /// and fail on expressions that resolve to nothing.
        #[arg(long)]
        samples: bool,
    },
    /// Run the flow tests (`FLOW.test.yaml` beside each flow) offline; exit code 1 if one fails.
    Test {
        /// Test files or directories (default: flows).
        paths: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the flow format (for editor autocomplete).
    Schema,
    /// Run a flow once, locally, without a server, and print each step's output.
    Run {
        /// The flow file.
        flow: PathBuf,
        /// A JSON file with the event's body (what a webhook sender would post).
        #[arg(long, required_unless_present_any = ["sample", "tick"], conflicts_with = "sample")]
        event: Option<PathBuf>,
        /// A sample of the flow, by name (`samples/FLOW/NAME.json` beside the flow file).
        #[arg(long, conflicts_with = "tick")]
        sample: Option<String>,
        /// Run a schedule flow as its fire of this tick would (`trigger.body.scheduled_at`):
        /// `YYYY-MM-DDTHH:MM` in the flow's timezone, or RFC 3339.
        #[arg(long, conflicts_with = "event")]
        tick: Option<String>,
        /// Run offline: render HTTP and connector calls and show them instead of sending them.
        #[arg(long)]
        dry_run: bool,
        /// Private networks (CIDR) HTTP actions may reach, e.g. 127.0.0.1.
        #[arg(long = "allow-outbound", value_name = "CIDR")]
        allow_outbound: Vec<String>,
    },
    /// List the flows of a running server with their catch URLs; `hooks log FLOW` shows a flow's
    /// catch-hook log.
    #[command(args_conflicts_with_subcommands = true)]
    Hooks {
        /// `log FLOW`, or nothing to list the catch URLs.
        #[command(subcommand)]
        command: Option<HooksCommand>,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Look at runs on a running server.
    Runs {
        /// Which runs command.
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Start a run's event again as a new run from the first step, on the flow as it is now or as
    /// it was; or every run of a flow in a time window (`--flow`).
    Replay(ReplayArgs),
    /// Look at a server's flows.
    Flows {
        /// Which flows command.
        #[command(subcommand)]
        command: FlowsCommand,
    },
    /// List a server's schedule flows and their next fire times, or a flow file's next ticks
    /// offline (in the flow's timezone and UTC).
    Schedules(SchedulesArgs),
    /// Start a run of a flow on a server with a payload (a `manual:` flow's way to run; any flow
    /// can be tried this way).
    Trigger {
        /// The flow's id.
        flow: String,
        /// A JSON file with the payload (the run's `trigger.body`).
        #[arg(long, required_unless_present = "sample", conflicts_with = "sample")]
        event: Option<PathBuf>,
        /// One of the flow's samples, by name.
        #[arg(long)]
        sample: Option<String>,
        /// Wait for the run to finish and print how it ended.
        #[arg(long)]
        wait: bool,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Keep the next events sent to a flow's catch URL as samples (`samples/FLOW/NAME.json` beside
    /// the flow, credentials redacted); the flow runs them as usual.
    Capture {
        /// The flow's id.
        flow: String,
        /// How many events to keep (1 to 100).
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show what changes between the flows on disk and those the server runs (added, removed,
    /// changed steps), like a plan before deploying.
    Diff {
        /// Flow files or directories (default: flows).
        paths: Vec<PathBuf>,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show what the server's request inspector received (`/inspect/BIN`).
    Inspect {
        /// The bin; without it, list the bins.
        bin: Option<String>,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the server's audit record, newest first: logins (and failed ones), retries, replays,
    /// manual runs, captures and reingests, with who, from where and when.
    Audit(AuditArgs),
    /// Look at the accepted events a server set aside because it could not read them back
    /// (damaged on disk, or not decodable), and ingest them again once they are repaired.
    Quarantine {
        /// Which quarantine command.
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Look at and change a server's storage between runs (what `storage` steps keep).
    Storage {
        /// Which storage command.
        #[command(subcommand)]
        command: StorageCommand,
    },
}

/// `hookflow storage …`.
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// List the namespaces; with a namespace, its keys and values.
    List {
        /// A namespace (a flow's id, or a shared name).
        namespace: Option<String>,
        /// Go on after this key (printed at the end of a full page).
        #[arg(long, requires = "namespace")]
        after: Option<String>,
        /// How many keys (1 to 1000).
        #[arg(long, default_value_t = 100, requires = "namespace")]
        limit: usize,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print one key's value.
    Get {
        /// The namespace.
        namespace: String,
        /// The key.
        key: String,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Store a value under a key.
    Set {
        /// The namespace.
        namespace: String,
        /// The key.
        key: String,
        /// The value: JSON (`42`, `[1,2]`, `{"a":1}`, `"text"`); anything else is stored as text.
        value: String,
        /// Expire after this long (`30m`, `24h`, `7d`).
        #[arg(long)]
        expires_in: Option<String>,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a key.
    Delete {
        /// The namespace.
        namespace: String,
        /// The key.
        key: String,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `hookflow hooks …`.
#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// A flow's recent catch-hook requests, newest first, and what became of each: queued (with
    /// its run), duplicate, ignored, or rejected and why. Those that started no run are kept in the
    /// store (they survive a restart).
    Log {
        /// The flow's id.
        flow: String,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `hookflow audit` options.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only entries of this action: login, login_failed, logout, retry, replay, retry_bulk,
    /// replay_bulk, trigger, capture, reingest.
    #[arg(long)]
    pub action: Option<String>,
    /// Only entries since: a time (RFC 3339) or a duration ago (`2h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// How many entries.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Go on after this entry (the cursor the previous page printed).
    #[arg(long)]
    pub before: Option<String>,
    /// Server options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `hookflow quarantine …`.
#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List the quarantined records: where they were, why, and where their bytes are kept.
    List(ClientArgs),
    /// Ingest a quarantined record again (its kept bytes must decode as the run it held); its
    /// entry is then removed.
    Reingest {
        /// The entry's id (from `hookflow quarantine list`).
        id: String,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `hookflow flows …`.
#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// A flow's revisions as deployed over time, newest first.
    History {
        /// The flow's id.
        flow: String,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `hookflow runs …`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List(ListArgs),
    /// Show one run: its event and every step's input, output, error and attempts.
    Show {
        /// The run id (`run_…`).
        run_id: String,
        /// Server options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a failed run from the step that failed (succeeded steps keep their outputs); or every
    /// failed run of a flow in a time window (`--flow`).
    Retry(RetryArgs),
}

/// `hookflow runs list` options.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only runs of this flow.
    #[arg(long)]
    pub flow: Option<String>,
    /// Only runs with this status: queued, running, succeeded, failed, filtered.
    #[arg(long)]
    pub status: Option<String>,
    /// Only runs created since: a time (RFC 3339) or a duration ago (`2h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only runs created before: a time (RFC 3339) or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// How many runs.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Continue after this cursor (printed at the end of a full page).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Server options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `hookflow runs retry` options.
#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// The failed run (`run_…`); leave out and give `--flow` to retry many.
    pub run_id: Option<String>,
    /// Which runs, when many.
    #[command(flatten)]
    pub bulk: BulkArgs,
    /// Server options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `hookflow replay` options.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The run to replay (`run_…`); leave out and give `--flow` to replay many.
    pub run_id: Option<String>,
    /// `current`: the flow as deployed now; `original`: exactly the revision the run ran.
    #[arg(long, default_value = "current")]
    pub revision: String,
    /// Only runs with this status (with `--flow`): queued, running, succeeded, failed, filtered.
    #[arg(long)]
    pub status: Option<String>,
    /// Which runs, when many.
    #[command(flatten)]
    pub bulk: BulkArgs,
    /// Server options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Which runs of a flow a bulk retry or replay applies to. The matching count is shown first.
#[derive(Debug, clap::Args)]
pub struct BulkArgs {
    /// Every matching run of this flow.
    #[arg(long)]
    pub flow: Option<String>,
    /// Only runs created since: a time (RFC 3339) or a duration ago (`2h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only runs created before: a time (RFC 3339) or a duration ago.
    #[arg(long)]
    pub until: Option<String>,
    /// Start without asking for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Options of commands that talk to a running server.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The server's base URL.
    #[arg(long, env = "HOOKFLOW_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The API token, when the server requires one.
    #[arg(long, env = "HOOKFLOW_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `hookflow schedules` options.
#[derive(Debug, clap::Args)]
pub struct SchedulesArgs {
    /// A schedule flow's file: list its next ticks from the file, with no server.
    pub flow: Option<PathBuf>,
    /// How many ticks to list (with a flow file).
    #[arg(long, default_value_t = 20, requires = "flow")]
    pub count: usize,
    /// List the ticks after this time (with a flow file; default now): `YYYY-MM-DDTHH:MM` in the
    /// flow's timezone, or RFC 3339.
    #[arg(long, requires = "flow")]
    pub from: Option<String>,
    /// Server options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `hookflow migrate` options.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// A YAML configuration file (its `store:` and `secrets_file:` are used).
    #[arg(long, env = "HOOKFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// The store's PostgreSQL URL (overrides the configuration file).
    #[arg(long, env = "HOOKFLOW_STORE")]
    pub store: Option<String>,
    /// Print what would be applied, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `hookflow serve` options; each overrides the configuration file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A YAML configuration file (default: the embedded default; see src/default-config.yaml).
    #[arg(long, env = "HOOKFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// The address to listen on (port 0 picks a free port).
    #[arg(long, env = "HOOKFLOW_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The directory of flow files.
    #[arg(long, env = "HOOKFLOW_FLOWS")]
    pub flows: Option<PathBuf>,
    /// The data directory (sled).
    #[arg(long, env = "HOOKFLOW_DATA")]
    pub data: Option<PathBuf>,
    /// The store: `sled` (embedded, the default) or a PostgreSQL URL shared by several nodes.
    #[arg(long, env = "HOOKFLOW_STORE")]
    pub store: Option<String>,
    /// Private networks (CIDR) HTTP actions may reach, e.g. 127.0.0.1 or 10.0.0.0/8.
    #[arg(long = "allow-outbound", value_name = "CIDR")]
    pub allow_outbound: Vec<String>,
    /// How many steps may execute at once.
    #[arg(long)]
    pub workers: Option<usize>,
    /// This node's id (letters, digits, `.`, `_`, `-`): in logs, `/metrics` and step attempts.
    #[arg(long, env = "HOOKFLOW_NODE_ID")]
    pub node_id: Option<String>,
    /// The largest catch-hook body, in bytes.
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Log format.
    #[arg(long)]
    pub log_format: Option<LogFormat>,
}
