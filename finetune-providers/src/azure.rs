//! Azure OpenAI fine-tuning on `{endpoint}/openai/...?api-version=…`, with
//! an `api-key` or an Entra ID token.

use std::fmt;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use finetune_core::{
    AzureAuth, Connection, ConnectionSettings, DatasetSource, Error, JobId, Location, Page, Result,
    Secret,
};
use finetune_data::ObjectStores;

use crate::compat::{
    ChatCompletion, ChatMessage, Checkpoint, Engine, Flavor, JobEvent, UploadedFile,
};
use crate::http::{Api, Auth, HttpSettings};

/// The authoring API version used unless configured: the current stable one.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The Entra ID scope of Azure OpenAI.
pub const COGNITIVE_SERVICES_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// How requests to Azure OpenAI are authenticated. `Debug` shows no secret.
#[derive(Clone)]
pub enum AzureCredential {
    /// The resource's `api-key`.
    ApiKey(Secret),
    /// Entra ID tokens from an azure_core credential (azure_identity's
    /// `ClientSecretCredential`, `ManagedIdentityCredential`,
    /// `AzureCliCredential`, or your own).
    Entra(Arc<dyn TokenCredential>),
}

impl fmt::Debug for AzureCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApiKey(_) => f.write_str("ApiKey([REDACTED])"),
            Self::Entra(c) => f.debug_tuple("Entra").field(c).finish(),
        }
    }
}

impl AzureCredential {
    /// The credential a connection's [`AzureAuth`] names.
    pub fn from_auth(auth: &AzureAuth) -> Result<Self> {
        let failed = |e: azure_core::Error| Error::Authentication {
            message: format!("setting up the Entra ID credential failed: {e}"),
        };
        Ok(match auth {
            AzureAuth::ApiKey { key } => Self::ApiKey(key.clone()),
            AzureAuth::ClientSecret { tenant_id, client_id, client_secret } => Self::Entra(
                azure_identity::ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    client_secret.expose().to_owned().into(),
                    None,
                )
                .map_err(failed)?,
            ),
            AzureAuth::AzureCli => {
                Self::Entra(azure_identity::AzureCliCredential::new(None).map_err(failed)?)
            }
            AzureAuth::ManagedIdentity { client_id } => {
                let options = azure_identity::ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id
                        .clone()
                        .map(azure_identity::UserAssignedId::ClientId),
                    ..Default::default()
                };
                Self::Entra(
                    azure_identity::ManagedIdentityCredential::new(Some(options))
                        .map_err(failed)?,
                )
            }
            other => {
                return Err(Error::Unsupported {
                    message: format!("Azure authentication {other:?} is not supported yet"),
                });
            }
        })
    }
}

/// How to reach an Azure OpenAI resource. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct AzureOpenAiConfig {
    /// `https://{resource}.openai.azure.com`.
    pub endpoint: String,
    /// The authoring API version ([`DEFAULT_API_VERSION`] by default).
    pub api_version: String,
    /// How to authenticate.
    pub credential: AzureCredential,
    /// Timeouts and retries.
    pub http: HttpSettings,
}

impl AzureOpenAiConfig {
    /// `endpoint` with `credential` and the default API version.
    pub fn new(endpoint: impl Into<String>, credential: AzureCredential) -> Self {
        Self {
            endpoint: endpoint.into(),
            api_version: DEFAULT_API_VERSION.to_owned(),
            credential,
            http: HttpSettings::default(),
        }
    }

    /// From `AZURE_OPENAI_ENDPOINT`, then `AZURE_OPENAI_API_KEY` or, without
    /// one, an Entra service principal from `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`; the optional
    /// `AZURE_OPENAI_API_VERSION`.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("AZURE_OPENAI_ENDPOINT").ok_or_else(|| {
            Error::invalid_at(
                Location::column("AZURE_OPENAI_ENDPOINT"),
                "environment variable AZURE_OPENAI_ENDPOINT is not set",
            )
        })?;
        let credential = match var("AZURE_OPENAI_API_KEY") {
            Some(key) => AzureCredential::ApiKey(Secret::new(key)),
            None => {
                match (var("AZURE_TENANT_ID"), var("AZURE_CLIENT_ID"), var("AZURE_CLIENT_SECRET")) {
                    (Some(tenant_id), Some(client_id), Some(secret)) => {
                        AzureCredential::from_auth(&AzureAuth::ClientSecret {
                            tenant_id,
                            client_id,
                            client_secret: Secret::new(secret),
                        })?
                    }
                    _ => {
                        return Err(Error::invalid_at(
                            Location::column("AZURE_OPENAI_API_KEY"),
                            "set AZURE_OPENAI_API_KEY, or AZURE_TENANT_ID, AZURE_CLIENT_ID and \
                         AZURE_CLIENT_SECRET for Entra ID",
                        ));
                    }
                }
            }
        };
        let mut config = Self::new(endpoint, credential);
        if let Some(v) = var("AZURE_OPENAI_API_VERSION") {
            config.api_version = v;
        }
        Ok(config)
    }

    /// From a connection's Azure OpenAI settings.
    pub fn from_connection(connection: &Connection) -> Result<Self> {
        match &connection.settings {
            ConnectionSettings::AzureOpenAi { endpoint, api_version, auth } => {
                let mut config = Self::new(endpoint.clone(), AzureCredential::from_auth(auth)?);
                if let Some(v) = api_version {
                    config.api_version = v.clone();
                }
                Ok(config)
            }
            other => Err(Error::invalid_at(
                Location::column("settings.provider"),
                format!(
                    "connection `{}` is for {}, not Azure OpenAI",
                    connection.name,
                    other.provider()
                ),
            )),
        }
    }

    /// Sets the API version.
    pub fn with_api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into();
        self
    }

    /// Sets timeouts and retries.
    pub fn with_http(mut self, http: HttpSettings) -> Self {
        self.http = http;
        self
    }
}

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
    pub(crate) engine: Engine,
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
        Ok(Self { engine: Engine::new(api, Flavor::Azure) })
    }

    /// A provider for a connection's Azure OpenAI settings.
    pub fn from_connection(connection: &Connection) -> Result<Self> {
        Self::new(AzureOpenAiConfig::from_connection(connection)?)
    }

    /// Reads remote datasets (`s3://`, `az://`, …) through these stores.
    pub fn with_object_stores(mut self, stores: ObjectStores) -> Self {
        self.engine.stores = stores;
        self
    }

    /// How long `submit` waits for Azure to import an uploaded file (10
    /// minutes by default).
    pub fn with_file_import_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.engine.file_import_timeout = timeout;
        self
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

    /// A chat completion from a **deployment** of a model (Azure serves
    /// models only through deployments).
    pub async fn chat(
        &self,
        deployment: &str,
        messages: &[ChatMessage],
        max_tokens: Option<u32>,
    ) -> Result<ChatCompletion> {
        self.engine.chat(deployment, messages, max_tokens).await
    }
}

compat_provider!(AzureOpenAiProvider);
