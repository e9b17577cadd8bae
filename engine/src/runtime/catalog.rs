//! The flows the engine knows: the current revision of each deployed flow (new events run on it), and
//! every revision a stored run refers to, so a queued run always finishes on the revision it was
//! accepted under, even after the file changed or across restarts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::flow::{parse_flow, process_env, Flow, FlowError, SharedEnv};
use crate::ids::FlowId;
use crate::model::Revision;
use crate::steps::Registry;
use crate::store::Store;
use crate::{Error, Result};

/// Deployed flows and known revisions.
pub struct Catalog {
    registry: Registry,
    /// Where `${env:…}` of a rebuilt revision is read.
    env: SharedEnv,
    current: RwLock<HashMap<FlowId, Arc<Flow>>>,
    revisions: RwLock<HashMap<(FlowId, Revision), Arc<Flow>>>,
}

impl Catalog {
    /// An empty catalog building flows with `registry`, reading the process environment.
    pub fn new(registry: Registry) -> Self {
        Self::with_env(registry, std::sync::Arc::new(process_env))
    }

    /// An empty catalog building flows with `registry`, reading `env` (as the flows were loaded).
    pub fn with_env(registry: Registry, env: SharedEnv) -> Self {
        Self {
            registry,
            env,
            current: RwLock::default(),
            revisions: RwLock::default(),
        }
    }

    /// The step kinds flows may use.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Makes `flow` the current revision of its id.
    pub fn deploy(&self, flow: Arc<Flow>) {
        let key = (flow.id.clone(), flow.revision.clone());
        self.revisions
            .write()
            .expect("catalog lock")
            .insert(key, flow.clone());
        self.current
            .write()
            .expect("catalog lock")
            .insert(flow.id.clone(), flow);
    }

    /// Stops serving a flow (its file was removed): new events are refused; runs already stored
    /// finish on their revisions.
    pub fn undeploy(&self, id: &FlowId) {
        self.current.write().expect("catalog lock").remove(id);
    }

    /// The current revision of a flow.
    pub fn current(&self, id: &FlowId) -> Option<Arc<Flow>> {
        self.current.read().expect("catalog lock").get(id).cloned()
    }

    /// Every deployed flow, by id.
    pub fn all(&self) -> Vec<Arc<Flow>> {
        let mut flows: Vec<_> = self
            .current
            .read()
            .expect("catalog lock")
            .values()
            .cloned()
            .collect();
        flows.sort_by(|a, b| a.id.cmp(&b.id));
        flows
    }

    /// A given revision of a flow: from memory, else rebuilt from the source the store kept.
    pub async fn revision(
        &self,
        store: &dyn Store,
        id: &FlowId,
        revision: &Revision,
    ) -> Result<Arc<Flow>> {
        let key = (id.clone(), revision.clone());
        if let Some(flow) = self.revisions.read().expect("catalog lock").get(&key) {
            return Ok(flow.clone());
        }
        let source = store
            .revision(id, revision)
            .await?
            .ok_or_else(|| Error::RevisionMissing {
                flow: id.clone(),
                revision: revision.clone(),
            })?;
        let file = format!("{id}@{revision}");
        let env = |name: &str| (self.env)(name);
        let flow = parse_flow(&file, &source, &self.registry, &env)
            .map_err(|errors: Vec<FlowError>| Error::InvalidFlow { errors })?;
        let flow = Arc::new(flow);
        self.revisions
            .write()
            .expect("catalog lock")
            .insert(key, flow.clone());
        Ok(flow)
    }
}
