//! The fine-tuning recipe: a dataset (and an optional validation set), a
//! connection, a base model and settings in; a saved model's new version
//! out, with its provenance and loss curve, made active and deployed as the
//! model's policy says.
//!
//! [`Recipe::run`]
//!
//! 1. connects through the platform's [`Providers`] (a connection without
//!    fine-tuning enabled is refused before anything else);
//! 2. validates both datasets — the provider's row minimum, the validation
//!    set also checked for rows that are in the training set — and asks the
//!    provider to check the spec, before anything is uploaded or trained; an
//!    invalid dataset is refused (the reports go to the caller first);
//! 3. records a pending job on the saved model **before** submitting and
//!    the job id right after, so that a rerun after a crash re-attaches to
//!    the same job (found by id, or by the recipe's fingerprint in the job's
//!    metadata when the answer was lost) instead of paying for another;
//! 4. follows the job, reporting state changes, steps and losses;
//! 5. registers the result as a new version carrying its [`Provenance`]
//!    (once, even when rerun), which the [`Lifecycle`] makes active and
//!    deploys per the model's policy — only versions whose provider needs a
//!    deployment are ever sent to a deployer.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use finetune_core::{
    Connection, Error, FineTuneProvider, Job, JobId, JobSpec, JobState, ListJobs, LossPoint,
    PollPolicy, Providers, Result,
};
use finetune_data::{
    CharsPerToken, DatasetRole, ObjectStores, TokenCounter, ValidationOptions, ValidationReport,
    Validator,
};
use sha2::Digest as _;

use crate::lifecycle::Lifecycle;
use crate::registry::{
    DatasetRecord, LifecyclePolicy, ModelHead, NewVersion, PendingJob, Provenance, VersionRecord,
};

/// The job metadata key carrying the recipe's fingerprint.
pub const RECIPE_LABEL: &str = "finetune_recipe";

/// What to fine-tune, on what, into which saved model.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The saved model the version goes to (created with `policy` when
    /// missing).
    pub model: String,
    /// The job: base model, training and validation datasets (with their
    /// column mapping), hyperparameters, provider settings, seed, suffix.
    pub spec: JobSpec,
    /// How the saved model's versions are activated and deployed (used when
    /// the recipe creates the saved model): by default each new version
    /// becomes active.
    pub policy: LifecyclePolicy,
    /// How the job is polled.
    pub poll: PollPolicy,
    /// Object stores for datasets given as URLs.
    pub stores: ObjectStores,
}

/// What a recipe reports while it runs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RecipeEvent {
    /// A dataset was validated.
    Validated {
        /// `training` or `validation`.
        role: &'static str,
        /// What the validator found.
        report: Box<ValidationReport>,
    },
    /// The job was submitted, or an earlier run's job re-attached.
    Submitted {
        /// The job.
        job: JobId,
        /// Whether it was an earlier run's.
        reattached: bool,
    },
    /// The job's state changed.
    State(JobState),
    /// A step's losses.
    Progress {
        /// The step.
        step: u64,
        /// Steps planned, when known.
        total_steps: Option<u64>,
        /// The newest point of the loss curve.
        point: LossPoint,
    },
    /// The version was registered.
    Registered {
        /// Its number.
        version: u64,
    },
}

/// What a recipe made.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeOutcome {
    /// The new version.
    pub version: VersionRecord,
    /// The saved model afterwards (active version, deployments).
    pub head: ModelHead,
    /// Whether the job was an earlier run's.
    pub reattached: bool,
}

impl Recipe {
    /// A recipe running `spec` into the saved model `model`.
    pub fn new(model: impl Into<String>, spec: JobSpec) -> Self {
        Self {
            model: model.into(),
            spec,
            policy: LifecyclePolicy::default().activating_new_versions(),
            poll: PollPolicy::default(),
            stores: ObjectStores::new(),
        }
    }

