//! Azure OpenAI fine-tuning on `{endpoint}/openai/...?api-version=…`, with
//! an `api-key` or an Entra ID token.

mod builder;
mod credential;
mod host;

use std::sync::Arc;

use async_trait::async_trait;
use finetune_core::{
    Capabilities, ChatModel, Connection, EnabledConnection, FineTuneProvider, FineTunedModel, Job,
    JobId, JobSpec, JobState, ListJobs, LossCurve, Page, ProviderFactory, ProviderKind, Result,
    require_deployment,
};
use finetune_data::ObjectStores;

pub use self::builder::{AzureOpenAiConfig, DEFAULT_API_VERSION};
pub use self::credential::{AzureCredential, COGNITIVE_SERVICES_SCOPE, StaticTokenCredential};
pub use self::host::Azure;
use crate::http::HttpSettings;
use crate::http::{Api, Auth};
use crate::openai_compatible::{CompletionsChat, FineTuningClient};

/// The Azure OpenAI fine-tuning provider.
///
/// The flows are OpenAI's, with Azure's differences: the `api-version`
/// query parameter, `created`/`pending` statuses, numeric hyperparameters
/// only, suffixes of at most 40 characters of `a-z A-Z 0-9 - _`, no job
/// metadata, and files imported asynchronously (`submit` waits for them).
/// **Fine-tuned models must be deployed before use** (and are billed while
/// deployed): their [`finetune_core::FineTunedModel::requires_deployment`]
/// is true and their metadata says so.
#[derive(Debug)]
pub struct AzureOpenAiProvider {
    client: FineTuningClient<Azure>,
}

impl AzureOpenAiProvider {
    /// A provider for `config`.
    pub fn new(config: AzureOpenAiConfig) -> Result<Self> {
        let auth = match config.credential {
            AzureCredential::ApiKey(key) => Auth::ApiKey(key),
            AzureCredential::Entra(credential) => {
                Auth::Entra { credential, scope: COGNITIVE_SERVICES_SCOPE }
            }
        };
        let root = format!("{}/openai", config.endpoint.trim_end_matches('/'));
        let api = Api::new(
            &root,
            vec![("api-version", config.api_version)],
            Vec::new(),
            auth,
            config.http,
        )?;
        Ok(Self { client: FineTuningClient::new(api, Azure) })
    }

    /// A provider for a connection's Azure OpenAI settings.
    pub fn from_connection(connection: &Connection) -> Result<Self> {
        Self::new(AzureOpenAiConfig::from_connection(connection)?)
    }

    /// Reads remote datasets (`s3://`, `az://`, …) through these stores.
    pub fn with_object_stores(mut self, stores: ObjectStores) -> Self {
        self.client.stores = stores;
        self
    }

    /// How long `submit` waits for Azure to import an uploaded file (10
    /// minutes by default).
    pub fn with_file_import_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.client.file_import_timeout = timeout;
        self
    }

    /// A **deployment** of a model as a chat model (Azure serves models
    /// only through deployments).
    pub fn chat_model(self: &Arc<Self>, deployment: impl Into<String>) -> Arc<dyn ChatModel> {
        Arc::new(CompletionsChat::new(Arc::clone(self), deployment))
    }
}

/// Connects [`finetune_core::ConnectionSettings::AzureOpenAi`] connections.
#[derive(Debug, Clone, Default)]
pub struct AzureOpenAiFactory {
    http: Option<HttpSettings>,
    stores: ObjectStores,
    file_import_timeout: Option<std::time::Duration>,
}

impl AzureOpenAiFactory {
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

    /// How long `submit` waits for Azure to import an uploaded file.
    pub fn with_file_import_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.file_import_timeout = Some(timeout);
        self
    }

    fn provider(&self, connection: &Connection) -> Result<Arc<AzureOpenAiProvider>> {
        let mut config = AzureOpenAiConfig::from_connection(connection)?;
        if let Some(http) = &self.http {
            config.http = http.clone();
        }
        let mut provider =
            AzureOpenAiProvider::new(config)?.with_object_stores(self.stores.clone());
        if let Some(t) = self.file_import_timeout {
            provider = provider.with_file_import_timeout(t);
        }
        Ok(Arc::new(provider))
    }
}

#[async_trait]
impl ProviderFactory for AzureOpenAiFactory {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AzureOpenAi
    }

    async fn connect(
        &self,
        connection: EnabledConnection<'_>,
    ) -> Result<Arc<dyn FineTuneProvider>> {
        Ok(self.provider(&connection)?)
    }

    /// The model's deployment through chat completions; a model without
    /// one is [`finetune_core::Error::NotDeployed`].
    async fn chat_model(
        &self,
        connection: &Connection,
        model: &FineTunedModel,
        deployment: Option<&str>,
    ) -> Result<Arc<dyn ChatModel>> {
        let deployment = require_deployment(model, deployment)?;
        Ok(self.provider(connection)?.chat_model(deployment))
    }
}

impl std::ops::Deref for AzureOpenAiProvider {
    type Target = FineTuningClient<Azure>;

    /// The shared client: uploads, events, checkpoints, retry and upload
    /// counts.
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

#[async_trait]
impl FineTuneProvider for AzureOpenAiProvider {
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
