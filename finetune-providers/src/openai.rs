//! OpenAI fine-tuning: files, jobs, events, checkpoints, pause and resume,
//! and chat completions on the fine-tuned model.

use finetune_core::{
    Connection, ConnectionSettings, DatasetSource, Error, JobId, JobState, Location, Page, Result,
    Secret,
};
use finetune_data::ObjectStores;

use crate::compat::{
    ChatCompletion, ChatMessage, Checkpoint, Engine, Flavor, JobEvent, UploadedFile,
};
use crate::http::{Api, Auth, HttpSettings};

/// OpenAI's API root.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// How to reach OpenAI (or a compatible gateway). `Debug` shows no key.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// The API root, `https://api.openai.com/v1` by default; a gateway's or
    /// proxy's root otherwise.
    pub base_url: String,
    /// The API key.
    pub api_key: Secret,
    /// Sent as `OpenAI-Organization`.
    pub organization: Option<String>,
    /// Sent as `OpenAI-Project`.
    pub project: Option<String>,
    /// Timeouts and retries.
    pub http: HttpSettings,
}

impl OpenAiConfig {
    /// The default API root with `api_key`.
    pub fn new(api_key: Secret) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key,
            organization: None,
            project: None,
            http: HttpSettings::default(),
        }
    }

    /// From `OPENAI_API_KEY` and the optional `OPENAI_BASE_URL`,
    /// `OPENAI_ORG_ID` and `OPENAI_PROJECT_ID`.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut config = Self::new(Secret::from_env("OPENAI_API_KEY")?);
        if let Some(url) = var("OPENAI_BASE_URL") {
            config.base_url = url;
        }
        config.organization = var("OPENAI_ORG_ID");
        config.project = var("OPENAI_PROJECT_ID");
        Ok(config)
    }

    /// From a connection's OpenAI settings.
    pub fn from_connection(connection: &Connection) -> Result<Self> {
        match &connection.settings {
            ConnectionSettings::OpenAi { base_url, api_key, organization, project } => Ok(Self {
                base_url: base_url.clone().unwrap_or_else(|| DEFAULT_BASE_URL.to_owned()),
                api_key: api_key.clone(),
                organization: organization.clone(),
                project: project.clone(),
                http: HttpSettings::default(),
            }),
            other => Err(Error::invalid_at(
                Location::column("settings.provider"),
                format!("connection `{}` is for {}, not OpenAI", connection.name, other.provider()),
            )),
        }
    }

    /// Sets the API root.
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Sets timeouts and retries.
    pub fn with_http(mut self, http: HttpSettings) -> Self {
        self.http = http;
        self
    }
}

/// The OpenAI fine-tuning provider.
///
/// `submit` validates the spec and the datasets (an invalid dataset is
/// refused before anything is uploaded), writes them as chat JSONL, uploads
/// each (streamed from disk, and only once: a file with the same content
/// hash already on the account is reused), and creates a supervised job.
#[derive(Debug)]
pub struct OpenAiProvider {
    pub(crate) engine: Engine,
}

impl OpenAiProvider {
    /// A provider for `config`.
    pub fn new(config: OpenAiConfig) -> Result<Self> {
        let mut headers = Vec::new();
        if let Some(org) = config.organization {
            headers.push(("openai-organization", org));
        }
        if let Some(project) = config.project {
            headers.push(("openai-project", project));
        }
        let api = Api::new(
            &config.base_url,
            Vec::new(),
            headers,
            Auth::Bearer(config.api_key),
            config.http,
        )?;
        Ok(Self { engine: Engine::new(api, Flavor::OpenAi) })
    }

    /// A provider for a connection's OpenAI settings.
    pub fn from_connection(connection: &Connection) -> Result<Self> {
        Self::new(OpenAiConfig::from_connection(connection)?)
    }

    /// Reads remote datasets (`s3://`, `az://`, …) through these stores.
    pub fn with_object_stores(mut self, stores: ObjectStores) -> Self {
        self.engine.stores = stores;
        self
    }

    /// The API root requests go to.
    pub fn base_url(&self) -> &str {
        self.engine.api.base()
    }

    /// Retries made since this provider was built.
    pub fn retries(&self) -> u64 {
        self.engine.api.retries()
    }

    /// Files this provider uploaded (reused ones not counted).
    pub fn uploads(&self) -> u64 {
        self.engine.uploads()
    }

    /// Validates a dataset, writes it as chat JSONL and uploads it (or
    /// reuses an identical file already uploaded).
    pub async fn upload(&self, dataset: &DatasetSource) -> Result<UploadedFile> {
        self.engine.prepare_file(dataset, "training").await
    }

    /// Pauses a running job.
    pub async fn pause(&self, id: &JobId) -> Result<JobState> {
        Ok(self.engine.to_job(self.engine.action(id, "pause").await?).await?.state)
    }

    /// Resumes a paused job.
    pub async fn resume(&self, id: &JobId) -> Result<JobState> {
        Ok(self.engine.to_job(self.engine.action(id, "resume").await?).await?.state)
    }

    /// Every event of a job, newest first.
    pub async fn events(&self, id: &JobId) -> Result<Vec<JobEvent>> {
        self.engine.events(id).await
    }

    /// One page of a job's events, newest first.
    pub async fn events_page(
        &self,
        id: &JobId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<JobEvent>> {
        self.engine.events_page(id, after, limit).await
    }

    /// The checkpoints a job kept.
    pub async fn checkpoints(&self, id: &JobId) -> Result<Vec<Checkpoint>> {
        self.engine.checkpoints(id).await
    }

    /// A chat completion from `model` (a fine-tuned model id or any other).
    pub async fn chat(
        &self,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: Option<u32>,
    ) -> Result<ChatCompletion> {
        self.engine.chat(model, messages, max_tokens).await
    }
}

compat_provider!(OpenAiProvider);
