//! Connections: named, administrator-managed settings for one LLM provider.
//!
//! A connection is what an application's administrator configures once (an
//! endpoint, credentials, a region) and users pick by name. Fine-tuning is
//! opt-in per connection through [`Connection::fine_tuning_enabled`].
//!
//! **Fine-tuning applies none of the connection's guardrails.** Content
//! filters, PII detection and similar policies that a platform enforces on
//! chat traffic are not applied to training data sent through a fine-tuning
//! job: whatever is in the dataset leaves the building as it is. Scan the data
//! first (`finetune-data`'s sensitive-data scan) and only then submit.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A secret (API key, token, password) that never shows in `Debug`,
/// `Display` or logs. Read it with [`Secret::expose`] at the one place that
/// needs it (an HTTP header), nowhere else.
///
/// It deserializes from a plain string but deliberately does not implement
/// `Serialize`, so a secret cannot be written out by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads a secret from the environment variable `name`.
    pub fn from_env(name: &str) -> Result<Self> {
        match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => Ok(Self(v)),
            _ => Err(Error::invalid_at(
                crate::Location::column(name),
                format!("environment variable {name} is not set"),
            )),
        }
    }

    /// The secret's value. Call it only where the value is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Which provider a connection talks to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProviderKind {
    /// OpenAI's API (or a compatible gateway).
    OpenAi,
    /// Azure OpenAI.
    AzureOpenAi,
    /// AWS Bedrock.
    Bedrock,
    /// A local HuggingFace model trained with libtorch.
    LocalHf,
    /// A provider from a third-party crate, by its name.
    Other(String),
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OpenAi => f.write_str("openai"),
            Self::AzureOpenAi => f.write_str("azure_openai"),
            Self::Bedrock => f.write_str("bedrock"),
            Self::LocalHf => f.write_str("local_hf"),
            Self::Other(name) => f.write_str(name),
        }
    }
}

/// How to authenticate against Azure OpenAI.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
#[non_exhaustive]
pub enum AzureAuth {
    /// An `api-key` header.
    ApiKey {
        /// The resource key.
        key: Secret,
    },
    /// An Entra ID service principal with a client secret.
    ClientSecret {
        /// Directory (tenant) id.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// The client secret.
        client_secret: Secret,
    },
    /// The identity of the Azure CLI's logged-in user.
    AzureCli,
    /// A managed identity, optionally user-assigned.
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        #[serde(default)]
        client_id: Option<String>,
    },
}

/// Provider-specific settings of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", tag = "provider")]
#[non_exhaustive]
pub enum ConnectionSettings {
    /// OpenAI or an OpenAI-compatible gateway.
    #[serde(rename = "openai")]
    OpenAi {
        /// Base URL; `https://api.openai.com/v1` when absent.
        #[serde(default)]
        base_url: Option<String>,
        /// The API key.
        api_key: Secret,
        /// `OpenAI-Organization` header.
        #[serde(default)]
        organization: Option<String>,
        /// `OpenAI-Project` header.
        #[serde(default)]
        project: Option<String>,
    },
    /// Azure OpenAI.
    #[serde(rename = "azure_openai")]
    AzureOpenAi {
        /// `https://{resource}.openai.azure.com`.
        endpoint: String,
        /// The authoring API version; the crate's default when absent.
        #[serde(default)]
        api_version: Option<String>,
        /// How to authenticate.
        auth: AzureAuth,
    },
    /// AWS Bedrock. Credentials come from the standard AWS chain.
    Bedrock {
        /// AWS region.
        #[serde(default)]
        region: Option<String>,
        /// IAM role Bedrock assumes to read and write the S3 data.
        #[serde(default)]
        role_arn: Option<String>,
        /// `s3://bucket/prefix` where training data and outputs go.
        #[serde(default)]
        s3_prefix: Option<String>,
        /// Endpoint override (tests, VPC endpoints).
        #[serde(default)]
        endpoint_url: Option<String>,
    },
    /// A local HuggingFace model trained with libtorch; the runtime settings
    /// a container configuration would hold.
    LocalHf {
        /// `cpu`, `cuda`, `cuda:N` or `auto`.
        #[serde(default)]
        device: Option<String>,
        /// CPU threads for libtorch.
        #[serde(default)]
        threads: Option<usize>,
        /// `fp32`, `bf16` or `fp16`.
        #[serde(default)]
        dtype: Option<String>,
        /// Where trained models are written.
        #[serde(default)]
        output_dir: Option<PathBuf>,
        /// The HF hub cache to resolve model ids from.
        #[serde(default)]
        cache_dir: Option<PathBuf>,
    },
    /// A third-party provider's free-form settings.
    Other {
        /// The provider's name.
        name: String,
        /// Plain settings.
        #[serde(default)]
        options: BTreeMap<String, String>,
        /// Secret settings.
        #[serde(default)]
        secrets: BTreeMap<String, Secret>,
    },
}

