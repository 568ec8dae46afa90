//! Azure OpenAI deployments through Azure Resource Manager:
//! `PUT/GET/DELETE …/Microsoft.CognitiveServices/accounts/{account}/deployments/{name}`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use finetune_core::pagination::{RepeatedCursor, collect_pages};
use finetune_core::{Error, Location, Page, Result, Secret};
use finetune_providers::http::{Api, Auth, HttpSettings, Method};
use serde::Deserialize;

use crate::deployer::{Deployer, Deployment, DeploymentSpec, DeploymentState};

/// Azure Resource Manager's root.
pub const ARM_ENDPOINT: &str = "https://management.azure.com";

/// The ARM api-version used unless configured.
pub const DEFAULT_ARM_API_VERSION: &str = "2024-10-01";

/// The Entra ID scope of Azure Resource Manager.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";

/// How ARM requests are authenticated. `Debug` shows no secret.
#[derive(Clone)]
pub enum ArmCredential {
    /// Entra ID tokens from an azure_core credential (azure_identity's
    /// client-secret, managed-identity or CLI credential).
    Entra(Arc<dyn azure_core::credentials::TokenCredential>),
    /// A bearer token obtained elsewhere (short-lived; tests and scripts).
    Token(Secret),
}

impl fmt::Debug for ArmCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Entra(c) => f.debug_tuple("Entra").field(c).finish(),
            Self::Token(_) => f.write_str("Token([REDACTED])"),
        }
    }
}

/// Where the Azure OpenAI resource is, and how deployments are made.
#[derive(Debug, Clone)]
pub struct AzureDeployerConfig {
    /// ARM's root ([`ARM_ENDPOINT`]; another cloud's, or a mock's).
    pub endpoint: String,
    /// The subscription id.
    pub subscription_id: String,
    /// The resource group.
    pub resource_group: String,
    /// The Azure OpenAI (Cognitive Services) account name.
    pub account: String,
    /// The ARM api-version.
    pub api_version: String,
    /// How to authenticate.
    pub credential: ArmCredential,
    /// Timeouts and retries.
    pub http: HttpSettings,
}

impl AzureDeployerConfig {
    /// A configuration with ARM's public endpoint and default api-version.
    pub fn new(
        subscription_id: impl Into<String>,
        resource_group: impl Into<String>,
        account: impl Into<String>,
        credential: ArmCredential,
    ) -> Self {
        Self {
            endpoint: ARM_ENDPOINT.to_owned(),
            subscription_id: subscription_id.into(),
            resource_group: resource_group.into(),
            account: account.into(),
            api_version: DEFAULT_ARM_API_VERSION.to_owned(),
            credential,
            http: HttpSettings::default(),
        }
    }

    /// Sets ARM's root.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// Sets timeouts and retries.
    pub fn with_http(mut self, http: HttpSettings) -> Self {
        self.http = http;
        self
    }
}

/// Deploys fine-tuned models on an Azure OpenAI resource through ARM.
///
/// A deployment's body is `sku {name, capacity}` and
/// `properties.model {format: "OpenAI", name: <fine-tuned model id>,
/// version: "1"}`, with the lifecycle's tags; its state is ARM's
/// `provisioningState`. PUT is create-or-update, so creating an existing name
/// returns it; deleting a missing one succeeds.
#[derive(Debug)]
pub struct AzureDeployer {
    api: Api,
    root: String,
    endpoint: url::Url,
}

#[derive(Debug, Deserialize)]
struct ArmDeployment {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    sku: Option<ArmSku>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    properties: Option<ArmProperties>,
}

#[derive(Debug, Deserialize)]
struct ArmSku {
    #[serde(default)]
    name: String,
    #[serde(default)]
    capacity: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArmProperties {
    #[serde(default)]
    provisioning_state: Option<String>,
    #[serde(default)]
    model: Option<ArmModel>,
}

#[derive(Debug, Deserialize)]
struct ArmModel {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArmList {
    #[serde(default)]
    value: Vec<ArmDeployment>,
    #[serde(default)]
    next_link: Option<String>,
}

fn checked<'a>(what: &str, value: &'a str) -> Result<&'a str> {
    let ok = !value.is_empty()
        && value.len() <= 90
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(value)
    } else {
        Err(Error::invalid_at(Location::column(what), format!("`{value}` is not a valid {what}")))
    }
}

