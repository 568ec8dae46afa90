//! AWS Bedrock model customization (feature `bedrock`).
//!
//! * The control plane (`CreateModelCustomizationJob`, get, list, stop, the
//!   custom model) goes through the official `aws-sdk-bedrock`, and the
//!   fine-tuned model answers through `aws-sdk-bedrockruntime`'s Converse.
//! * Region and credentials come from the standard aws-config chain
//!   (environment, profiles and SSO, web identity, ECS and EC2 roles);
//!   endpoints can be overridden through `AWS_ENDPOINT_URL`,
//!   `AWS_ENDPOINT_URL_BEDROCK`, `AWS_ENDPOINT_URL_BEDROCK_RUNTIME` and
//!   `AWS_ENDPOINT_URL_S3`, or in [`BedrockConfig`].
//! * **S3 goes through `object_store`, not `aws-sdk-s3`**: the workspace's
//!   dataset readers already use `object_store` for `s3://` URLs, so the
//!   provider reuses the same streaming, multipart, retrying client rather
//!   than compiling a second S3 stack. It is signed with the same
//!   aws-config credentials the SDK uses (bridged, and cached until shortly
//!   before they expire).
//!
//! Submitting a job validates the base model's hyperparameter ranges
//! ([`BaseModelRules`]) before reading any data, converts the datasets to
//! the JSONL the base model expects (prompt/completion, or
//! `bedrock-conversation-2024`), uploads each under a key named by its
//! content hash (an identical file is never sent twice; large files go up
//! in parts) and creates the job with a `clientRequestToken`, so the SDK's
//! retries never make a second job; when the SDK gives up, the job is looked
//! up by its name before an error is returned.
//!
//! The loss curve comes from the job's output prefix:
//! `step_wise_training_metrics.csv` (`step_number, epoch_number,
//! training_loss, perplexity`) and `validation_metrics.csv`
//! (`validation_loss`). Custom models must be deployed (an on-demand custom
//! model deployment or provisioned throughput, see `finetune-deploy`)
//! before their [`BedrockProvider::chat_model`] can answer.

mod builder;
mod client;
mod error;
mod metrics;
mod models;
mod runtime;
mod s3;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_bedrock::types::ModelCustomizationJobStatus;
use finetune_core::{
    Capabilities, Error, FineTuneProvider, FineTunedModel, Job, JobId, JobSpec, JobState,
    LearningRateKind, ListJobs, Location, LossCurve, ModelArtifacts, Page, Result,
};
use finetune_data::ObjectStores;

pub use self::builder::BedrockConfig;
pub use self::client::CustomModel;
pub use self::error::aws_error;
pub use self::metrics::merge_metrics_csv;
pub use self::models::{BaseModelRules, BedrockDataFormat, Range};
pub use self::runtime::ConverseChat;
use self::s3::Bucket;
pub use self::s3::{S3Uri, UploadedObject};
use crate::REQUEST_ID_LABEL;
use crate::time::from_aws;

/// AWS Bedrock fine-tuning.
pub struct BedrockProvider {
    config: BedrockConfig,
    control: aws_sdk_bedrock::Client,
    runtime: aws_sdk_bedrockruntime::Client,
    bucket: Option<Bucket>,
    sdk: SdkConfig,
    s3_endpoint: Option<String>,
    stores: ObjectStores,
    uploads: AtomicU64,
    parts: AtomicU64,
}

impl fmt::Debug for BedrockProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockProvider").field("config", &self.config).finish_non_exhaustive()
    }
}

