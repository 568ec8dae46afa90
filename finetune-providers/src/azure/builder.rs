//! How to reach an Azure OpenAI resource.

use finetune_core::{AzureAuth, Connection, ConnectionSettings, Error, Location, Result, Secret};

use super::credential::AzureCredential;
use crate::http::HttpSettings;

/// The authoring API version used unless configured: the current stable one.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

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
            ConnectionSettings::AzureOpenAi(s) => {
                let mut config =
                    Self::new(s.endpoint.clone(), AzureCredential::from_auth(&s.auth)?);
                if let Some(v) = &s.api_version {
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
