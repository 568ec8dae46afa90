//! The deployment lifecycle: deploy the active version, switch to it when
//! ready, delete what it replaces, attach and detach by hand, and
//! `reconcile` after a crash. Every external step is preceded by a durable
//! [`Intent`] in the registry.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use finetune_core::{Error, Location, Result};
use serde::{Deserialize, Serialize};

use crate::deployer::{
    Deployer, Deployment, DeploymentSpec, DeploymentState, MANAGED_TAG, MODEL_TAG,
};
use crate::plan::{Plan, PlannedDeployment, PriceTable};
use crate::registry::{
    DeploymentRecord, Intent, LifecyclePolicy, ModelHead, NewVersion, Origin, Registry,
    VersionRecord,
};

/// The deployment name of a model version: deterministic, so that a
/// creation interrupted by a crash is found again by name.
pub fn deployment_name(model: &str, version: u64) -> String {
    format!("ft-{model}-v{version}")
}

/// Something the lifecycle did, for logs and progress displays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[non_exhaustive]
pub enum LifecycleEvent {
    /// A version was registered.
    VersionRegistered {
        /// The model.
        model: String,
        /// The new version.
        version: u64,
    },
    /// A version was made active.
    Activated {
        /// The model.
        model: String,
        /// The version.
        version: u64,
    },
    /// A deployment is being created.
    Deploying {
        /// The model.
        model: String,
        /// The version.
        version: u64,
        /// The deployment.
        deployment: String,
    },
    /// A deployment is ready.
    Ready {
        /// The model.
        model: String,
        /// The deployment.
        deployment: String,
    },
    /// The active deployment changed.
    Switched {
        /// The model.
        model: String,
        /// The deployment now serving the active version.
        deployment: String,
    },
    /// A deployment was deleted.
    Deleted {
        /// The model.
        model: String,
        /// The deployment.
        deployment: String,
    },
    /// A pre-existing deployment was attached.
    Attached {
        /// The model.
        model: String,
        /// The version.
        version: u64,
        /// The deployment.
        deployment: String,
    },
    /// A deployment was detached (it keeps running; it is the user's).
    Detached {
        /// The model.
        model: String,
        /// The deployment.
        deployment: String,
    },
    /// An interrupted step was finished or rolled back by `reconcile`.
    Recovered {
        /// The model.
        model: String,
        /// What was done.
        what: String,
    },
}

impl fmt::Display for LifecycleEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VersionRegistered { model, version } => {
                write!(f, "{model}: version {version} registered")
            }
            Self::Activated { model, version } => write!(f, "{model}: version {version} is active"),
            Self::Deploying { model, version, deployment } => {
                write!(f, "{model}: deploying version {version} as {deployment}")
            }
            Self::Ready { model, deployment } => write!(f, "{model}: {deployment} is ready"),
            Self::Switched { model, deployment } => {
                write!(f, "{model}: now served by {deployment}")
            }
            Self::Deleted { model, deployment } => write!(f, "{model}: {deployment} deleted"),
            Self::Attached { model, version, deployment } => {
                write!(f, "{model}: {deployment} attached to version {version}")
            }
            Self::Detached { model, deployment } => write!(f, "{model}: {deployment} detached"),
            Self::Recovered { model, what } => write!(f, "{model}: recovered: {what}"),
        }
    }
}

/// How long to wait for deployments. Throttled and transient platform errors
/// are retried by the deployer (see [`crate::RetryingDeployer`]), never here.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitPolicy {
    /// Between two looks at a provisioning deployment.
    pub interval: Duration,
    /// Give up waiting for a deployment after this long.
    pub timeout: Duration,
}

impl Default for WaitPolicy {
    /// Look every 10 s for up to an hour.
    fn default() -> Self {
        Self { interval: Duration::from_secs(10), timeout: Duration::from_secs(3600) }
    }
}

impl WaitPolicy {
    /// No waiting between looks: tests with instant fakes.
    pub fn immediate() -> Self {
        Self { interval: Duration::ZERO, timeout: Duration::from_secs(60) }
    }
}