impl BedrockProvider {
    /// Connects: loads the aws-config chain (unless the configuration
    /// carries its own) and builds the clients. Nothing is called yet.
    pub async fn new(config: BedrockConfig) -> Result<Self> {
        let sdk = match &config.sdk_config {
            Some(sdk) => sdk.clone(),
            None => {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if let Some(region) = &config.region {
                    loader = loader.region(Region::new(region.clone()));
                }
                loader.load().await
            }
        };
        let region = config
            .region
            .clone()
            .or_else(|| sdk.region().map(ToString::to_string))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let retry = aws_config::retry::RetryConfig::standard()
            .with_max_attempts(config.max_attempts)
            .with_initial_backoff(config.initial_backoff)
            .with_max_backoff(Duration::from_secs(20));
        let mut control = aws_sdk_bedrock::config::Builder::from(&sdk)
            .region(Region::new(region.clone()))
            .retry_config(retry.clone());
        if let Some(url) = &config.endpoint_url {
            control = control.endpoint_url(url);
        }
        let mut runtime = aws_sdk_bedrockruntime::config::Builder::from(&sdk)
            .region(Region::new(region.clone()))
            .retry_config(retry);
        if let Some(url) = config.runtime_endpoint_url.as_ref().or(config.endpoint_url.as_ref()) {
            runtime = runtime.endpoint_url(url);
        }
        let s3_endpoint = config
            .s3_endpoint_url
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok().filter(|v| !v.is_empty()))
            .or_else(|| sdk.endpoint_url().map(str::to_owned));
        let bucket = match &config.s3_prefix {
            Some(uri) => Some(Bucket::new(
                uri.clone(),
                &region,
                s3_endpoint.as_deref(),
                sdk.credentials_provider(),
            )?),
            None => None,
        };
        let mut stores = ObjectStores::new();
        if let Some(b) = &bucket {
            stores = stores.register(format!("s3://{}/", b.uri.bucket), b.store.clone());
        }
        Ok(Self {
            control: aws_sdk_bedrock::Client::from_conf(control.build()),
            runtime: aws_sdk_bedrockruntime::Client::from_conf(runtime.build()),
            bucket,
            sdk,
            s3_endpoint,
            stores,
            uploads: AtomicU64::new(0),
            parts: AtomicU64::new(0),
            config,
        })
    }

    /// The control-plane client, for what this crate does not wrap
    /// (deployments, provisioned throughput, …).
    pub fn control_client(&self) -> &aws_sdk_bedrock::Client {
        &self.control
    }

    /// The runtime client.
    pub fn runtime_client(&self) -> &aws_sdk_bedrockruntime::Client {
        &self.runtime
    }

    /// Objects uploaded so far (reused ones not counted).
    pub fn uploads(&self) -> u64 {
        self.uploads.load(Ordering::Relaxed)
    }

    /// Parts sent so far, over all uploads.
    pub fn parts_sent(&self) -> u64 {
        self.parts.load(Ordering::Relaxed)
    }

    fn bucket(&self) -> Result<&Bucket> {
        self.bucket.as_ref().ok_or_else(|| {
            Error::invalid_at(
                Location::column("s3_prefix"),
                "Bedrock needs an s3://bucket/prefix for the data and the outputs",
            )
        })
    }

    fn bucket_for(&self, uri: &S3Uri) -> Result<Bucket> {
        match &self.bucket {
            Some(b) if b.uri.bucket == uri.bucket => {
                Ok(Bucket { store: b.store.clone(), uri: uri.clone() })
            }
            _ => Bucket::new(
                uri.clone(),
                self.sdk.region().map(|r| r.as_ref()).unwrap_or("us-east-1"),
                self.s3_endpoint.as_deref(),
                self.sdk.credentials_provider(),
            ),
        }
    }

    /// The rules of the spec's base model.
    pub fn rules_for(&self, base_model: &str) -> Result<&BaseModelRules> {
        BaseModelRules::find(&self.config.rules, base_model).ok_or_else(|| {
            let known: Vec<&str> = self.config.rules.iter().map(|(p, _)| p.as_str()).collect();
            Error::invalid_at(
                Location::column("base_model"),
                format!(
                    "no fine-tuning rules for `{base_model}`; known base models: {} (add others \
                     with BedrockConfig::with_model_rules)",
                    known.join(", ")
                ),
            )
        })
    }

    /// Checks everything that can be checked without reading data or calling
    /// AWS; returns the `hyperParameters` to send.
    fn check_spec(&self, spec: &JobSpec) -> Result<Vec<(String, String)>> {
        spec.validate_common()?;
        let rules = self.rules_for(&spec.base_model)?;
        let hyper = rules.hyperparameters(spec)?;
        match self.config.role_arn.as_deref() {
            Some(arn) if arn.starts_with("arn:") && arn.contains(":role/") => {}
            Some(arn) => {
                return Err(Error::invalid_at(
                    Location::column("role_arn"),
                    format!("`{arn}` is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"),
                ));
            }
            None => {
                return Err(Error::invalid_at(
                    Location::column("role_arn"),
                    "Bedrock needs the ARN of an IAM role it can assume to read the data",
                ));
            }
        }
        self.bucket()?;
        if let Some(suffix) = &spec.suffix {
            let ok = !suffix.is_empty()
                && suffix.len() <= 36
                && suffix.starts_with(|c: char| c.is_ascii_alphanumeric())
                && suffix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !suffix.contains("--")
                && !suffix.contains("__");
            if !ok {
                return Err(Error::invalid_at(
                    Location::column("suffix"),
                    "Bedrock model names take at most 36 characters here: letters, digits and \
                     single - or _ between them",
                ));
            }
        }
        if spec.metadata.len() > 40 {
            return Err(Error::invalid_at(
                Location::column("metadata"),
                format!("at most 40 labels, got {}", spec.metadata.len()),
            ));
        }
        for (k, v) in &spec.metadata {
            if k.is_empty()
                || k.chars().count() > 128
                || v.chars().count() > 256
                || k == REQUEST_ID_LABEL
            {
                return Err(Error::invalid_at(
                    Location::column(format!("metadata.{k}")),
                    format!(
                        "tag keys take 1 to 128 characters, values 256, and `{REQUEST_ID_LABEL}` is reserved"
                    ),
                ));
            }
        }
        for (field, source) in std::iter::once(("training", &spec.training))
            .chain(spec.validation.iter().map(|v| ("validation", v)))
        {
            source.resolved_format()?;
            if let finetune_core::DatasetLocation::Path(p) = &source.location
                && !p.is_file()
            {
                return Err(Error::invalid_at(
                    Location::file(p.display().to_string()),
                    format!("the {field} dataset does not exist"),
                ));
            }
        }
        Ok(hyper)
    }
}

