//! Live reload: the flows directory is checked every second. When its files change, they are
//! validated: a valid file's new revision takes effect for new runs at once (queued runs finish on
//! the revision they started with); an invalid one is refused — its problems go to the log and to
//! `GET /api/v1/flows` (`problems`), shown by the UI — and its previous revision keeps running. A
//! flow whose file is removed is no longer served.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hookflow_engine::flow::{self, Flow, FlowError};
use hookflow_engine::runtime::Engine;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// How often the directory is checked.
const EVERY: Duration = Duration::from_secs(1);

/// The problems of the flow files as last loaded (`file:line:col: field: message`).
#[derive(Clone, Default)]
pub struct Problems(Arc<RwLock<Vec<String>>>);

impl Problems {
    /// Replaces the problems.
    pub fn set(&self, errors: &[FlowError]) {
        let shown = errors.iter().map(ToString::to_string).collect();
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = shown;
    }

    /// The problems.
    pub fn get(&self) -> Vec<String> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The environment flows are loaded with (process environment, then the secrets file).
pub use hookflow_engine::flow::SharedEnv as Env;

/// Watches `dir` until `stop` turns true.
pub async fn watch(
    engine: Arc<Engine>,
    dir: PathBuf,
    env: Env,
    problems: Problems,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = snapshot(&dir);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        let now = snapshot(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        if let Err(e) = reload(&engine, &dir, &env, &problems).await {
            error!(error = %e, "could not deploy the changed flows");
        }
    }
}

/// Each flow file's text (or read error), by path.
fn snapshot(dir: &PathBuf) -> BTreeMap<PathBuf, Result<String, String>> {
    flow::flow_files(std::slice::from_ref(dir))
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).map_err(|e| e.to_string());
            (f, text)
        })
        .collect()
}

async fn reload(
    engine: &Engine,
    dir: &PathBuf,
    env: &Env,
    problems: &Problems,
) -> hookflow_engine::Result<()> {
    let lookup = |name: &str| env(name);
    let (flows, errors) = flow::load(
        std::slice::from_ref(dir),
        engine.catalog().registry(),
        &lookup,
    );
    for e in &errors {
        warn!("refused a flow change, the previous revision keeps running: {e}");
    }
    problems.set(&errors);
    let refused: Vec<&str> = errors.iter().map(|e| e.file.as_str()).collect();
    let changed: Vec<Flow> = flows
        .into_iter()
        .filter(|f| {
            engine
                .catalog()
                .current(&f.id)
                .is_none_or(|current| current.revision != f.revision)
        })
        .collect();
    let on_disk: Vec<_> = changed.iter().map(|f| f.id.clone()).collect();
    for flow in engine.deploy(changed).await?.iter().map(|(f, _)| f) {
        info!(flow = %flow.id, revision = %flow.revision, file = %flow.file, "deployed a changed flow");
    }
    let files = snapshot(dir);
    for current in engine.catalog().all() {
        let still_there = files
            .keys()
            .any(|p| p.display().to_string() == current.file);
        let kept = refused.contains(&current.file.as_str()) || on_disk.contains(&current.id);
        if !still_there && !kept {
            engine.catalog().undeploy(&current.id);
            info!(flow = %current.id, file = %current.file, "the flow's file is gone: it is no longer served");
        }
    }
    Ok(())
}
