//! How a [`super::BedrockProvider`] reaches AWS: role, S3 prefix, region,
//! endpoints, retries and the base-model rules, from code, the environment
//! or a connection.

use std::fmt;
use std::time::Duration;

use aws_config::SdkConfig;
use finetune_core::{Connection, ConnectionSettings, Error, Location, Result};

use super::models::BaseModelRules;
use super::s3::S3Uri;

/// How a [`super::BedrockProvider`] reaches AWS.
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
            ConnectionSettings::Bedrock(s) => {
                let sdk_config = match (&s.access_key_id, &s.secret_access_key) {
                    (None, None) => None,
                    (Some(id), Some(secret)) => Some(static_sdk_config(
                        s.region.as_deref().unwrap_or("us-east-1"),
                        id,
                        secret,
                    )),
                    _ => {
                        return Err(Error::invalid_at(
                            Location::column("settings.secret_access_key"),
                            format!(
                                "connection `{}` gives only half of a static key pair: set both \
                                 access_key_id and secret_access_key, or neither",
                                connection.name
                            ),
                        ));
                    }
                };
                Ok(Self {
                    role_arn: s.role_arn.clone(),
                    s3_prefix: s.s3_prefix.as_deref().map(S3Uri::parse).transpose()?,
                    region: s.region.clone(),
                    endpoint_url: s.endpoint_url.clone(),
                    runtime_endpoint_url: s.runtime_endpoint_url.clone(),
                    s3_endpoint_url: s.s3_endpoint_url.clone(),
                    sdk_config,
                    ..Self::default()
                })
            }
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

/// An AWS configuration signing with a static key pair.
fn static_sdk_config(
    region: &str,
    access_key_id: &str,
    secret: &finetune_core::Secret,
) -> SdkConfig {
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    SdkConfig::builder()
        .region(aws_config::Region::new(region.to_owned()))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            access_key_id,
            secret.expose(),
            None,
            None,
            "finetune-connection",
        )))
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build()
}

#[cfg(test)]
mod tests {
    use finetune_core::BedrockSettings;

    use super::*;

    #[test]
    fn a_connection_gives_the_config() {
        let mut settings =
            BedrockSettings::new("eu-central-1", "arn:aws:iam::1:role/r", "s3://bkt/pre");
        settings.endpoint_url = Some("https://vpce.example".into());
        let settings = ConnectionSettings::Bedrock(settings);
        let config =
            BedrockConfig::from_connection(&Connection::new("aws", settings)).expect("bedrock");
        assert_eq!(config.region.as_deref(), Some("eu-central-1"));
        assert_eq!(config.role_arn.as_deref(), Some("arn:aws:iam::1:role/r"));
        assert_eq!(config.s3_prefix.as_ref().map(|u| u.join("x")), Some("s3://bkt/pre/x".into()));
        assert_eq!(config.endpoint_url.as_deref(), Some("https://vpce.example"));
        let mut bad = BedrockSettings::default();
        bad.s3_prefix = Some("https://not-s3".into());
        let bad = ConnectionSettings::Bedrock(bad);
        assert!(BedrockConfig::from_connection(&Connection::new("aws", bad)).is_err());
        let mut half = BedrockSettings::default();
        half.access_key_id = Some("AKIA".into());
        let err = BedrockConfig::from_connection(&Connection::new(
            "aws",
            ConnectionSettings::Bedrock(half),
        ))
        .unwrap_err();
        assert!(err.to_string().contains("secret_access_key"), "{err}");
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
}