impl BedrockProvider {
    /// The data rules of `base_model`: the built-in table's, with whether a
    /// validation set is taken from this provider's model rules (which an
    /// application may have replaced).
    fn data_rules_for(&self, base_model: &str) -> finetune_core::DataRules {
        let mut rules =
            finetune_core::DataRules::builtin(&finetune_core::ProviderKind::Bedrock, base_model);
        if let Ok(model) = self.rules_for(base_model) {
            rules.validation &= model.validation;
        }
        rules
    }
}

#[async_trait]
impl FineTuneProvider for BedrockProvider {
    fn name(&self) -> &str {
        "bedrock"
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps =
            Capabilities::full(LearningRateKind::Absolute).with_requires_deployment(true);
        caps.min_training_rows = Some(1);
        caps
    }

    async fn validate(&self, spec: &JobSpec) -> Result<()> {
        self.check_spec(spec).map(|_| ())
    }

    fn data_rules(&self, spec: &JobSpec) -> Option<finetune_core::DataRules> {
        Some(self.data_rules_for(&spec.base_model))
    }

    async fn token_counter(
        &self,
        spec: &JobSpec,
    ) -> Result<Option<std::sync::Arc<dyn finetune_core::TokenCounter>>> {
        Ok(finetune_data::counter_for(&self.data_rules_for(&spec.base_model)))
    }

    async fn submit(&self, spec: &JobSpec) -> Result<Job> {
        // Every rule is checked before any data is read or sent.
        self.check_spec(spec)?;
        let format = self.rules_for(&spec.base_model)?.format;
        let rules = self.data_rules_for(&spec.base_model);
        let training = self.upload_under(&spec.training, "training", format, rules.clone()).await?;
        let validation = match &spec.validation {
            Some(v) => Some(self.upload_under(v, "validation", format, rules).await?),
            None => None,
        };
        let arn = self
            .create_job(spec, &training.uri, validation.as_ref().map(|v| v.uri.as_str()))
            .await?;
        tracing::info!(job = %arn, "Bedrock customization job created");
        let mut job = self.job(&JobId::new(arn)).await?;
        job.metadata = spec.metadata.clone();
        Ok(job)
    }

    async fn job(&self, id: &JobId) -> Result<Job> {
        let out = self.get(id).await?;
        self.to_job(out).await
    }

