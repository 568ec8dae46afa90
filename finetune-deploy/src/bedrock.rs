//! Bedrock deployments of custom models, both kinds, chosen by the
//! policy's `sku`:
//!
//! | `sku` | what is created | `capacity` |
//! |-------|-----------------|------------|
//! | `on-demand` | a custom model deployment (`CreateCustomModelDeployment`), billed per token | ignored |
//! | `provisioned` | provisioned throughput without commitment (`CreateProvisionedModelThroughput`), billed per hour | model units |
//! | `provisioned-1-month`, `provisioned-6-months` | provisioned throughput with that commitment | model units |
//!
//! Deployment ids are the ARNs Bedrock returns. Creating a deployment whose
//! name exists (a create whose answer was lost, replayed by `reconcile`)
//! returns the existing one when it serves the same model. Deployments this
//! library creates carry [`MANAGED_TAG`]; `list_managed` reads each one's
//! tags.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use aws_sdk_bedrock::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrock::types::{
    CommitmentDuration, CustomModelDeploymentStatus, ProvisionedModelStatus, Tag,
};
use finetune_core::pagination::{RepeatedCursor, collect_pages};
use finetune_core::{Error, Location, Page, Result};
use finetune_providers::bedrock::aws_error;

use crate::deployer::{Deployer, Deployment, DeploymentSpec, DeploymentState, MANAGED_TAG};

/// The `sku` of an on-demand custom model deployment.
pub const ON_DEMAND: &str = "on-demand";
/// The `sku` of provisioned throughput without commitment.
pub const PROVISIONED: &str = "provisioned";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OnDemand,
    Provisioned(Option<CommitmentKind>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommitmentKind {
    OneMonth,
    SixMonths,
}

fn kind_of_sku(sku: &str) -> Result<Kind> {
    match sku {
        ON_DEMAND => Ok(Kind::OnDemand),
        PROVISIONED => Ok(Kind::Provisioned(None)),
        "provisioned-1-month" => Ok(Kind::Provisioned(Some(CommitmentKind::OneMonth))),
        "provisioned-6-months" => Ok(Kind::Provisioned(Some(CommitmentKind::SixMonths))),
        other => Err(Error::invalid_at(
            Location::column("sku"),
            format!(
                "Bedrock deployments take the sku `{ON_DEMAND}`, `{PROVISIONED}`, \
                 `provisioned-1-month` or `provisioned-6-months`, not `{other}`"
            ),
        )),
    }
}

fn is_provisioned_arn(id: &str) -> bool {
    id.contains(":provisioned-model/")
}

/// Bedrock's custom model deployments and provisioned throughput.
#[derive(Clone)]
pub struct BedrockDeployer {
    control: aws_sdk_bedrock::Client,
}

impl fmt::Debug for BedrockDeployer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockDeployer").finish_non_exhaustive()
    }
}

fn is_conflict<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    matches!(err, SdkError::ServiceError(s) if s.err().code() == Some("ConflictException"))
}

fn on_demand_state(status: &CustomModelDeploymentStatus, failure: Option<&str>) -> DeploymentState {
    match status {
        CustomModelDeploymentStatus::Creating => DeploymentState::Creating,
        CustomModelDeploymentStatus::Active => DeploymentState::Ready,
        CustomModelDeploymentStatus::Failed => {
            DeploymentState::Failed { reason: failure.unwrap_or("Failed").to_owned() }
        }
        other => DeploymentState::Unknown { name: other.as_str().to_owned() },
    }
}

fn provisioned_state(status: &ProvisionedModelStatus, failure: Option<&str>) -> DeploymentState {
    match status {
        ProvisionedModelStatus::Creating | ProvisionedModelStatus::Updating => {
            DeploymentState::Creating
        }
        ProvisionedModelStatus::InService => DeploymentState::Ready,
        ProvisionedModelStatus::Failed => {
            DeploymentState::Failed { reason: failure.unwrap_or("Failed").to_owned() }
        }
        other => DeploymentState::Unknown { name: other.as_str().to_owned() },
    }
}