impl AzureDeployer {
    /// A deployer for `config`.
    pub fn new(config: AzureDeployerConfig) -> Result<Self> {
        let root = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.CognitiveServices/accounts/{}/deployments",
            checked("subscription_id", &config.subscription_id)?,
            checked("resource_group", &config.resource_group)?,
            checked("account", &config.account)?,
        );
        let auth = match config.credential {
            ArmCredential::Entra(credential) => Auth::Entra { credential, scope: ARM_SCOPE },
            ArmCredential::Token(token) => Auth::Bearer(token),
        };
        let api = Api::new(
            &config.endpoint,
            vec![("api-version", config.api_version)],
            Vec::new(),
            auth,
            config.http,
        )?;
        let endpoint = url::Url::parse(&config.endpoint).map_err(|e| {
            Error::invalid_at(Location::column("endpoint"), format!("`{}`: {e}", config.endpoint))
        })?;
        Ok(Self { api, root, endpoint })
    }

    /// The path and query (without `api-version`, which every request
    /// carries) of ARM's `nextLink`, refused unless it points at the same
    /// endpoint: the token is never sent anywhere else.
    fn next_page(&self, link: &str) -> Result<(String, Vec<(String, String)>)> {
        let next = url::Url::parse(link).map_err(|e| {
            Error::other(format!("ARM answered an unreadable nextLink `{link}`"), e)
        })?;
        if next.origin() != self.endpoint.origin() {
            return Err(Error::Provider {
                status: None,
                code: Some("foreign_next_link".into()),
                message: format!("ARM's nextLink `{link}` leaves {}; not followed", self.endpoint),
                param: None,
            });
        }
        let base = self.endpoint.path().trim_end_matches('/');
        let path = next.path().strip_prefix(base).unwrap_or(next.path()).to_owned();
        let query = next
            .query_pairs()
            .filter(|(k, _)| k != "api-version")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok((path, query))
    }

    /// Retries made since this deployer was built.
    pub fn retries(&self) -> u64 {
        self.api.retries()
    }

    fn path(&self, name: &str) -> Result<String> {
        Ok(format!("{}/{}", self.root, checked("deployment name", name)?))
    }
}

fn state(provisioning: Option<&str>) -> DeploymentState {
    match provisioning {
        Some("Succeeded") => DeploymentState::Ready,
        Some("Accepted" | "Creating" | "Moving") | None => DeploymentState::Creating,
        Some("Deleting") => DeploymentState::Deleting,
        Some(failed @ ("Failed" | "Canceled" | "Disabled")) => {
            DeploymentState::Failed { reason: format!("provisioningState {failed}") }
        }
        Some(other) => DeploymentState::Unknown { name: other.to_owned() },
    }
}

impl From<ArmDeployment> for Deployment {
    fn from(d: ArmDeployment) -> Self {
        let name = d.name.unwrap_or_default();
        let props = d.properties;
        Deployment {
            id: name.clone(),
            name,
            model_id: props
                .as_ref()
                .and_then(|p| p.model.as_ref())
                .and_then(|m| m.name.clone())
                .unwrap_or_default(),
            state: state(props.as_ref().and_then(|p| p.provisioning_state.as_deref())),
            sku: d.sku.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            capacity: d
                .sku
                .and_then(|s| s.capacity)
                .map(|c| c.clamp(0, i64::from(u32::MAX)) as u32)
                .unwrap_or(0),
            tags: d.tags.unwrap_or_default(),
        }
    }
}

#[async_trait]
impl Deployer for AzureDeployer {
    fn name(&self) -> &str {
        "azure_openai"
    }

    fn serves(&self, provider: &str) -> bool {
        provider == "azure_openai"
    }

    async fn create(&self, spec: &DeploymentSpec) -> Result<Deployment> {
        spec.check()?;
        let body = serde_json::json!({
            "sku": { "name": spec.sku, "capacity": spec.capacity },
            "tags": spec.tags,
            "properties": { "model": { "format": "OpenAI", "name": spec.model_id, "version": "1" } },
        });
        let d: ArmDeployment =
            self.api.send_json(Method::PUT, &self.path(&spec.name)?, &[], Some(&body)).await?;
        let mut d = Deployment::from(d);
        if d.id.is_empty() {
            d.id = spec.name.clone();
            d.name = spec.name.clone();
        }
        Ok(d)
    }

    async fn get(&self, id: &str) -> Result<Option<Deployment>> {
        match self.api.send_json::<ArmDeployment>(Method::GET, &self.path(id)?, &[], None).await {
            Ok(d) => {
                let mut d = Deployment::from(d);
                if d.id.is_empty() {
                    d.id = id.to_owned();
                    d.name = id.to_owned();
                }
                Ok(Some(d))
            }
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, id: &str) -> Result<()> {
        // 200, 202 (accepted: deleting) and 204 all mean it is going away.
        match self
            .api
            .send_json::<serde_json::Value>(Method::DELETE, &self.path(id)?, &[], None)
            .await
        {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_managed(&self) -> Result<Vec<Deployment>> {
        // ARM pages long listings with nextLink; a link seen before would
        // loop forever, and one that is not a URL ends the listing.
        let all =
            collect_pages("ARM deployments", 10_000, RepeatedCursor::Fail, |link| async move {
                let list: ArmList = match link {
                    None => self.api.send_json(Method::GET, &self.root, &[], None).await?,
                    Some(link) => {
                        let (path, query) = self.next_page(&link)?;
                        let query: Vec<(&str, String)> =
                            query.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                        self.api.send_json(Method::GET, &path, &query, None).await?
                    }
                };
                let next = list.next_link.filter(|link| {
                    let readable = url::Url::parse(link).is_ok();
                    if !readable {
                        tracing::warn!(
                            link,
                            "ARM answered a nextLink that is not a URL; listing stops here"
                        );
                    }
                    readable
                });
                Ok(Page { items: list.value, next })
            })
            .await?;
        Ok(all.into_iter().map(Deployment::from).filter(Deployment::is_managed).collect())
    }
}
