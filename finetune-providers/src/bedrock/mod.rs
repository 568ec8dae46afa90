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
//! before [`BedrockProvider::converse`] can call them.

mod models;
mod s3;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_bedrock::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrock::types::{
    CustomizationType, JobStatusDetails, ModelCustomizationJobStatus, OutputDataConfig, Tag,
    TrainingDataConfig, ValidationDataConfig, Validator,
};
use chrono::{DateTime, Utc};
use finetune_core::{
    Capabilities, Connection, ConnectionSettings, Error, FineTuneProvider, FineTunedModel, Job,
    JobId, JobSpec, JobState, LearningRateKind, ListJobs, Location, LossCurve, LossPoint,
    ModelArtifacts, Page, Progress, Result,
};
use finetune_data::ObjectStores;

pub use models::{BaseModelRules, BedrockDataFormat, Range};
pub use s3::S3Uri;

use crate::chat::{ChatCompletion, ChatMessage};
use s3::Bucket;

/// The tag every job this crate creates carries, with its request id.
pub const REQUEST_TAG: &str = "finetune-request";

/// How a [`BedrockProvider`] reaches AWS.
#[derive(Clone)]
pub struct BedrockConfig {
    /// The IAM role Bedrock assumes to read the data and write the outputs.
    pub role_arn: Option<String>,
    /// `s3://bucket/prefix` for uploaded data (`data/`) and job outputs
    /// (`output/`).
    pub s3_prefix: Option<S3Uri>,
    /// The region; the chain's when absent.
    pub region: Option<String>,
    /// The Bedrock control-plane endpoint; the chain's when absent.
    pub endpoint_url: Option<String>,
    /// The bedrock-runtime endpoint; the chain's when absent.
    pub runtime_endpoint_url: Option<String>,
    /// The S3 endpoint; `AWS_ENDPOINT_URL_S3`, then the chain's
    /// `AWS_ENDPOINT_URL`, when absent.
    pub s3_endpoint_url: Option<String>,
    /// Files larger than this go up in parts of this size (at least 5 MiB,
    /// S3's smallest part).
    pub part_size: usize,
    /// Attempts per API call, retries included (the SDK's standard mode:
    /// exponential backoff with jitter on throttling, 5xx and timeouts).
    pub max_attempts: u32,
    /// The first retry's backoff.
    pub initial_backoff: Duration,
    /// Base models and what they accept; the built-in table by default.
    pub rules: Vec<(String, BaseModelRules)>,
    /// An explicit AWS configuration instead of the chain.
    pub sdk_config: Option<SdkConfig>,
}

impl fmt::Debug for BedrockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials stay inside the SDK configuration, which is not shown.
        f.debug_struct("BedrockConfig")
            .field("role_arn", &self.role_arn)
            .field("s3_prefix", &self.s3_prefix.as_ref().map(ToString::to_string))
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("runtime_endpoint_url", &self.runtime_endpoint_url)
            .field("s3_endpoint_url", &self.s3_endpoint_url)
            .field("part_size", &self.part_size)
            .field("max_attempts", &self.max_attempts)
            .field("sdk_config", &self.sdk_config.as_ref().map(|_| "<explicit>"))
            .finish_non_exhaustive()
    }
}

impl Default for BedrockConfig {
    fn default() -> Self {
        Self {
            role_arn: None,
            s3_prefix: None,
            region: None,
            endpoint_url: None,
            runtime_endpoint_url: None,
            s3_endpoint_url: None,
            part_size: 8 << 20,
            max_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            rules: BaseModelRules::builtin(),
            sdk_config: None,
        }
    }
}

impl BedrockConfig {
    /// A configuration with the role Bedrock assumes and the S3 prefix it
    /// reads from and writes to.
    pub fn new(role_arn: impl Into<String>, s3_prefix: &str) -> Result<Self> {
        Ok(Self {
            role_arn: Some(role_arn.into()),
            s3_prefix: Some(S3Uri::parse(s3_prefix)?),
            ..Self::default()
        })
    }

