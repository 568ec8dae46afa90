//! How to reach OpenAI (or a compatible gateway).

use finetune_core::{Connection, ConnectionSettings, Error, Location, Result, Secret};

use crate::http::HttpSettings;

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
            ConnectionSettings::OpenAi(s) => Ok(Self {
                base_url: s.base_url.clone().unwrap_or_else(|| DEFAULT_BASE_URL.to_owned()),
                api_key: s.api_key.clone(),
                organization: s.organization.clone(),
                project: s.project.clone(),
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
