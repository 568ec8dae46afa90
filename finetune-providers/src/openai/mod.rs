//! OpenAI fine-tuning: files, jobs, events, checkpoints, pause and resume,
//! and chat completions on the fine-tuned model.

mod builder;
mod host;

use std::sync::Arc;

use async_trait::async_trait;
use finetune_core::{
    Capabilities, ChatModel, Connection, EnabledConnection, FineTuneProvider, FineTunedModel, Job,
    JobId, JobSpec, JobState, ListJobs, LossCurve, Page, ProviderFactory, ProviderKind, Result,
};
use finetune_data::ObjectStores;

pub use self::builder::{DEFAULT_BASE_URL, OpenAiConfig};
pub use self::host::OpenAi;
use crate::http::HttpSettings;
use crate::http::{Api, Auth};
use crate::openai_compatible::{CompletionsChat, FineTuningClient};

/// The OpenAI fine-tuning provider.
///
/// `submit` validates the spec and the datasets (an invalid dataset is
/// refused before anything is uploaded), writes them as chat JSONL, uploads
/// each (streamed from disk, and only once: a file with the same content
/// hash already on the account is reused), and creates a supervised job.
#[derive(Debug)]
pub struct OpenAiProvider {
    client: FineTuningClient<OpenAi>,
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
        Ok(Self { client: FineTuningClient::new(api, OpenAi) })
    }

    /// A provider for a connection's OpenAI settings.
    pub fn from_connection(connection: &Connection) -> Result<Self> {
        Self::new(OpenAiConfig::from_connection(connection)?)
    }

    /// Reads remote datasets (`s3://`, `az://`, …) through these stores.
    pub fn with_object_stores(mut self, stores: ObjectStores) -> Self {
        self.client.stores = stores;
        self
    }

    /// Pauses a running job.
    pub async fn pause(&self, id: &JobId) -> Result<JobState> {
        Ok(self.client.to_job(self.client.action(id, "pause").await?).await?.state)
    }

    /// Resumes a paused job.
    pub async fn resume(&self, id: &JobId) -> Result<JobState> {
        Ok(self.client.to_job(self.client.action(id, "resume").await?).await?.state)
    }

    /// `model` (a fine-tuned model id, or any other) as a chat model.
    pub fn chat_model(self: &Arc<Self>, model: impl Into<String>) -> Arc<dyn ChatModel> {
        Arc::new(CompletionsChat::new(Arc::clone(self), model))
    }
}

/// Connects [`finetune_core::ConnectionSettings::OpenAi`] connections.
#[derive(Debug, Clone, Default)]
pub struct OpenAiFactory {
    http: Option<HttpSettings>,
    stores: ObjectStores,
}

impl OpenAiFactory {
    /// Timeouts and retries of the providers it makes.
    pub fn with_http(mut self, http: HttpSettings) -> Self {
        self.http = Some(http);
        self
    }

    /// Object stores the providers read remote datasets through.
    pub fn with_object_stores(mut self, stores: ObjectStores) -> Self {
        self.stores = stores;
        self
    }

    fn provider(&self, connection: &Connection) -> Result<Arc<OpenAiProvider>> {
        let mut config = OpenAiConfig::from_connection(connection)?;
        if let Some(http) = &self.http {
            config.http = http.clone();
        }
        Ok(Arc::new(OpenAiProvider::new(config)?.with_object_stores(self.stores.clone())))
    }
}

#[async_trait]
impl ProviderFactory for OpenAiFactory {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    async fn connect(
        &self,
        connection: EnabledConnection<'_>,
    ) -> Result<Arc<dyn FineTuneProvider>> {
        Ok(self.provider(&connection)?)
    }

    /// The fine-tuned model id through chat completions; OpenAI serves it
    /// without a deployment.
    async fn chat_model(
        &self,
        connection: &Connection,
        model: &FineTunedModel,
        _deployment: Option<&str>,
    ) -> Result<Arc<dyn ChatModel>> {
        Ok(self.provider(connection)?.chat_model(model.model_id.clone()))
    }
}

impl std::ops::Deref for OpenAiProvider {
    type Target = FineTuningClient<OpenAi>;

    /// The shared client: uploads, events, checkpoints, retry and upload
    /// counts.
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

#[async_trait]
impl FineTuneProvider for OpenAiProvider {
    fn name(&self) -> &str {
        self.client.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.client.capabilities()
    }

    async fn validate(&self, spec: &JobSpec) -> Result<()> {
        self.client.validate(spec)
    }

    fn data_rules(&self, spec: &JobSpec) -> Option<finetune_core::DataRules> {
        Some(self.client.data_rules(&spec.base_model))
    }

    async fn token_counter(
        &self,
        spec: &JobSpec,
    ) -> Result<Option<std::sync::Arc<dyn finetune_core::TokenCounter>>> {
        Ok(finetune_data::counter_for(&self.client.data_rules(&spec.base_model)))
    }

    async fn submit(&self, spec: &JobSpec) -> Result<Job> {
        self.client.submit(spec).await
    }

    async fn job(&self, id: &JobId) -> Result<Job> {
        self.client.job(id).await
    }

    async fn metrics(&self, id: &JobId) -> Result<LossCurve> {
        self.client.metrics(id).await
    }

    async fn cancel(&self, id: &JobId) -> Result<JobState> {
        self.client.cancel(id).await
    }

    async fn list_jobs(&self, query: &ListJobs) -> Result<Page<Job>> {
        self.client.list(query).await
    }
}