    async fn metrics(&self, id: &JobId) -> Result<LossCurve> {
        let out = self.get(id).await?;
        self.curve_of(&out).await
    }

    async fn cancel(&self, id: &JobId) -> Result<JobState> {
        self.control
            .stop_model_customization_job()
            .job_identifier(id.as_str())
            .send()
            .await
            .map_err(|e| aws_error(&format!("job {id}"), e))?;
        Ok(self.job(id).await?.state)
    }

    async fn list_jobs(&self, query: &ListJobs) -> Result<Page<Job>> {
        let out = self
            .control
            .list_model_customization_jobs()
            .max_results(query.limit.unwrap_or(100).clamp(1, 1000) as i32)
            .set_next_token(query.after.clone())
            .sort_by(aws_sdk_bedrock::types::SortJobsBy::CreationTime)
            .sort_order(aws_sdk_bedrock::types::SortOrder::Descending)
            .send()
            .await
            .map_err(|e| aws_error("listing customization jobs", e))?;
        let items = out
            .model_customization_job_summaries()
            .iter()
            .map(|s| Job {
                id: JobId::new(s.job_arn()),
                provider: "bedrock".to_owned(),
                base_model: models::model_id_of(s.base_model_arn()).to_owned(),
                state: match s.status() {
                    // Listings carry no curve: `job` has the full model.
                    ModelCustomizationJobStatus::Completed => JobState::Succeeded {
                        model: Box::new(FineTunedModel {
                            provider: "bedrock".to_owned(),
                            model_id: s.custom_model_arn().unwrap_or_default().to_owned(),
                            base_model: models::model_id_of(s.base_model_arn()).to_owned(),
                            job_id: Some(JobId::new(s.job_arn())),
                            created_at: s
                                .end_time()
                                .map(from_aws)
                                .unwrap_or_else(|| from_aws(s.creation_time())),
                            requires_deployment: true,
                            artifacts: ModelArtifacts::Remote {
                                id: s.custom_model_arn().unwrap_or_default().to_owned(),
                            },
                            loss_curve: LossCurve::new(),
                            metadata: BTreeMap::new(),
                        }),
                    },
                    other => Self::state_of(Some(other), s.status_details(), None),
                },
                created_at: from_aws(s.creation_time()),
                metadata: BTreeMap::new(),
            })
            .collect();
        Ok(Page { items, next: out.next_token().map(str::to_owned) })
    }
}

/// Connects [`finetune_core::ConnectionSettings::Bedrock`] connections.
#[derive(Debug, Clone, Default)]
pub struct BedrockFactory {
    sdk_config: Option<SdkConfig>,
}

impl BedrockFactory {
    /// Uses this AWS configuration for connections that carry no static
    /// key pair, instead of loading the chain for each.
    pub fn with_sdk_config(mut self, sdk: SdkConfig) -> Self {
        self.sdk_config = Some(sdk);
        self
    }

    async fn provider(
        &self,
        connection: &finetune_core::Connection,
    ) -> Result<std::sync::Arc<BedrockProvider>> {
        let mut config = BedrockConfig::from_connection(connection)?;
        if config.sdk_config.is_none()
            && let Some(sdk) = &self.sdk_config
        {
            config = config.with_sdk_config(sdk.clone());
        }
        Ok(std::sync::Arc::new(BedrockProvider::new(config).await?))
    }
}

#[async_trait]
impl finetune_core::ProviderFactory for BedrockFactory {
    fn kind(&self) -> finetune_core::ProviderKind {
        finetune_core::ProviderKind::Bedrock
    }

    async fn connect(
        &self,
        connection: finetune_core::EnabledConnection<'_>,
    ) -> Result<std::sync::Arc<dyn FineTuneProvider>> {
        Ok(self.provider(&connection).await?)
    }

    /// The model's on-demand deployment or provisioned throughput through
    /// Converse; a custom model without one is
    /// [`finetune_core::Error::NotDeployed`].
    async fn chat_model(
        &self,
        connection: &finetune_core::Connection,
        model: &FineTunedModel,
        deployment: Option<&str>,
    ) -> Result<std::sync::Arc<dyn finetune_core::ChatModel>> {
        let target = finetune_core::require_deployment(model, deployment)?;
        Ok(self.provider(connection).await?.chat_model(target))
    }
}