/// What `reconcile` found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReconcileReport {
    /// Interrupted steps finished or rolled back, as sentences.
    pub recovered: Vec<String>,
    /// Deployments carrying our tag that no saved model references.
    pub orphans: Vec<Deployment>,
    /// Orphans deleted (when asked to).
    pub deleted_orphans: Vec<String>,
    /// Models that could not be brought in line with their policy, and why.
    pub errors: Vec<(String, String)>,
}

/// Called with every transition.
type Observer = Arc<dyn Fn(&LifecycleEvent) + Send + Sync>;

/// A deployment that has not served as its model's active deployment for
/// at least the idle limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleDeployment {
    /// The saved model.
    pub model: String,
    /// The deployment.
    pub id: String,
    /// The version it serves.
    pub version: u64,
    /// Created by us or attached (attached ones are only flagged).
    pub origin: Origin,
    /// How long it has been idle.
    pub idle_for: Duration,
    /// Whether it was deleted.
    pub removed: bool,
}

/// The lifecycle manager of saved models and their deployments.
pub struct Lifecycle {
    registry: Registry,
    deployer: Arc<dyn Deployer>,
    wait: WaitPolicy,
    prices: PriceTable,
    max_hourly_cost: Option<f64>,
    observer: Option<Observer>,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("registry", &self.registry)
            .field("deployer", &self.deployer)
            .field("wait", &self.wait)
            .field("max_hourly_cost", &self.max_hourly_cost)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// A lifecycle over `registry` deploying through `deployer`.
    pub fn new(registry: Registry, deployer: Arc<dyn Deployer>) -> Self {
        Self {
            registry,
            deployer,
            wait: WaitPolicy::default(),
            prices: PriceTable::default(),
            max_hourly_cost: None,
            observer: None,
        }
    }

    /// Sets how long to wait for deployments.
    pub fn with_wait(mut self, wait: WaitPolicy) -> Self {
        self.wait = wait;
        self
    }

    /// Prices for plans and the budget.
    pub fn with_prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    /// Refuses to create a deployment that would bring a model's estimated
    /// hourly cost above `limit` (from the price table).
    pub fn with_max_hourly_cost(mut self, limit: f64) -> Self {
        self.max_hourly_cost = Some(limit);
        self
    }