    /// From `BEDROCK_ROLE_ARN` and `BEDROCK_S3_PREFIX` (both optional here;
    /// submitting needs them). Region, credentials and endpoints come from
    /// the aws-config chain when the provider is built.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`BedrockConfig::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        Ok(Self {
            role_arn: get("BEDROCK_ROLE_ARN"),
            s3_prefix: get("BEDROCK_S3_PREFIX").as_deref().map(S3Uri::parse).transpose()?,
            ..Self::default()
        })
    }

    /// From a connection's Bedrock settings.
    pub fn from_connection(connection: &Connection) -> Result<Self> {
        match &connection.settings {
            ConnectionSettings::Bedrock { region, role_arn, s3_prefix, endpoint_url } => Ok(Self {
                role_arn: role_arn.clone(),
                s3_prefix: s3_prefix.as_deref().map(S3Uri::parse).transpose()?,
                region: region.clone(),
                endpoint_url: endpoint_url.clone(),
                ..Self::default()
            }),
            other => Err(Error::invalid(format!(
                "connection `{}` is for {}, not bedrock",
                connection.name,
                other.provider()
            ))),
        }
    }

    /// Uses this AWS configuration instead of loading the chain.
    pub fn with_sdk_config(mut self, sdk: SdkConfig) -> Self {
        self.sdk_config = Some(sdk);
        self
    }

    /// Sets the region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sets the Bedrock control-plane and runtime endpoint.
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Sets the bedrock-runtime endpoint alone.
    pub fn with_runtime_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.runtime_endpoint_url = Some(url.into());
        self
    }

    /// Sets the S3 endpoint.
    pub fn with_s3_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.s3_endpoint_url = Some(url.into());
        self
    }

    /// Sets the multipart part size (at least 5 MiB).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(5 << 20);
        self
    }

    /// Sets the attempts per call and the first backoff.
    pub fn with_retries(mut self, max_attempts: u32, initial_backoff: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.initial_backoff = initial_backoff;
        self
    }

    /// Adds (or replaces) the rules for base models whose id starts with
    /// `prefix`.
    pub fn with_model_rules(mut self, prefix: impl Into<String>, rules: BaseModelRules) -> Self {
        let prefix = prefix.into();
        self.rules.retain(|(p, _)| *p != prefix);
        self.rules.push((prefix, rules));
        self
    }
}

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

/// What [`BedrockProvider::upload`] did with one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedObject {
    /// `s3://bucket/key`.
    pub uri: String,
    /// Its size.
    pub bytes: u64,
    /// Rows written.
    pub rows: u64,
    /// Parts sent: 0 when an identical object was already there, 1 for a
    /// single PUT, more for a multipart upload.
    pub parts: usize,
}

/// Maps an AWS SDK error (Bedrock, bedrock-runtime: they share the smithy
/// error types) to the core error: throttling is `RateLimited`, missing
/// resources `NotFound`, credential problems `Authentication`, server
/// errors and transport failures `Transient`, the rest `Provider` with the
/// service's error code. `what` names the operation.
pub fn aws_error<E, R>(what: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().map(str::to_owned);
            let message = e.message().unwrap_or("no message").to_owned();
            match code.as_deref() {
                Some("ThrottlingException" | "TooManyRequestsException") => {
                    Error::RateLimited { retry_after: None, message }
                }
                Some("ResourceNotFoundException") => {
                    Error::NotFound { what: format!("{what}: {message}") }
                }
                Some("AccessDeniedException") => Error::PermissionDenied { message },
                Some(
                    "UnrecognizedClientException"
                    | "ExpiredTokenException"
                    | "InvalidSignatureException"
                    | "IncompleteSignature",
                ) => Error::Authentication { message },
                Some("InternalServerException" | "ServiceUnavailableException") => {
                    Error::Transient { message: format!("{what}: {message}") }
                }
                _ => Error::Provider {
                    status: None,
                    code,
                    message: format!("{what}: {message}"),
                    param: None,
                },
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Error::Transient {
                message: format!("{what}: {}", aws_sdk_bedrock::error::DisplayErrorContext(&err)),
            }
        }
        _ => Error::Other {
            message: format!("{what}: {}", aws_sdk_bedrock::error::DisplayErrorContext(&err)),
            source: None,
        },
    }
}

fn time(t: &aws_sdk_bedrock::primitives::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos()).unwrap_or_default()
}

/// The job id in output paths: the last segment of the job ARN.
fn job_short_id(job: &str) -> &str {
    job.rsplit('/').next().unwrap_or(job)
}

