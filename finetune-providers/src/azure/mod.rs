//! Azure OpenAI fine-tuning on `{endpoint}/openai/...?api-version=…`, with
//! an `api-key` or an Entra ID token.

mod builder;
mod credential;
mod host;

use async_trait::async_trait;
use finetune_core::{
    Capabilities, Connection, FineTuneProvider, Job, JobId, JobSpec, JobState, ListJobs, LossCurve,
    Page, Result,
};
use finetune_data::ObjectStores;

pub use self::builder::{AzureOpenAiConfig, DEFAULT_API_VERSION};
pub use self::credential::{AzureCredential, COGNITIVE_SERVICES_SCOPE};
pub use self::host::Azure;
use crate::chat::{ChatCompletion, ChatMessage};
use crate::http::{Api, Auth};
use crate::openai_compatible::FineTuningClient;

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

    /// A chat completion from a **deployment** of a model (Azure serves
    /// models only through deployments).
    pub async fn chat(
        &self,
        deployment: &str,
        messages: &[ChatMessage],
        max_tokens: Option<u32>,
    ) -> Result<ChatCompletion> {
        self.client.chat(deployment, messages, max_tokens).await
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