    /// Calls `observer` with every transition.
    pub fn with_observer(
        mut self,
        observer: impl Fn(&LifecycleEvent) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The deployer.
    pub fn deployer(&self) -> &Arc<dyn Deployer> {
        &self.deployer
    }

    /// The price table.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// A lifecycle over `registry` for the models of `connection`'s
    /// platform: its deployer ([`crate::deployer_for`]), or
    /// [`crate::NoDeployments`] where models need none.
    pub async fn for_connection(
        registry: Registry,
        connection: &finetune_core::Connection,
    ) -> Result<Self> {
        let deployer = crate::deployer_for(connection)
            .await?
            .unwrap_or_else(|| Arc::new(crate::NoDeployments));
        Ok(Self::new(registry, deployer))
    }

    fn emit(&self, event: LifecycleEvent) {
        tracing::info!(%event, "lifecycle");
        if let Some(observer) = &self.observer {
            observer(&event);
        }
    }

    /// Creates a saved model.
    pub async fn create_model(&self, name: &str, policy: LifecyclePolicy) -> Result<ModelHead> {
        self.registry.create_model(name, policy).await
    }

    /// Registers a version. The first version of a model becomes active (and
    /// is deployed under auto-deploy), and so does every new one under the
    /// policy's `activate_new_versions`; others wait for [`Self::activate`].
    pub async fn register_version(&self, model: &str, new: NewVersion) -> Result<VersionRecord> {
        let record = self.registry.add_version(model, new).await?;
        self.emit(LifecycleEvent::VersionRegistered {
            model: model.into(),
            version: record.version,
        });
        let head = self.registry.head(model).await?;
        if head.active_version.is_none() || head.policy.activate_new_versions {
            self.activate(model, record.version).await?;
        }
        Ok(record)
    }

    /// Makes `version` active; under auto-deploy, deploys it, waits until it
    /// is ready, switches to it and (under delete-previous) deletes the
    /// deployments it replaces.
    pub async fn activate(&self, model: &str, version: u64) -> Result<ModelHead> {
        self.registry.version(model, version).await?;
        let head = self.registry.head(model).await?;
        if head.policy.auto_deploy {
            self.check_budget(&self.plan_activate(model, version).await?)?;
        }
        let previous = head.active_version;
        self.registry
            .update(model, |h| {
                h.active_version = Some(version);
                Ok(())
            })
            .await?;
        self.emit(LifecycleEvent::Activated { model: model.into(), version });
        match self.converge(model).await {
            Ok(head) => Ok(head),
            // The deployment failed (and was removed): the previous version
            // stays active, still served by its deployment. A crash leaves
            // the activation to `reconcile` instead.
            Err(e @ (Error::Provider { .. } | Error::TimedOut { .. })) => {
                self.registry
                    .update(model, |h| {
                        if h.active_version == Some(version) {
                            h.active_version = previous;
                        }
                        Ok(())
                    })
                    .await?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The policy's sku, or the deployer's default when it names none.
    fn sku(&self, policy: &LifecyclePolicy) -> String {
        if policy.sku.trim().is_empty() {
            self.deployer.default_sku().to_owned()
        } else {
            policy.sku.clone()
        }
    }

    fn check_budget(&self, plan: &Plan) -> Result<()> {
        match (self.max_hourly_cost, plan.hourly_cost_after) {
            (Some(limit), Some(cost)) if cost > limit && plan.create.is_some() => {
                Err(Error::PermissionDenied {
                    message: format!(
                        "model `{}`: the plan's estimated cost {cost:.2}/h is above the limit {limit:.2}/h",
                        plan.model
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Brings a model's deployments in line with its policy.
    async fn converge(&self, model: &str) -> Result<ModelHead> {
        let head = self.registry.head(model).await?;
        let needs_deployment = match head.active_version {
            // Versions served without a deployment (OpenAI, local) are never
            // sent to a deployer.
            Some(version) => self.registry.version(model, version).await?.model.requires_deployment,
            None => false,
        };
        if let (true, true, Some(version)) =
            (head.policy.auto_deploy, needs_deployment, head.active_version)
        {
            let id = match self.ready_deployment_of(&head, version).await? {
                Some(id) => Some(id),
                None => match self.deploy_version(model, version).await {
                    Ok(id) => Some(id),
                    // Another process activated another version meanwhile
                    // (and may have deleted this one): theirs wins.
                    Err(e) => {
                        let now = self.registry.head(model).await?;
                        if now.active_version == Some(version) {
                            return Err(e);
                        }
                        tracing::info!(
                            model,
                            version,
                            "superseded by version {:?}",
                            now.active_version
                        );
                        None
                    }
                },
            };
            if let Some(id) = id {
                self.switch(model, version, &id).await?;
            }
        }
        if head.policy.delete_previous {
            self.delete_replaced(model, None).await?;
        }
        self.registry.head(model).await
    }

    /// A ready deployment the model already has for `version`.
    async fn ready_deployment_of(&self, head: &ModelHead, version: u64) -> Result<Option<String>> {
        let mut candidates: Vec<&DeploymentRecord> =
            head.deployments.iter().filter(|d| d.version == version).collect();
        // The active one first, then attached ones, then ours.
        candidates.sort_by_key(|d| {
            (head.active_deployment.as_deref() != Some(&d.id), d.origin == Origin::Created)
        });
        for record in candidates {
            if let Some(d) = self.deployer.get(&record.id).await?
                && d.state == DeploymentState::Ready
            {
                return Ok(Some(record.id.clone()));
            }
        }
        Ok(None)
    }

    async fn switch(&self, model: &str, version: u64, id: &str) -> Result<()> {
        let mut switched = false;
        self.registry
            .update(model, |h| {
                switched = false;
                if h.active_version == Some(version)
                    && h.deployment(id).is_some()
                    && h.active_deployment.as_deref() != Some(id)
                {
                    h.set_active_deployment(Some(id));
                    switched = true;
                }
                Ok(())
            })
            .await?;
        if switched {
            self.emit(LifecycleEvent::Switched { model: model.into(), deployment: id.into() });
        }
        Ok(())
    }

    /// Creates (or finds, after a crash) the deployment of a version, records
    /// it, and waits until it is ready. A deployment that fails to provision
    /// is deleted.
    async fn deploy_version(&self, model: &str, version: u64) -> Result<String> {
        let record = self.registry.version(model, version).await?;
        let head = self.registry.head(model).await?;
        let name = deployment_name(model, version);
        let intent = Intent::Deploy { version, name: name.clone() };
        self.registry
            .update(model, |h| {
                if !h.intents.contains(&intent) {
                    h.intents.push(intent.clone());
                }
                Ok(())
            })
            .await?;
        let mut tags = BTreeMap::new();
        tags.insert(MANAGED_TAG.to_owned(), "true".to_owned());
        tags.insert(MODEL_TAG.to_owned(), model.to_owned());
        tags.insert("finetune-version".to_owned(), version.to_string());
        let spec = DeploymentSpec {
            name: name.clone(),
            model_id: record.model.model_id.clone(),
            sku: self.sku(&head.policy),
            capacity: head.policy.capacity,
            tags,
        };
        self.emit(LifecycleEvent::Deploying {
            model: model.into(),
            version,
            deployment: name.clone(),
        });
        let deployment = self.deployer.create(&spec).await?;
        let id = deployment.id.clone();
        self.registry
            .update(model, |h| {
                h.intents.retain(|i| i != &intent);
                if h.deployment(&id).is_none() {
                    h.deployments.push(DeploymentRecord::new(id.clone(), version, Origin::Created));
                }
                Ok(())
            })
            .await?;
        match self.wait_ready(&id).await {
            Ok(()) => {
                self.emit(LifecycleEvent::Ready { model: model.into(), deployment: id.clone() });
                Ok(id)
            }
            Err(e) => {
                // A failed deployment may still be billed: remove it.
                if matches!(e, Error::Provider { .. }) {
                    self.delete_deployment_inner(model, &id).await?;
                }
                Err(e)
            }
        }
    }

    async fn wait_ready(&self, id: &str) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            match self.deployer.get(id).await? {
                Some(d) => match d.state {
                    DeploymentState::Ready => return Ok(()),
                    DeploymentState::Failed { reason } => {
                        return Err(Error::Provider {
                            status: None,
                            code: Some("deployment_failed".into()),
                            message: format!("deployment {id} failed: {reason}"),
                            param: None,
                        });
                    }
                    _ => {}
                },
                None => return Err(Error::NotFound { what: format!("deployment {id}") }),
            }
            if started.elapsed() >= self.wait.timeout {
                return Err(Error::TimedOut { after: started.elapsed() });
            }
            tokio::time::sleep(self.wait.interval).await;
        }
    }

    /// Deletes the deployments this library created for a model other than
    /// `keep` (by default the active deployment; without one, the newest
    /// deployment we created): under delete-previous a model keeps at most
    /// one deployment of ours.
    async fn delete_replaced(&self, model: &str, keep: Option<&str>) -> Result<()> {
        let head = self.registry.head(model).await?;
        let keep = keep.map(str::to_owned).or(head.active_deployment.clone()).or_else(|| {
            head.deployments
                .iter()
                .rev()
                .find(|d| d.origin == Origin::Created)
                .map(|d| d.id.clone())
        });
        let Some(keep) = keep else { return Ok(()) };
        // Under auto-deploy, until the active version is served, its
        // deployment is kept: another process may be creating it.
        let served = head
            .active_deployment
            .as_deref()
            .and_then(|id| head.deployment(id))
            .map(|d| Some(d.version) == head.active_version)
            .unwrap_or(false);
        let target = head.active_version.filter(|_| head.policy.auto_deploy && !served);
        let replaced: Vec<String> = head
            .deployments
            .iter()
            .filter(|d| d.origin == Origin::Created && d.id != keep && Some(d.version) != target)
            .map(|d| d.id.clone())
            .collect();
        for id in replaced {
            self.delete_deployment_inner(model, &id).await?;
        }
        Ok(())
    }

    async fn delete_deployment_inner(&self, model: &str, id: &str) -> Result<()> {
        let intent = Intent::Delete { id: id.to_owned() };
        self.registry
            .update(model, |h| {
                if !h.intents.contains(&intent) {
                    h.intents.push(intent.clone());
                }
                Ok(())
            })
            .await?;
        self.deployer.delete(id).await?;
        self.registry
            .update(model, |h| {
                h.intents.retain(|i| i != &intent);
                h.deployments.retain(|d| d.id != id);
                if h.active_deployment.as_deref() == Some(id) {
                    h.active_deployment = None;
                }
                Ok(())
            })
            .await?;
        self.emit(LifecycleEvent::Deleted { model: model.into(), deployment: id.into() });
        Ok(())
    }

    /// Deploys a version by hand (and switches to it when it is the active
    /// version); under delete-previous, the model's other deployments of
    /// ours are deleted once it is ready. Returns the deployment id. Under
    /// auto-deploy only the active version is deployed: activate a version
    /// instead.
    pub async fn deploy(&self, model: &str, version: u64) -> Result<String> {
        let head = self.registry.head(model).await?;
        if head.policy.auto_deploy && head.active_version != Some(version) {
            return Err(Error::invalid_at(
                Location::column("version"),
                format!(
                    "`{model}` is auto-deployed: only its active version is deployed; activate \
                     version {version} instead"
                ),
            ));
        }
        self.check_budget(&self.plan_deploy(model, version).await?)?;
        let id = self.deploy_version(model, version).await?;
        self.switch(model, version, &id).await?;
        if head.policy.delete_previous {
            self.delete_replaced(model, Some(&id)).await?;
        }
        Ok(id)
    }

    /// Attaches a pre-existing deployment to a version by hand. It is never
    /// deleted by the lifecycle; when the version is active it becomes the
    /// active deployment (and, under delete-previous, replaces ours).
    pub async fn attach(&self, model: &str, version: u64, id: &str) -> Result<ModelHead> {
        self.registry.version(model, version).await?;
        let found = self.deployer.get(id).await?;
        if found.is_none() {
            return Err(Error::NotFound { what: format!("deployment {id}") });
        }
        self.registry
            .update(model, |h| {
                match h.deployment(id) {
                    Some(d) if d.version != version => {
                        return Err(Error::invalid_at(
                            Location::column("deployment"),
                            format!("{id} serves version {} of `{model}` already", d.version),
                        ));
                    }
                    Some(_) => {}
                    None => h.deployments.push(DeploymentRecord::new(
                        id.to_owned(),
                        version,
                        Origin::Attached,
                    )),
                }
                if h.active_version == Some(version) {
                    h.set_active_deployment(Some(id));
                }
                Ok(())
            })
            .await?;
        self.emit(LifecycleEvent::Attached { model: model.into(), version, deployment: id.into() });
        let head = self.registry.head(model).await?;
        if head.policy.delete_previous && head.active_deployment.as_deref() == Some(id) {
            self.delete_replaced(model, Some(id)).await?;
        }
        self.registry.head(model).await
    }

    /// Detaches a deployment attached by hand; it keeps running (it is the
    /// user's). Deployments this library created are deleted instead, with
    /// [`Self::delete_deployment`], so they can never be left behind.
    pub async fn detach(&self, model: &str, id: &str) -> Result<ModelHead> {
        let head = self
            .registry
            .update(model, |h| match h.deployment(id) {
                None => Err(Error::NotFound { what: format!("deployment {id} of `{model}`") }),
                Some(d) if d.origin == Origin::Created => Err(Error::invalid_at(
                    Location::column("deployment"),
                    format!("{id} was created by this library: delete it instead of detaching it"),
                )),
                Some(_) => {
                    h.deployments.retain(|d| d.id != id);
                    if h.active_deployment.as_deref() == Some(id) {
                        h.active_deployment = None;
                    }
                    Ok(())
                }
            })
            .await?;
        self.emit(LifecycleEvent::Detached { model: model.into(), deployment: id.into() });
        Ok(head)
    }

    /// Deletes one of a model's deployments by hand (attached ones too).
    pub async fn delete_deployment(&self, model: &str, id: &str) -> Result<ModelHead> {
        if self.registry.head(model).await?.deployment(id).is_none() {
            return Err(Error::NotFound { what: format!("deployment {id} of `{model}`") });
        }
        self.delete_deployment_inner(model, id).await?;
        self.registry.head(model).await
    }

    /// What [`Self::activate`] would create and delete, and the estimated
    /// hourly cost before and after; nothing is changed.
    pub async fn plan_activate(&self, model: &str, version: u64) -> Result<Plan> {
        let head = self.registry.head(model).await?;
        let mut plan = self.plan_base(&head, version).await?;
        let served_without =
            !self.registry.version(model, version).await?.model.requires_deployment;
        if !head.policy.auto_deploy || served_without {
            plan.create = None;
            plan.delete.clear();
        }
        plan.finish(&self.prices);
        Ok(plan)
    }

    /// What [`Self::deploy`] would create.
    pub async fn plan_deploy(&self, model: &str, version: u64) -> Result<Plan> {
        let head = self.registry.head(model).await?;
        let mut plan = self.plan_base(&head, version).await?;
        plan.finish(&self.prices);
        Ok(plan)
    }

    async fn plan_base(&self, head: &ModelHead, version: u64) -> Result<Plan> {
        self.registry.version(&head.name, version).await?;
        let mut current = Vec::new();
        for record in &head.deployments {
            if let Some(d) = self.deployer.get(&record.id).await? {
                current.push((record.clone(), d));
            }
        }
        let existing =
            current.iter().find(|(r, d)| r.version == version && d.state == DeploymentState::Ready);
        let create = match existing {
            Some(_) => None,
            None => Some(PlannedDeployment {
                name: deployment_name(&head.name, version),
                version,
                sku: self.sku(&head.policy),
                capacity: head.policy.capacity,
                hourly_cost: None,
            }),
        };
        let keep = existing
            .map(|(r, _)| r.id.clone())
            .unwrap_or_else(|| deployment_name(&head.name, version));
        let delete = if head.policy.delete_previous {
            current
                .iter()
                .filter(|(r, _)| r.origin == Origin::Created && r.id != keep)
                .map(|(r, _)| r.id.clone())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Plan {
            model: head.name.clone(),
            version,
            create,
            delete,
            current: current.into_iter().map(|(_, d)| d).collect(),
            hourly_cost_before: None,
            hourly_cost_after: None,
            unpriced: Vec::new(),
        })
    }

    /// Flags every deployment that has not been its model's active
    /// deployment for at least `limit` (still billed, serving nothing
    /// active), and with `remove` deletes those this library created.
    /// Attached deployments are the user's: they are only flagged.
    pub async fn enforce_idle_limit(
        &self,
        limit: Duration,
        remove: bool,
    ) -> Result<Vec<IdleDeployment>> {
        let now = chrono::Utc::now();
        let mut idle = Vec::new();
        for model in self.registry.models().await? {
            if !self.owns(&model).await? {
                continue;
            }
            let head = self.registry.head(&model).await?;
            for d in &head.deployments {
                if head.active_deployment.as_deref() == Some(d.id.as_str()) {
                    continue;
                }
                let Some(since) = d.idle_since else { continue };
                let idle_for = (now - since).to_std().unwrap_or(Duration::ZERO);
                if idle_for < limit {
                    continue;
                }
                let removed = remove && d.origin == Origin::Created;
                if removed {
                    self.delete_deployment_inner(&model, &d.id).await?;
                }
                tracing::warn!(model, deployment = d.id, ?idle_for, removed, "idle deployment");
                idle.push(IdleDeployment {
                    model: model.clone(),
                    id: d.id.clone(),
                    version: d.version,
                    origin: d.origin,
                    idle_for,
                    removed,
                });
            }
        }
        Ok(idle)
    }

    /// Whether `model` is deployed on this lifecycle's platform: its newest
    /// version's provider is one the deployer serves. A model without a
    /// version has nothing deployed and is skipped.
    async fn owns(&self, model: &str) -> Result<bool> {
        let versions = self.registry.versions(model).await?;
        Ok(versions.last().is_some_and(|v| self.deployer.serves(&v.model.provider)))
    }

    /// Finishes or rolls back every interrupted step, brings each model in
    /// line with its policy, and reports deployments carrying our tag that
    /// no model references (deleting them when `delete_orphans`).
    pub async fn reconcile(&self, delete_orphans: bool) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let managed = self.deployer.list_managed().await?;
        for model in self.registry.models().await? {
            // Another platform's model: its deployments are not ours to
            // look up (they would look vanished) or to change.
            if !self.owns(&model).await? {
                continue;
            }
            let head = self.registry.head(&model).await?;
            for intent in &head.intents {
                match intent {
                    Intent::Deploy { version, name } => {
                        let found = managed.iter().find(|d| &d.name == name);
                        let what = match found {
                            Some(d) => format!(
                                "the interrupted deployment {} of version {version} is recorded",
                                d.id
                            ),
                            None => format!(
                                "the interrupted deployment {name} never started; rolled back"
                            ),
                        };
                        self.registry
                            .update(&model, |h| {
                                h.intents.retain(|i| i != intent);
                                if let Some(d) = found
                                    && h.deployment(&d.id).is_none()
                                {
                                    h.deployments.push(DeploymentRecord::new(
                                        d.id.clone(),
                                        *version,
                                        Origin::Created,
                                    ));
                                }
                                Ok(())
                            })
                            .await?;
                        self.emit(LifecycleEvent::Recovered {
                            model: model.clone(),
                            what: what.clone(),
                        });
                        report.recovered.push(format!("{model}: {what}"));
                    }
                    Intent::Delete { id } => {
                        self.delete_deployment_inner(&model, id).await?;
                        let what = format!("the interrupted deletion of {id} is finished");
                        self.emit(LifecycleEvent::Recovered {
                            model: model.clone(),
                            what: what.clone(),
                        });
                        report.recovered.push(format!("{model}: {what}"));
                    }
                }
            }
            // Deployments deleted behind our back are forgotten.
            let head = self.registry.head(&model).await?;
            for record in &head.deployments {
                if self.deployer.get(&record.id).await?.is_none() {
                    self.registry
                        .update(&model, |h| {
                            h.deployments.retain(|d| d.id != record.id);
                            if h.active_deployment.as_deref() == Some(record.id.as_str()) {
                                h.active_deployment = None;
                            }
                            Ok(())
                        })
                        .await?;
                    report.recovered.push(format!("{model}: {} is gone; forgotten", record.id));
                }
            }
            let mut last = None;
            for _ in 0..3 {
                match self.converge(&model).await {
                    Ok(_) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e.to_string()),
                }
            }
            if let Some(e) = last {
                report.errors.push((model.clone(), e));
            }
        }
        let mut referenced = BTreeSet::new();
        for model in self.registry.models().await? {
            let head = self.registry.head(&model).await?;
            referenced.extend(head.deployments.iter().map(|d| d.id.clone()));
        }
        let managed = self.deployer.list_managed().await?;
        for d in managed {
            if d.is_managed() && !referenced.contains(&d.id) {
                if delete_orphans {
                    self.deployer.delete(&d.id).await?;
                    report.deleted_orphans.push(d.id.clone());
                }
                report.orphans.push(d);
            }
        }
        Ok(report)
    }
}