fn stamp_and_nonce() -> String {
    format!("{}-{:08x}", Utc::now().format("%Y%m%d%H%M%S"), fastrand::u32(..))
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
                || k == REQUEST_TAG
            {
                return Err(Error::invalid_at(
                    Location::column(format!("metadata.{k}")),
                    format!(
                        "tag keys take 1 to 128 characters, values 256, and `{REQUEST_TAG}` is reserved"
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

    /// Converts a dataset to the base model's format and uploads it under
    /// `data/<sha256>.jsonl`, unless the same object is there already.
    pub async fn upload(
        &self,
        source: &finetune_core::DatasetSource,
        role: &str,
        format: BedrockDataFormat,
    ) -> Result<UploadedObject> {
        let bucket = self.bucket()?;
        let prepared = crate::prepare::convert_for_upload(
            &self.stores,
            source,
            role,
            format.output_format(),
            1,
        )
        .await?;
        let key = bucket.uri.key(&format!("data/{}.jsonl", &prepared.sha256[..32]));
        let parts =
            bucket.upload(&prepared.path, &key, prepared.bytes, self.config.part_size).await?;
        if parts > 0 {
            self.uploads.fetch_add(1, Ordering::Relaxed);
            self.parts.fetch_add(parts as u64, Ordering::Relaxed);
        }
        tracing::debug!(role, key, parts, "dataset on S3");
        Ok(UploadedObject {
            uri: format!("s3://{}/{key}", bucket.uri.bucket),
            bytes: prepared.bytes,
            rows: prepared.rows,
            parts,
        })
    }

    /// Sends `CreateModelCustomizationJob` for data already on S3 and returns
    /// the job ARN. The request carries `request_id` as its
    /// `clientRequestToken`, so retries of it never make a second job; when
    /// the SDK gives up, the job is looked up by its name first.
    pub async fn create_job(
        &self,
        spec: &JobSpec,
        training_uri: &str,
        validation_uri: Option<&str>,
    ) -> Result<String> {
        let hyper = self.check_spec(spec)?;
        let bucket = self.bucket()?;
        let nonce = stamp_and_nonce();
        let job_name = format!("finetune-{nonce}");
        let token = format!("finetune{}", nonce.replace('-', ""));
        let model_name = format!("{}-{nonce}", spec.suffix.as_deref().unwrap_or("finetune"));
        let mut tags: Vec<Tag> = Vec::new();
        for (k, v) in spec.metadata.iter().chain([(&REQUEST_TAG.to_owned(), &token)]) {
            tags.push(
                Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .map_err(|e| Error::other("building a tag", e))?,
            );
        }
        let mut request = self
            .control
            .create_model_customization_job()
            .job_name(&job_name)
            .custom_model_name(&model_name)
            .role_arn(self.config.role_arn.clone().unwrap_or_default())
            .client_request_token(&token)
            .base_model_identifier(&spec.base_model)
            .customization_type(CustomizationType::FineTuning)
            .training_data_config(TrainingDataConfig::builder().s3_uri(training_uri).build())
            .output_data_config(
                OutputDataConfig::builder()
                    .s3_uri(bucket.uri.join("output"))
                    .build()
                    .map_err(|e| Error::other("building the output config", e))?,
            )
            .set_job_tags(Some(tags));
        if let Some(v) = validation_uri {
            request = request.validation_data_config(
                ValidationDataConfig::builder()
                    .validators(
                        Validator::builder()
                            .s3_uri(v)
                            .build()
                            .map_err(|e| Error::other("building the validator", e))?,
                    )
                    .build()
                    .map_err(|e| Error::other("building the validation config", e))?,
            );
        }
        for (k, v) in hyper {
            request = request.hyper_parameters(k, v);
        }
        match request.send().await {
            Ok(out) => Ok(out.job_arn().to_owned()),
            Err(e) => {
                let err = aws_error("creating the customization job", e);
                if !err.is_retryable() {
                    return Err(err);
                }
                // The create may have landed with its answer lost: a job of
                // this name with our token is ours.
                match self
                    .control
                    .get_model_customization_job()
                    .job_identifier(&job_name)
                    .send()
                    .await
                {
                    Ok(found) if found.client_request_token() == Some(token.as_str()) => {
                        tracing::warn!(
                            job = found.job_arn(),
                            "the create's answer was lost; found its job"
                        );
                        Ok(found.job_arn().to_owned())
                    }
                    _ => Err(err),
                }
            }
        }
    }

    async fn get(
        &self,
        id: &JobId,
    ) -> Result<
        aws_sdk_bedrock::operation::get_model_customization_job::GetModelCustomizationJobOutput,
    > {
        self.control
            .get_model_customization_job()
            .job_identifier(id.as_str())
            .send()
            .await
            .map_err(|e| aws_error(&format!("job {id}"), e))
    }

    fn state_of(
        status: Option<&ModelCustomizationJobStatus>,
        details: Option<&aws_sdk_bedrock::types::StatusDetails>,
        failure: Option<&str>,
    ) -> JobState {
        let in_progress =
            |s: Option<&JobStatusDetails>| matches!(s, Some(JobStatusDetails::InProgress));
        match status {
            Some(ModelCustomizationJobStatus::InProgress) => {
                let validating = details.is_some_and(|d| {
                    in_progress(d.validation_details().and_then(|v| v.status()))
                        || in_progress(d.data_processing_details().and_then(|v| v.status()))
                });
                if validating {
                    JobState::Validating
                } else {
                    JobState::Running { progress: Progress::default() }
                }
            }
            Some(ModelCustomizationJobStatus::Failed) => JobState::Failed {
                reason: failure.unwrap_or("the job failed without a message").to_owned(),
                code: None,
            },
            Some(ModelCustomizationJobStatus::Stopping) => JobState::Cancelling,
            Some(ModelCustomizationJobStatus::Stopped) => JobState::Cancelled,
            Some(ModelCustomizationJobStatus::Completed) => {
                JobState::Unknown { name: "Completed".into() }
            }
            Some(other) => JobState::Unknown { name: other.as_str().to_owned() },
            None => JobState::Queued,
        }
    }

    async fn to_job(
        &self,
        out: aws_sdk_bedrock::operation::get_model_customization_job::GetModelCustomizationJobOutput,
    ) -> Result<Job> {
        let base_model = models::model_id_of(out.base_model_arn()).to_owned();
        let id = JobId::new(out.job_arn());
        let mut state = Self::state_of(out.status(), out.status_details(), out.failure_message());
        if matches!(out.status(), Some(ModelCustomizationJobStatus::Completed)) {
            // The job is done whatever S3 says: a curve that cannot be read
            // now falls back to the job's final figures (`metrics` reports
            // the error).
            let curve = match self.curve_of(&out).await {
                Ok(curve) => curve,
                Err(e) => {
                    tracing::warn!(job = out.job_arn(), error = %e, "the metrics CSVs could not be read");
                    final_figures(&out)
                }
            };
            let model_arn = out.output_model_arn().unwrap_or_default().to_owned();
            let mut metadata = BTreeMap::new();
            match self.custom_model(&model_arn).await {
                Ok(details) => {
                    if let Some(status) = details.status {
                        metadata.insert("custom_model_status".to_owned(), status);
                    }
                }
                Err(e) => tracing::warn!(model = model_arn, error = %e, "custom model details"),
            }
            metadata.insert("custom_model_name".to_owned(), out.output_model_name().to_owned());
            metadata.insert("job_name".to_owned(), out.job_name().to_owned());
            if let Some(o) = out.output_data_config() {
                metadata.insert("output_s3_uri".to_owned(), o.s3_uri().to_owned());
            }
            metadata.insert(
                "deployment".to_owned(),
                "required: create a custom model deployment or provisioned throughput for it \
                 before calling it"
                    .to_owned(),
            );
            state = JobState::Succeeded {
                model: Box::new(FineTunedModel {
                    provider: "bedrock".to_owned(),
                    model_id: model_arn.clone(),
                    base_model: base_model.clone(),
                    job_id: Some(id.clone()),
                    created_at: out
                        .end_time()
                        .map(time)
                        .unwrap_or_else(|| time(out.creation_time())),
                    requires_deployment: true,
                    artifacts: ModelArtifacts::Remote { id: model_arn },
                    loss_curve: curve,
                    metadata,
                }),
            };
        }
        Ok(Job {
            id,
            provider: "bedrock".to_owned(),
            base_model,
            state,
            created_at: time(out.creation_time()),
            metadata: BTreeMap::new(),
        })
    }

    /// The loss curve from the job's metrics CSVs on S3, or from the job's
    /// final figures when the CSVs are not there.
    async fn curve_of(
        &self,
        out: &aws_sdk_bedrock::operation::get_model_customization_job::GetModelCustomizationJobOutput,
    ) -> Result<LossCurve> {
        let mut curve = LossCurve::new();
        if let Some(output) = out.output_data_config() {
            let uri = S3Uri::parse(output.s3_uri())?;
            let bucket = self.bucket_for(&uri)?;
            let folder =
                uri.key(&format!("model-customization-job-{}/", job_short_id(out.job_arn())));
            let keys = bucket.keys(&folder).await?;
            for key in &keys {
                let validation = if key.ends_with("step_wise_training_metrics.csv") {
                    false
                } else if key.ends_with("validation_metrics.csv") {
                    true
                } else {
                    continue;
                };
                let bytes = bucket.get(key).await?;
                merge_metrics_csv(
                    &mut curve,
                    &format!("s3://{}/{key}", uri.bucket),
                    &bytes,
                    validation,
                )?;
            }
        }
        if curve.is_empty() {
            curve = final_figures(out);
        }
        Ok(curve)
    }

    /// The custom model a completed job made (`GetCustomModel`).
    pub async fn custom_model(&self, model: &str) -> Result<CustomModel> {
        let out = self
            .control
            .get_custom_model()
            .model_identifier(model)
            .send()
            .await
            .map_err(|e| aws_error(&format!("custom model {model}"), e))?;
        Ok(CustomModel {
            arn: out.model_arn().to_owned(),
            name: out.model_name().to_owned(),
            base_model: models::model_id_of(out.base_model_arn().unwrap_or_default()).to_owned(),
            job_arn: out.job_arn().map(str::to_owned),
            status: out.model_status().map(|s| s.as_str().to_owned()),
            created_at: time(out.creation_time()),
            hyperparameters: out
                .hyper_parameters()
                .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        })
    }

    /// Asks the model (a deployment ARN, a provisioned throughput ARN or a
    /// foundation model id) through bedrock-runtime's Converse.
    pub async fn converse(
        &self,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: Option<u32>,
    ) -> Result<ChatCompletion> {
        use aws_sdk_bedrockruntime::operation::RequestId;
        use aws_sdk_bedrockruntime::types::{
            ContentBlock, ConversationRole, InferenceConfiguration, Message, SystemContentBlock,
        };
        let mut request = self.runtime.converse().model_id(model);
        for m in messages {
            let role = match m.role.as_str() {
                "system" => {
                    request = request.system(SystemContentBlock::Text(m.content.clone()));
                    continue;
                }
                "user" => ConversationRole::User,
                "assistant" => ConversationRole::Assistant,
                other => {
                    return Err(Error::invalid_at(
                        Location::column("messages.role"),
                        format!(
                            "Converse takes system, user and assistant messages, not `{other}`"
                        ),
                    ));
                }
            };
            request = request.messages(
                Message::builder()
                    .role(role)
                    .content(ContentBlock::Text(m.content.clone()))
                    .build()
                    .map_err(|e| Error::other("building a message", e))?,
            );
        }
        if let Some(n) = max_tokens {
            request = request.inference_config(
                InferenceConfiguration::builder()
                    .max_tokens(i32::try_from(n).unwrap_or(i32::MAX))
                    .build(),
            );
        }
        let out = request.send().await.map_err(|e| aws_error("converse", e))?;
        let content = match out.output() {
            Some(aws_sdk_bedrockruntime::types::ConverseOutput::Message(m)) => m
                .content()
                .iter()
                .filter_map(|b| b.as_text().ok().cloned())
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
        Ok(ChatCompletion {
            id: out.request_id().unwrap_or_default().to_owned(),
            model: model.to_owned(),
            content,
            finish_reason: Some(out.stop_reason().as_str().to_owned()),
        })
    }
}

/// The single point Bedrock reports in the job itself.
fn final_figures(
    out: &aws_sdk_bedrock::operation::get_model_customization_job::GetModelCustomizationJobOutput,
) -> LossCurve {
    let mut curve = LossCurve::new();
    if let Some(loss) = out.training_metrics().and_then(|m| m.training_loss()) {
        let mut point = LossPoint::train(0, f64::from(loss));
        point.validation_loss =
            out.validation_metrics().first().and_then(|v| v.validation_loss()).map(f64::from);
        curve.upsert(point);
    }
    curve
}

/// A custom model's details.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomModel {
    /// Its ARN, the id to deploy.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// The base model id.
    pub base_model: String,
    /// The job that made it.
    pub job_arn: Option<String>,
    /// `Active`, `Creating` or `Failed`, when Bedrock says.
    pub status: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// The hyperparameters it was trained with.
    pub hyperparameters: BTreeMap<String, String>,
}

/// Adds the rows of a Bedrock metrics CSV to `curve`: `step_number`,
/// `epoch_number` and `training_loss` (or `validation_loss`). A malformed
/// file is an error naming the file, line and column.
pub fn merge_metrics_csv(
    curve: &mut LossCurve,
    file: &str,
    content: &[u8],
    validation: bool,
) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(content);
    let headers = reader
        .headers()
        .map_err(|e| {
            Error::invalid_at(Location::file(file).with_line(1), format!("unreadable header: {e}"))
        })?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let loss_name = if validation { "validation_loss" } else { "training_loss" };
    let (Some(step_col), Some(loss_col)) = (col("step_number"), col(loss_name)) else {
        return Err(Error::invalid_at(
            Location::file(file).with_line(1),
            format!(
                "expected the columns step_number and {loss_name}, got {:?}",
                headers.iter().collect::<Vec<_>>()
            ),
        ));
    };
    let epoch_col = col("epoch_number");
    for (i, record) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let record = record
            .map_err(|e| Error::invalid_at(Location::file(file).with_line(line), e.to_string()))?;
        let cell = |c: usize, name: &str| -> Result<Option<f64>> {
            match record.get(c).unwrap_or("") {
                "" => Ok(None),
                text => text.parse::<f64>().map(Some).map_err(|_| {
                    Error::invalid_at(
                        Location::file(file).with_line(line).with_column(name),
                        format!("`{text}` is not a number"),
                    )
                }),
            }
        };
        let Some(step) = cell(step_col, "step_number")? else { continue };
        let Some(loss) = cell(loss_col, loss_name)? else { continue };
        if step < 0.0 || !loss.is_finite() {
            return Err(Error::invalid_at(
                Location::file(file).with_line(line),
                format!("step {step} with loss {loss} is out of range"),
            ));
        }
        let step = step as u64;
        let mut point = curve
            .points()
            .iter()
            .find(|p| p.step == step)
            .cloned()
            .unwrap_or(LossPoint { step, ..LossPoint::default() });
        if validation {
            point.validation_loss = Some(loss);
        } else {
            point.train_loss = Some(loss);
        }
        if let Some(c) = epoch_col
            && let Some(epoch) = cell(c, "epoch_number")?
        {
            point.epoch = Some(epoch);
        }
        curve.upsert(point);
    }
    Ok(())
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

    async fn submit(&self, spec: &JobSpec) -> Result<Job> {
        // Every rule is checked before any data is read or sent.
        self.check_spec(spec)?;
        let format = self.rules_for(&spec.base_model)?.format;
        let training = self.upload(&spec.training, "training", format).await?;
        let validation = match &spec.validation {
            Some(v) => Some(self.upload(v, "validation", format).await?),
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
                                .map(time)
                                .unwrap_or_else(|| time(s.creation_time())),
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
                created_at: time(s.creation_time()),
                metadata: BTreeMap::new(),
            })
            .collect();
        Ok(Page { items, next: out.next_token().map(str::to_owned) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_gives_the_config() {
        let settings = ConnectionSettings::Bedrock {
            region: Some("eu-central-1".into()),
            role_arn: Some("arn:aws:iam::1:role/r".into()),
            s3_prefix: Some("s3://bkt/pre".into()),
            endpoint_url: Some("https://vpce.example".into()),
        };
        let config =
            BedrockConfig::from_connection(&Connection::new("aws", settings)).expect("bedrock");
        assert_eq!(config.region.as_deref(), Some("eu-central-1"));
        assert_eq!(config.role_arn.as_deref(), Some("arn:aws:iam::1:role/r"));
        assert_eq!(config.s3_prefix.as_ref().map(|u| u.join("x")), Some("s3://bkt/pre/x".into()));
        assert_eq!(config.endpoint_url.as_deref(), Some("https://vpce.example"));
        let bad = ConnectionSettings::Bedrock {
            region: None,
            role_arn: None,
            s3_prefix: Some("https://not-s3".into()),
            endpoint_url: None,
        };
        assert!(BedrockConfig::from_connection(&Connection::new("aws", bad)).is_err());
    }

    #[test]
    fn the_environment_gives_role_and_prefix() {
        let vars = |name: &str| match name {
            "BEDROCK_ROLE_ARN" => Some("arn:aws:iam::1:role/r".to_owned()),
            "BEDROCK_S3_PREFIX" => Some("s3://bkt/ft".to_owned()),
            _ => None,
        };
        let config = BedrockConfig::from_lookup(vars).expect("valid");
        assert_eq!(config.role_arn.as_deref(), Some("arn:aws:iam::1:role/r"));
        assert_eq!(config.s3_prefix.map(|u| u.to_string()).as_deref(), Some("s3://bkt/ft"));
        let empty = BedrockConfig::from_lookup(|_| Some(" ".into())).expect("blank is unset");
        assert!(empty.role_arn.is_none() && empty.s3_prefix.is_none());
        let bad = |name: &str| (name == "BEDROCK_S3_PREFIX").then(|| "bkt/ft".to_owned());
        assert!(BedrockConfig::from_lookup(bad).is_err());
    }

    #[test]
    fn metrics_csvs_merge_into_one_curve() {
        let mut curve = LossCurve::new();
        let train = b"step_number,epoch_number,training_loss,perplexity\n0,0,2.5,12.1\n1,0,2.0,7.4\n2,1,1.5,4.5\n";
        let valid = b"step_number, epoch_number, validation_loss, perplexity\n2, 1, 1.8, 6.0\n";
        merge_metrics_csv(&mut curve, "t.csv", train, false).expect("training");
        merge_metrics_csv(&mut curve, "v.csv", valid, true).expect("validation");
        assert_eq!(curve.train_series(), vec![(0, 2.5), (1, 2.0), (2, 1.5)]);
        assert_eq!(curve.validation_series(), vec![(2, 1.8)]);
        assert_eq!(curve.points()[2].epoch, Some(1.0));
    }

    #[test]
    fn a_malformed_metrics_csv_names_file_line_and_column() {
        let mut curve = LossCurve::new();
        let bad = b"step_number,epoch_number,training_loss\n0,0,2.5\n1,0,lots\n";
        let err = merge_metrics_csv(&mut curve, "s3://b/m.csv", bad, false).expect_err("bad cell");
        let shown = err.to_string();
        assert!(
            shown.contains("s3://b/m.csv")
                && shown.contains("line 3")
                && shown.contains("training_loss"),
            "{shown}"
        );
        let err = merge_metrics_csv(&mut curve, "x.csv", b"step,loss\n1,2\n", false)
            .expect_err("columns");
        assert!(err.to_string().contains("step_number"), "{err}");
    }

    #[test]
    fn states_map_from_status_and_details() {
        use aws_sdk_bedrock::types::{StatusDetails, ValidationDetails};
        let validating = StatusDetails::builder()
            .validation_details(
                ValidationDetails::builder().status(JobStatusDetails::InProgress).build(),
            )
            .build();
        assert_eq!(
            BedrockProvider::state_of(
                Some(&ModelCustomizationJobStatus::InProgress),
                Some(&validating),
                None
            ),
            JobState::Validating
        );
        assert!(matches!(
            BedrockProvider::state_of(Some(&ModelCustomizationJobStatus::InProgress), None, None),
            JobState::Running { .. }
        ));
        assert_eq!(
            BedrockProvider::state_of(Some(&ModelCustomizationJobStatus::Stopping), None, None),
            JobState::Cancelling
        );
        assert_eq!(
            BedrockProvider::state_of(Some(&"Paused".into()), None, None),
            JobState::Unknown { name: "Paused".into() }
        );
    }
}