impl ConnectionSettings {
    /// The provider these settings are for.
    pub fn provider(&self) -> ProviderKind {
        match self {
            Self::OpenAi { .. } => ProviderKind::OpenAi,
            Self::AzureOpenAi { .. } => ProviderKind::AzureOpenAi,
            Self::Bedrock { .. } => ProviderKind::Bedrock,
            Self::LocalHf { .. } => ProviderKind::LocalHf,
            Self::Other { name, .. } => ProviderKind::Other(name.clone()),
        }
    }
}

/// A named LLM connection.
///
/// Fine-tuning through a connection applies **none** of its guardrails (no
/// content filter, no PII detection): see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Connection {
    /// The name users pick it by.
    pub name: String,
    /// Whether an administrator allowed fine-tuning through it. Off unless
    /// set: submitting a job through a connection without it is refused.
    #[serde(default)]
    pub fine_tuning_enabled: bool,
    /// The provider's settings.
    pub settings: ConnectionSettings,
}

impl Connection {
    /// A connection with fine-tuning disabled.
    pub fn new(name: impl Into<String>, settings: ConnectionSettings) -> Self {
        Self { name: name.into(), fine_tuning_enabled: false, settings }
    }

    /// Sets the administrator's fine-tuning switch.
    pub fn with_fine_tuning_enabled(mut self, enabled: bool) -> Self {
        self.fine_tuning_enabled = enabled;
        self
    }

    /// The provider it talks to.
    pub fn provider(&self) -> ProviderKind {
        self.settings.provider()
    }

    /// `Ok` when fine-tuning is enabled, else [`Error::FineTuningDisabled`].
    pub fn ensure_fine_tuning_enabled(&self) -> Result<()> {
        if self.fine_tuning_enabled {
            Ok(())
        } else {
            Err(Error::FineTuningDisabled { connection: self.name.clone() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show() {
        let conn = Connection::new(
            "prod-openai",
            ConnectionSettings::OpenAi {
                base_url: None,
                api_key: Secret::new("sk-live-very-secret"),
                organization: Some("org-1".into()),
                project: None,
            },
        );
        let debug = format!("{conn:?}");
        assert!(!debug.contains("sk-live-very-secret"), "{debug}");
        assert!(debug.contains("REDACTED"));
        let s = Secret::new("tok");
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert_eq!(s.expose(), "tok");
    }

    #[test]
    fn azure_secrets_never_show() {
        let json = r#"{"name":"az","fine_tuning_enabled":true,"settings":{"provider":"azure_openai",
            "endpoint":"https://x.openai.azure.com","auth":{"type":"client_secret","tenant_id":"t",
            "client_id":"c","client_secret":"hunter2"}}}"#;
        let conn: Connection = serde_json::from_str(json).unwrap();
        assert!(conn.fine_tuning_enabled);
        assert_eq!(conn.provider(), ProviderKind::AzureOpenAi);
        assert!(!format!("{conn:?}").contains("hunter2"));
    }

    #[test]
    fn disabled_unless_an_admin_enables_it() {
        let json =
            r#"{"name":"bedrock-eu","settings":{"provider":"bedrock","region":"eu-west-1"}}"#;
        let conn: Connection = serde_json::from_str(json).unwrap();
        let err = conn.ensure_fine_tuning_enabled().unwrap_err();
        assert!(
            matches!(err, Error::FineTuningDisabled { ref connection } if connection == "bedrock-eu")
        );
        assert!(err.to_string().contains("fine_tuning_enabled"));
        assert!(conn.with_fine_tuning_enabled(true).ensure_fine_tuning_enabled().is_ok());
    }
}
