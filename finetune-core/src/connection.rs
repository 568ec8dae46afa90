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
    /// An Entra ID bearer token obtained elsewhere (a platform's token
    /// service, a script, a test), sent as it is for every scope until it
    /// expires. Short-lived by nature: prefer the variants above.
    StaticToken {
        /// The bearer token.
        token: Secret,
    },
}

/// An OpenAI connection (or an OpenAI-compatible gateway's).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct OpenAiSettings {
    /// Base URL; `https://api.openai.com/v1` when absent.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The API key.
    pub api_key: Secret,
    /// `OpenAI-Organization` header.
    #[serde(default)]
    pub organization: Option<String>,
    /// `OpenAI-Project` header.
    #[serde(default)]
    pub project: Option<String>,
}

impl OpenAiSettings {
    /// Settings with this key and OpenAI's endpoint.
    pub fn new(api_key: Secret) -> Self {
        Self { base_url: None, api_key, organization: None, project: None }
    }

    /// Sets the base URL (a gateway, a test server).
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }
}

/// An Azure OpenAI connection: the resource's endpoint and credential for
/// fine-tuning and chat, and where the resource sits in Azure Resource
/// Manager for deployments (the specification's "AzureML connection").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct AzureOpenAiSettings {
    /// `https://{resource}.openai.azure.com`.
    pub endpoint: String,
    /// The authoring API version; the crate's default when absent.
    #[serde(default)]
    pub api_version: Option<String>,
    /// How to authenticate. Deployments go through ARM, which takes only an
    /// Entra credential: an api key fine-tunes and chats, but cannot deploy.
    pub auth: AzureAuth,
    /// The subscription holding the resource (deployments).
    #[serde(default)]
    pub subscription_id: Option<String>,
    /// The resource group holding the resource (deployments).
    #[serde(default)]
    pub resource_group: Option<String>,
    /// The Azure OpenAI (Cognitive Services) account name; the endpoint's
    /// host name when absent.
    #[serde(default)]
    pub account: Option<String>,
    /// ARM's root; the public cloud's when absent (sovereign clouds, tests).
    #[serde(default)]
    pub arm_endpoint: Option<String>,
}

impl AzureOpenAiSettings {
    /// Settings for the resource at `endpoint`.
    pub fn new(endpoint: impl Into<String>, auth: AzureAuth) -> Self {
        Self {
            endpoint: endpoint.into(),
            api_version: None,
            auth,
            subscription_id: None,
            resource_group: None,
            account: None,
            arm_endpoint: None,
        }
    }

    /// Where the resource sits in ARM, for deployments.
    pub fn with_resource(
        mut self,
        subscription_id: impl Into<String>,
        resource_group: impl Into<String>,
        account: impl Into<String>,
    ) -> Self {
        self.subscription_id = Some(subscription_id.into());
        self.resource_group = Some(resource_group.into());
        self.account = Some(account.into());
        self
    }

    /// Sets ARM's root.
    pub fn with_arm_endpoint(mut self, url: impl Into<String>) -> Self {
        self.arm_endpoint = Some(url.into());
        self
    }

    /// The account name: the configured one, else the endpoint's first host
    /// label (`https://contoso.openai.azure.com` is `contoso`).
    pub fn account_name(&self) -> Option<String> {
        self.account.clone().or_else(|| {
            let host = self.endpoint.split("://").nth(1)?.split(['/', ':']).next()?;
            let label = host.split('.').next()?;
            (!label.is_empty()).then(|| label.to_owned())
        })
    }
}

/// An AWS Bedrock connection, with the S3 location its data goes through
/// (the specification's "S3 connection"). Credentials are the standard AWS
/// chain's unless a static key pair is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct BedrockSettings {
    /// AWS region.
    #[serde(default)]
    pub region: Option<String>,
    /// IAM role Bedrock assumes to read and write the S3 data.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// `s3://bucket/prefix` where training data and outputs go.
    #[serde(default)]
    pub s3_prefix: Option<String>,
    /// Bedrock endpoint override (VPC endpoints, tests); also the runtime's
    /// unless `runtime_endpoint_url` is set.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// bedrock-runtime endpoint override.
    #[serde(default)]
    pub runtime_endpoint_url: Option<String>,
    /// S3 endpoint override.
    #[serde(default)]
    pub s3_endpoint_url: Option<String>,
    /// A static access key id (with `secret_access_key`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// A static secret access key.
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
}