    /// Sets the saved model's policy.
    pub fn with_policy(mut self, policy: LifecyclePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how the job is polled.
    pub fn with_poll(mut self, poll: PollPolicy) -> Self {
        self.poll = poll;
        self
    }

    /// Sets the object stores for dataset URLs.
    pub fn with_object_stores(mut self, stores: ObjectStores) -> Self {
        self.stores = stores;
        self
    }

    /// Runs the recipe through `connection` (one of `providers`' kinds),
    /// registering the version with `lifecycle`, reporting to `on_event`.
    pub async fn run(
        &self,
        providers: &Providers,
        connection: &Connection,
        lifecycle: &Lifecycle,
        mut on_event: impl FnMut(RecipeEvent) + Send,
    ) -> Result<RecipeOutcome> {
        let provider = providers.connect(connection).await?;
        let datasets = self.validate(&*provider, &mut on_event).await?;
        let mut spec = self.spec.clone();
        provider.validate(&spec).await?;
        let fingerprint = self.fingerprint(connection, &datasets);
        spec.metadata.insert(RECIPE_LABEL.to_owned(), fingerprint.clone());

        let registry = lifecycle.registry();
        if let Err(e) = registry.head(&self.model).await {
            if !matches!(e, Error::NotFound { .. }) {
                return Err(e);
            }
            lifecycle.create_model(&self.model, self.policy.clone()).await?;
        }
        let (job, reattached, submitted_at) =
            self.submit_once(&*provider, connection, &spec, &fingerprint, lifecycle).await?;
        on_event(RecipeEvent::Submitted { job: job.id.clone(), reattached });

        let done = self.follow(&*provider, &job.id, &mut on_event).await?;
        let finish = |registry: &crate::Registry| {
            let model = self.model.clone();
            let fingerprint = fingerprint.clone();
            let registry = registry.clone();
            async move {
                registry
                    .update(&model, |h| {
                        h.pending_jobs.retain(|p| p.recipe != fingerprint);
                        Ok(())
                    })
                    .await
            }
        };
        let model = match done.state {
            JobState::Succeeded { model } => *model,
            other => {
                finish(registry).await?;
                let reason = match &other {
                    JobState::Failed { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                return Err(Error::Provider {
                    status: None,
                    code: Some(other.name().to_owned()),
                    message: format!("job {} ended {}: {reason}", job.id, other.name()),
                    param: None,
                });
            }
        };

        // Registered once: a rerun that finds the job's version done reuses it.
        let existing = registry.versions(&self.model).await?.into_iter().find(|v| {
            v.provenance
                .as_ref()
                .is_some_and(|p| p.job_id == job.id && p.connection == connection.name)
        });
        let version = match existing {
            Some(v) => v,
            None => {
                let provenance = Provenance {
                    connection: connection.name.clone(),
                    provider: provider.name().to_owned(),
                    job_id: job.id.clone(),
                    base_model: self.spec.base_model.clone(),
                    hyperparameters: self.spec.hyperparameters,
                    extras: self.spec.extras.clone(),
                    resolved_hyperparameters: model
                        .metadata
                        .get(finetune_core::HYPERPARAMETERS_KEY)
                        .and_then(|h| serde_json::from_str(h).ok()),
                    trained_tokens: model
                        .metadata
                        .get(finetune_core::TRAINED_TOKENS_KEY)
                        .and_then(|t| t.parse().ok()),
                    datasets,
                    submitted_at,
                    finished_at: Utc::now(),
                };
                lifecycle.register_version(&self.model, NewVersion::made(model, provenance)).await?
            }
        };
        on_event(RecipeEvent::Registered { version: version.version });
        let head = finish(registry).await?;
        Ok(RecipeOutcome { version, head, reattached })
    }

    /// Validates the datasets; an invalid one is refused after its report
    /// went to `on_event`.
    async fn validate(
        &self,
        provider: &dyn FineTuneProvider,
        on_event: &mut (impl FnMut(RecipeEvent) + Send),
    ) -> Result<Vec<DatasetRecord>> {
        let min_rows = provider.capabilities().min_training_rows.unwrap_or(1);
        // The provider's own rules and tokenizer, so the dataset is refused
        // here, before any upload, for what the provider would refuse.
        let rules = provider.data_rules(&self.spec);
        let counter: Arc<dyn TokenCounter> = match provider.token_counter(&self.spec).await? {
            Some(counter) => counter,
            None => Arc::new(CharsPerToken(4.0)),
        };
        let mut records = Vec::new();
        let mut index = None;
        for (role, source) in
            [("training", Some(&self.spec.training)), ("validation", self.spec.validation.as_ref())]
        {
            let Some(source) = source else { continue };
            let dataset = finetune_data::localize(source, &self.stores).await?;
            let options = ValidationOptions {
                min_rows: if role == "training" { min_rows } else { 1 },
                ..ValidationOptions::default()
            };
            let training_index = index.take();
            let rules = rules.clone();
            let counter = Arc::clone(&counter);
            let dataset_role =
                if role == "training" { DatasetRole::Training } else { DatasetRole::Validation };
            let (report, stats, taken, sha256) = tokio::task::spawn_blocking(move || {
                let mut validator =
                    Validator::new(dataset.name(), options).with_token_counter(Box::new(counter));
                if let Some(rules) = rules {
                    validator = validator.with_rules(rules, dataset_role);
                }
                if let Some(training) = training_index {
                    validator = validator.against_training(training);
                }
                let mut validator = finetune_data::validate_with(&dataset, validator)?;
                let taken = (role == "training").then(|| validator.take_index());
                let (report, stats) = validator.finish();
                let sha256 = sha256_of(dataset.path())?;
                Ok::<_, Error>((report, stats, taken, sha256))
            })
            .await
            .map_err(|e| Error::other("validating the dataset", e))??;
            index = taken;
            let valid = report.ensure_valid(role);
            on_event(RecipeEvent::Validated { role, report: Box::new(report) });
            valid?;
            records.push(DatasetRecord {
                role: role.to_owned(),
                location: source.location.to_string(),
                sha256,
                rows: stats.rows,
                tokens: stats.tokens.map(|t| t.per_row.total),
            });
        }
        Ok(records)
    }

    /// What identifies this run: the same recipe through the same
    /// connection on the same data is the same job.
    fn fingerprint(&self, connection: &Connection, datasets: &[DatasetRecord]) -> String {
        let what = serde_json::json!({
            "connection": connection.name,
            "model": self.model,
            "base_model": self.spec.base_model,
            "hyperparameters": self.spec.hyperparameters,
            "extras": self.spec.extras,
            "seed": self.spec.seed,
            "suffix": self.spec.suffix,
            "datasets": datasets.iter().map(|d| (&d.role, &d.sha256)).collect::<Vec<_>>(),
        });
        let digest = sha2::Sha256::digest(what.to_string().as_bytes());
        digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
    }

    /// Submits the job, or finds the one an earlier run of this recipe
    /// submitted.
    async fn submit_once(
        &self,
        provider: &dyn FineTuneProvider,
        connection: &Connection,
        spec: &JobSpec,
        fingerprint: &str,
        lifecycle: &Lifecycle,
    ) -> Result<(Job, bool, chrono::DateTime<Utc>)> {
        let registry = lifecycle.registry();
        let head = registry.head(&self.model).await?;
        if let Some(pending) = head.pending_jobs.iter().find(|p| p.recipe == fingerprint) {
            let found = match &pending.job_id {
                Some(id) => Some(provider.job(id).await?),
                // The answer to the submit was lost: the job, if made,
                // carries the fingerprint.
                None => find_labelled(provider, fingerprint).await?,
            };
            if let Some(job) = found {
                if pending.job_id.is_none() {
                    record_job(registry, &self.model, fingerprint, &job.id).await?;
                }
                return Ok((job, true, pending.submitted_at));
            }
        }
        let submitted_at = Utc::now();
        let pending = PendingJob {
            recipe: fingerprint.to_owned(),
            connection: connection.name.clone(),
            job_id: None,
            submitted_at,
        };
        registry
            .update(&self.model, |h| {
                if !h.pending_jobs.iter().any(|p| p.recipe == pending.recipe) {
                    h.pending_jobs.push(pending.clone());
                }
                Ok(())
            })
            .await?;
        let job = provider.submit(spec).await?;
        record_job(registry, &self.model, fingerprint, &job.id).await?;
        Ok((job, false, submitted_at))
    }

    /// Polls the job to its end, reporting state changes and new losses.
    async fn follow(
        &self,
        provider: &dyn FineTuneProvider,
        id: &JobId,
        on_event: &mut (impl FnMut(RecipeEvent) + Send),
    ) -> Result<Job> {
        let started = tokio::time::Instant::now();
        let mut interval = self.poll.initial_interval;
        let mut last: Option<JobState> = None;
        let mut last_step = None;
        let mut errors = 0;
        loop {
            match provider.job(id).await {
                Ok(job) => {
                    errors = 0;
                    if last.as_ref().map(JobState::name) != Some(job.state.name()) {
                        on_event(RecipeEvent::State(job.state.clone()));
                        interval = self.poll.initial_interval;
                    }
                    if let JobState::Running { progress } = &job.state
                        && progress.step.is_some()
                        && progress.step != last_step
                    {
                        last_step = progress.step;
                        let curve = provider.metrics(id).await?;
                        if let Some(point) = curve.points().last() {
                            on_event(RecipeEvent::Progress {
                                step: point.step,
                                total_steps: progress.total_steps,
                                point: *point,
                            });
                        }
                    }
                    if job.state.is_terminal() {
                        return Ok(job);
                    }
                    last = Some(job.state);
                }
                Err(e) if e.is_retryable() && errors < self.poll.max_consecutive_errors => {
                    errors += 1;
                    tracing::warn!(job = %id, error = %e, "polling failed, will retry");
                }
                Err(e) => return Err(e),
            }
            if let Some(timeout) = self.poll.timeout
                && started.elapsed() >= timeout
            {
                return Err(Error::TimedOut { after: started.elapsed() });
            }
            tokio::time::sleep(interval).await;
            interval = interval
                .mul_f64(self.poll.multiplier.max(1.0))
                .min(self.poll.max_interval)
                .max(Duration::from_millis(1));
        }
    }
}

async fn record_job(
    registry: &crate::Registry,
    model: &str,
    fingerprint: &str,
    id: &JobId,
) -> Result<ModelHead> {
    registry
        .update(model, |h| {
            for p in h.pending_jobs.iter_mut().filter(|p| p.recipe == fingerprint) {
                p.job_id = Some(id.clone());
            }
            Ok(())
        })
        .await
}

/// The provider's job labelled with `fingerprint`, among its newest 100.
async fn find_labelled(provider: &dyn FineTuneProvider, fingerprint: &str) -> Result<Option<Job>> {
    let page = provider.list_jobs(&ListJobs { limit: Some(100), after: None }).await?;
    Ok(page
        .items
        .into_iter()
        .find(|j| j.metadata.get(RECIPE_LABEL).map(String::as_str) == Some(fingerprint)))
}

fn sha256_of(path: &std::path::Path) -> Result<String> {
    finetune_data::sha256_file(path).map(|(hex, _)| hex).map_err(|e| Error::io(path, e))
}