fn commitment_sku(c: Option<&CommitmentDuration>) -> String {
    match c {
        None => PROVISIONED.to_owned(),
        Some(CommitmentDuration::OneMonth) => "provisioned-1-month".to_owned(),
        Some(CommitmentDuration::SixMonths) => "provisioned-6-months".to_owned(),
        Some(other) => format!("provisioned-{}", other.as_str()),
    }
}

impl BedrockDeployer {
    /// A deployer over a Bedrock control-plane client (e.g.
    /// `finetune_providers::BedrockProvider::control_client`).
    pub fn new(control: aws_sdk_bedrock::Client) -> Self {
        Self { control }
    }

    async fn tags(&self, arn: &str) -> Result<BTreeMap<String, String>> {
        let out = self
            .control
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .map_err(|e| aws_error(&format!("tags of {arn}"), e))?;
        Ok(out.tags().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect())
    }

    async fn get_on_demand(&self, id: &str) -> Result<Option<Deployment>> {
        match self
            .control
            .get_custom_model_deployment()
            .custom_model_deployment_identifier(id)
            .send()
            .await
        {
            Ok(d) => Ok(Some(Deployment {
                id: d.custom_model_deployment_arn().to_owned(),
                name: d.model_deployment_name().to_owned(),
                model_id: d.model_arn().to_owned(),
                state: on_demand_state(d.status(), d.failure_message()),
                sku: ON_DEMAND.to_owned(),
                capacity: 0,
                tags: self.tags(d.custom_model_deployment_arn()).await?,
            })),
            Err(e) => match aws_error(&format!("deployment {id}"), e) {
                Error::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn get_provisioned(&self, id: &str) -> Result<Option<Deployment>> {
        match self.control.get_provisioned_model_throughput().provisioned_model_id(id).send().await
        {
            Ok(d) => Ok(Some(Deployment {
                id: d.provisioned_model_arn().to_owned(),
                name: d.provisioned_model_name().to_owned(),
                model_id: d.model_arn().to_owned(),
                state: provisioned_state(d.status(), d.failure_message()),
                sku: commitment_sku(d.commitment_duration()),
                capacity: u32::try_from(d.model_units()).unwrap_or(0),
                tags: self.tags(d.provisioned_model_arn()).await?,
            })),
            Err(e) => match aws_error(&format!("provisioned throughput {id}"), e) {
                Error::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Every deployment of either kind, all pages, as `(arn, name,
    /// provisioned)` from the listings alone.
    async fn list_all(&self) -> Result<Vec<(String, String, bool)>> {
        let mut all = collect_pages(
            "custom model deployments",
            10_000,
            RepeatedCursor::Fail,
            |next| async move {
                let out = self
                    .control
                    .list_custom_model_deployments()
                    .max_results(100)
                    .set_next_token(next)
                    .send()
                    .await
                    .map_err(|e| aws_error("listing custom model deployments", e))?;
                let items = out.model_deployment_summaries().iter().map(|s| {
                    let arn = s.custom_model_deployment_arn().to_owned();
                    (arn, s.custom_model_deployment_name().to_owned(), false)
                });
                Ok(Page { items: items.collect(), next: out.next_token().map(str::to_owned) })
            },
        )
        .await?;
        let provisioned = collect_pages(
            "provisioned throughput",
            10_000,
            RepeatedCursor::Fail,
            |next| async move {
                let out = self
                    .control
                    .list_provisioned_model_throughputs()
                    .max_results(100)
                    .set_next_token(next)
                    .send()
                    .await
                    .map_err(|e| aws_error("listing provisioned throughput", e))?;
                let items = out.provisioned_model_summaries().iter().map(|s| {
                    let arn = s.provisioned_model_arn().to_owned();
                    (arn, s.provisioned_model_name().to_owned(), true)
                });
                Ok(Page { items: items.collect(), next: out.next_token().map(str::to_owned) })
            },
        )
        .await?;
        all.extend(provisioned);
        Ok(all)
    }

    async fn find_by_name(&self, name: &str, provisioned: bool) -> Result<Option<Deployment>> {
        // The listing carries names: only the match is read in full.
        let found = self
            .list_all()
            .await?
            .into_iter()
            .find(|(_, n, is_provisioned)| n == name && *is_provisioned == provisioned);
        match found {
            Some((arn, _, true)) => self.get_provisioned(&arn).await,
            Some((arn, _, false)) => self.get_on_demand(&arn).await,
            None => Ok(None),
        }
    }
}

fn tags_of(spec: &DeploymentSpec) -> Result<Vec<Tag>> {
    spec.tags
        .iter()
        .map(|(k, v)| {
            Tag::builder().key(k).value(v).build().map_err(|e| Error::other("building a tag", e))
        })
        .collect()
}

#[async_trait]
impl Deployer for BedrockDeployer {
    fn name(&self) -> &str {
        "bedrock"
    }

    fn default_sku(&self) -> &str {
        ON_DEMAND
    }

    fn serves(&self, provider: &str) -> bool {
        provider == "bedrock"
    }

    async fn create(&self, spec: &DeploymentSpec) -> Result<Deployment> {
        spec.check()?;
        let kind = kind_of_sku(&spec.sku)?;
        // A token per call: the SDK's retries of this call reuse it, so a
        // lost answer never makes a second deployment.
        let token = format!("finetune{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let provisioned = matches!(kind, Kind::Provisioned(_));
        let sent = match kind {
            Kind::OnDemand => self
                .control
                .create_custom_model_deployment()
                .model_deployment_name(&spec.name)
                .model_arn(&spec.model_id)
                .client_request_token(&token)
                .set_tags(Some(tags_of(spec)?))
                .send()
                .await
                .map(|out| out.custom_model_deployment_arn().to_owned())
                .map_err(|e| (is_conflict(&e), aws_error(&format!("deploying {}", spec.name), e))),
            Kind::Provisioned(commitment) => {
                if spec.capacity == 0 {
                    return Err(Error::invalid_at(
                        Location::column("capacity"),
                        "provisioned throughput needs at least one model unit",
                    ));
                }
                self.control
                    .create_provisioned_model_throughput()
                    .provisioned_model_name(&spec.name)
                    .model_id(&spec.model_id)
                    .model_units(i32::try_from(spec.capacity).unwrap_or(i32::MAX))
                    .set_commitment_duration(commitment.map(|c| match c {
                        CommitmentKind::OneMonth => CommitmentDuration::OneMonth,
                        CommitmentKind::SixMonths => CommitmentDuration::SixMonths,
                    }))
                    .client_request_token(&token)
                    .set_tags(Some(tags_of(spec)?))
                    .send()
                    .await
                    .map(|out| out.provisioned_model_arn().to_owned())
                    .map_err(|e| {
                        (is_conflict(&e), aws_error(&format!("provisioning {}", spec.name), e))
                    })
            }
        };
        let arn = match sent {
            Ok(arn) => arn,
            Err((conflict, err)) => {
                // The name exists: ours from an earlier attempt when it
                // serves the same model.
                if (conflict || err.is_retryable())
                    && let Some(d) = self.find_by_name(&spec.name, provisioned).await?
                    && d.model_id == spec.model_id
                {
                    return Ok(d);
                }
                return Err(err);
            }
        };
        match self.get(&arn).await? {
            Some(d) => Ok(d),
            None => Ok(Deployment::creating(arn, spec)),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Deployment>> {
        if is_provisioned_arn(id) {
            return self.get_provisioned(id).await;
        }
        match self.get_on_demand(id).await? {
            Some(d) => Ok(Some(d)),
            // A name rather than an ARN may be either kind.
            None if !id.starts_with("arn:") => self.get_provisioned(id).await,
            None => Ok(None),
        }
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let result = if is_provisioned_arn(id) {
            self.control
                .delete_provisioned_model_throughput()
                .provisioned_model_id(id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws_error(&format!("deleting {id}"), e))
        } else {
            self.control
                .delete_custom_model_deployment()
                .custom_model_deployment_identifier(id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws_error(&format!("deleting {id}"), e))
        };
        match result {
            Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_managed(&self) -> Result<Vec<Deployment>> {
        let mut managed = Vec::new();
        // Tags first: only deployments of ours are read in full.
        for (arn, _, _) in self.list_all().await? {
            let tags = match self.tags(&arn).await {
                Ok(tags) => tags,
                // Deleted since it was listed.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let ours = tags.get(MANAGED_TAG).map(String::as_str) == Some("true");
            if ours && let Some(d) = self.get(&arn).await? {
                managed.push(d);
            }
        }
        Ok(managed)
    }
}