impl BedrockSettings {
    /// Settings in `region` with the role and S3 prefix fine-tuning needs.
    pub fn new(
        region: impl Into<String>,
        role_arn: impl Into<String>,
        s3_prefix: impl Into<String>,
    ) -> Self {
        Self {
            region: Some(region.into()),
            role_arn: Some(role_arn.into()),
            s3_prefix: Some(s3_prefix.into()),
            ..Self::default()
        }
    }

    /// Sends Bedrock, bedrock-runtime and S3 calls to these endpoints.
    pub fn with_endpoints(
        mut self,
        bedrock: impl Into<String>,
        runtime: impl Into<String>,
        s3: impl Into<String>,
    ) -> Self {
        self.endpoint_url = Some(bedrock.into());
        self.runtime_endpoint_url = Some(runtime.into());
        self.s3_endpoint_url = Some(s3.into());
        self
    }

    /// Uses a static key pair instead of the credential chain.
    pub fn with_static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: Secret,
    ) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret_access_key);
        self
    }
}

/// A local HuggingFace model trained with libtorch: the runtime settings a
/// container configuration would hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct LocalHfSettings {
    /// `cpu`, `cuda`, `cuda:N` or `auto` (the first GPU when there is one).
    #[serde(default)]
    pub device: Option<String>,
    /// CPU threads for libtorch.
    #[serde(default)]
    pub threads: Option<usize>,
    /// `fp32`, `bf16` or `fp16`; fp32 on CPU and bf16 on CUDA when absent.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Where job folders (and trained models) are written.
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    /// The model cache (HF hub layout) model ids resolve in.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Train in this container on a cluster instead of in the calling
    /// process.
    #[serde(default)]
    pub container: Option<Box<crate::container::ContainerConfig>>,
}

impl LocalHfSettings {
    /// Settings writing jobs under `output_dir`.
    pub fn new(output_dir: impl Into<PathBuf>) -> Self {
        Self { output_dir: Some(output_dir.into()), ..Self::default() }
    }

    /// Sets the model cache.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Sets the device (`cpu`, `cuda`, `cuda:N`, `auto`).
    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// Sets libtorch's CPU threads.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Trains in `container` on a cluster.
    pub fn with_container(mut self, container: crate::container::ContainerConfig) -> Self {
        self.container = Some(Box::new(container));
        self
    }
}

/// Provider-specific settings of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", tag = "provider")]
#[non_exhaustive]
pub enum ConnectionSettings {
    /// OpenAI or an OpenAI-compatible gateway.
    #[serde(rename = "openai")]
    OpenAi(OpenAiSettings),
    /// Azure OpenAI.
    #[serde(rename = "azure_openai")]
    AzureOpenAi(AzureOpenAiSettings),
    /// AWS Bedrock.
    Bedrock(BedrockSettings),
    /// A local HuggingFace model trained with libtorch.
    LocalHf(LocalHfSettings),
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
            Self::OpenAi(_) => ProviderKind::OpenAi,
            Self::AzureOpenAi(_) => ProviderKind::AzureOpenAi,
            Self::Bedrock(_) => ProviderKind::Bedrock,
            Self::LocalHf(_) => ProviderKind::LocalHf,
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
            ConnectionSettings::OpenAi(OpenAiSettings {
                organization: Some("org-1".into()),
                ..OpenAiSettings::new(Secret::new("sk-live-very-secret"))
            }),
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
        let ConnectionSettings::AzureOpenAi(azure) = &conn.settings else { unreachable!() };
        assert_eq!(azure.account_name().as_deref(), Some("x"));
    }

    #[test]
    fn bedrock_static_keys_never_show() {
        let json = r#"{"name":"aws","settings":{"provider":"bedrock","region":"eu-west-1",
            "access_key_id":"AKIA1","secret_access_key":"wJalrXUtnFEMI"}}"#;
        let conn: Connection = serde_json::from_str(json).unwrap();
        assert!(!format!("{conn:?}").contains("wJalrXUtnFEMI"));
        let json = r#"{"name":"local","settings":{"provider":"local_hf","device":"auto"}}"#;
        let conn: Connection = serde_json::from_str(json).unwrap();
        assert_eq!(
            conn.settings,
            ConnectionSettings::LocalHf(LocalHfSettings::default().with_device("auto"))
        );
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
