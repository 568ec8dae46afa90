//! The control plane: creating, reading and stopping model customization
//! jobs, and reading the custom models they make.

use std::collections::BTreeMap;

use aws_sdk_bedrock::types::{
    CustomizationType, JobStatusDetails, ModelCustomizationJobStatus, OutputDataConfig, Tag,
    TrainingDataConfig, ValidationDataConfig, Validator,
};
use chrono::{DateTime, Utc};
use finetune_core::{
    Error, FineTunedModel, Job, JobId, JobSpec, JobState, ModelArtifacts, Progress, Result,
};

use super::metrics::final_figures;
use super::{BedrockProvider, aws_error, models};
use crate::REQUEST_ID_LABEL;
use crate::time::from_aws;

/// The job id in output paths: the last segment of the job ARN.
pub(super) fn job_short_id(job: &str) -> &str {
    job.rsplit('/').next().unwrap_or(job)
}

fn stamp_and_nonce() -> String {
    format!("{}-{:08x}", Utc::now().format("%Y%m%d%H%M%S"), fastrand::u32(..))
}

impl BedrockProvider {
    /// Sends `CreateModelCustomizationJob` for data already on S3 and returns
    /// the job ARN. The request carries `request_id` as its
    /// `clientRequestToken`, so retries of it never make a second job; when
    /// the SDK gives up, the job is looked up by its name first.
    pub async fn create_job(
        &self,
        spec: &JobSpec,
        training_uri: &str,
        validation_uri: Option<&str>,
    ) -> Result<String> {
        let hyper = self.check_spec(spec)?;
        let bucket = self.bucket()?;
        let nonce = stamp_and_nonce();
        let job_name = format!("finetune-{nonce}");
        let token = format!("finetune{}", nonce.replace('-', ""));
        let model_name = format!("{}-{nonce}", spec.suffix.as_deref().unwrap_or("finetune"));
        let mut tags: Vec<Tag> = Vec::new();
        for (k, v) in spec.metadata.iter().chain([(&REQUEST_ID_LABEL.to_owned(), &token)]) {
            tags.push(
                Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .map_err(|e| Error::other("building a tag", e))?,
            );
        }
        let mut request = self
            .control
            .create_model_customization_job()
            .job_name(&job_name)
            .custom_model_name(&model_name)
            .role_arn(self.config.role_arn.clone().unwrap_or_default())
            .client_request_token(&token)
            .base_model_identifier(&spec.base_model)
            .customization_type(CustomizationType::FineTuning)
            .training_data_config(TrainingDataConfig::builder().s3_uri(training_uri).build())
            .output_data_config(
                OutputDataConfig::builder()
                    .s3_uri(bucket.uri.join("output"))
                    .build()
                    .map_err(|e| Error::other("building the output config", e))?,
            )
            .set_job_tags(Some(tags));
        if let Some(v) = validation_uri {
            request = request.validation_data_config(
                ValidationDataConfig::builder()
                    .validators(
                        Validator::builder()
                            .s3_uri(v)
                            .build()
                            .map_err(|e| Error::other("building the validator", e))?,
                    )
                    .build()
                    .map_err(|e| Error::other("building the validation config", e))?,
            );
        }
        for (k, v) in hyper {
            request = request.hyper_parameters(k, v);
        }
        match request.send().await {
            Ok(out) => Ok(out.job_arn().to_owned()),
            Err(e) => {
                let err = aws_error("creating the customization job", e);
                if !err.is_retryable() {
                    return Err(err);
                }
                // The create may have landed with its answer lost: a job of
                // this name with our token is ours.
                match self
                    .control
                    .get_model_customization_job()
                    .job_identifier(&job_name)
                    .send()
                    .await
                {
                    Ok(found) if found.client_request_token() == Some(token.as_str()) => {
                        tracing::warn!(
                            job = found.job_arn(),
                            "the create's answer was lost; found its job"
                        );
                        Ok(found.job_arn().to_owned())
                    }
                    _ => Err(err),
                }
            }
        }
    }

    pub(super) async fn get(
        &self,
        id: &JobId,
    ) -> Result<
        aws_sdk_bedrock::operation::get_model_customization_job::GetModelCustomizationJobOutput,
    > {
        self.control
            .get_model_customization_job()
            .job_identifier(id.as_str())
            .send()
            .await
            .map_err(|e| aws_error(&format!("job {id}"), e))
    }

    pub(super) fn state_of(
        status: Option<&ModelCustomizationJobStatus>,
        details: Option<&aws_sdk_bedrock::types::StatusDetails>,
        failure: Option<&str>,
    ) -> JobState {
        let in_progress =
            |s: Option<&JobStatusDetails>| matches!(s, Some(JobStatusDetails::InProgress));
        match status {
            Some(ModelCustomizationJobStatus::InProgress) => {
                let validating = details.is_some_and(|d| {
                    in_progress(d.validation_details().and_then(|v| v.status()))
                        || in_progress(d.data_processing_details().and_then(|v| v.status()))
                });
                if validating {
                    JobState::Validating
                } else {
                    JobState::Running { progress: Progress::default() }
                }
            }
            Some(ModelCustomizationJobStatus::Failed) => JobState::Failed {
                reason: failure.unwrap_or("the job failed without a message").to_owned(),
                code: None,
            },
            Some(ModelCustomizationJobStatus::Stopping) => JobState::Cancelling,
            Some(ModelCustomizationJobStatus::Stopped) => JobState::Cancelled,
            Some(ModelCustomizationJobStatus::Completed) => {
                JobState::Unknown { name: "Completed".into() }
            }
            Some(other) => JobState::Unknown { name: other.as_str().to_owned() },
            None => JobState::Queued,
        }
    }

    pub(super) async fn to_job(
        &self,
        out: aws_sdk_bedrock::operation::get_model_customization_job::GetModelCustomizationJobOutput,
    ) -> Result<Job> {
        let base_model = models::model_id_of(out.base_model_arn()).to_owned();
        let id = JobId::new(out.job_arn());
        let mut state = Self::state_of(out.status(), out.status_details(), out.failure_message());
        if matches!(out.status(), Some(ModelCustomizationJobStatus::Completed)) {
            // The job is done whatever S3 says: a curve that cannot be read
            // now falls back to the job's final figures (`metrics` reports
            // the error).
            let curve = match self.curve_of(&out).await {
                Ok(curve) => curve,
                Err(e) => {
                    tracing::warn!(job = out.job_arn(), error = %e, "the metrics CSVs could not be read");
                    final_figures(&out)
                }
            };
            let model_arn = out.output_model_arn().unwrap_or_default().to_owned();
            let mut metadata = BTreeMap::new();
            match self.custom_model(&model_arn).await {
                Ok(details) => {
                    if let Some(status) = details.status {
                        metadata.insert("custom_model_status".to_owned(), status);
                    }
                }
                Err(e) => tracing::warn!(model = model_arn, error = %e, "custom model details"),
            }
            metadata.insert("custom_model_name".to_owned(), out.output_model_name().to_owned());
            metadata.insert("job_name".to_owned(), out.job_name().to_owned());
            if let Some(h) = out.hyper_parameters() {
                let resolved: BTreeMap<&String, &String> = h.iter().collect();
                if let Ok(json) = serde_json::to_string(&resolved) {
                    metadata.insert(finetune_core::HYPERPARAMETERS_KEY.to_owned(), json);
                }
            }
            if let Some(o) = out.output_data_config() {
                metadata.insert("output_s3_uri".to_owned(), o.s3_uri().to_owned());
            }
            metadata.insert(
                "deployment".to_owned(),
                "required: create a custom model deployment or provisioned throughput for it \
                 before calling it"
                    .to_owned(),
            );
            state = JobState::Succeeded {
                model: Box::new(FineTunedModel {
                    provider: "bedrock".to_owned(),
                    model_id: model_arn.clone(),
                    base_model: base_model.clone(),
                    job_id: Some(id.clone()),
                    created_at: out
                        .end_time()
                        .map(from_aws)
                        .unwrap_or_else(|| from_aws(out.creation_time())),
                    requires_deployment: true,
                    artifacts: ModelArtifacts::Remote { id: model_arn },
                    loss_curve: curve,
                    metadata,
                }),
            };
        }
        Ok(Job {
            id,
            provider: "bedrock".to_owned(),
            base_model,
            state,
            created_at: from_aws(out.creation_time()),
            metadata: BTreeMap::new(),
        })
    }

    /// The custom model a completed job made (`GetCustomModel`).
    pub async fn custom_model(&self, model: &str) -> Result<CustomModel> {
        let out = self
            .control
            .get_custom_model()
            .model_identifier(model)
            .send()
            .await
            .map_err(|e| aws_error(&format!("custom model {model}"), e))?;
        Ok(CustomModel {
            arn: out.model_arn().to_owned(),
            name: out.model_name().to_owned(),
            base_model: models::model_id_of(out.base_model_arn().unwrap_or_default()).to_owned(),
            job_arn: out.job_arn().map(str::to_owned),
            status: out.model_status().map(|s| s.as_str().to_owned()),
            created_at: from_aws(out.creation_time()),
            hyperparameters: out
                .hyper_parameters()
                .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        })
    }
}

/// A custom model's details.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomModel {
    /// Its ARN, the id to deploy.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// The base model id.
    pub base_model: String,
    /// The job that made it.
    pub job_arn: Option<String>,
    /// `Active`, `Creating` or `Failed`, when Bedrock says.
    pub status: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// The hyperparameters it was trained with.
    pub hyperparameters: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_from_status_and_details() {
        use aws_sdk_bedrock::types::{StatusDetails, ValidationDetails};
        let validating = StatusDetails::builder()
            .validation_details(
                ValidationDetails::builder().status(JobStatusDetails::InProgress).build(),
            )
            .build();
        assert_eq!(
            BedrockProvider::state_of(
                Some(&ModelCustomizationJobStatus::InProgress),
                Some(&validating),
                None
            ),
            JobState::Validating
        );
        assert!(matches!(
            BedrockProvider::state_of(Some(&ModelCustomizationJobStatus::InProgress), None, None),
            JobState::Running { .. }
        ));
        assert_eq!(
            BedrockProvider::state_of(Some(&ModelCustomizationJobStatus::Stopping), None, None),
            JobState::Cancelling
        );
        assert_eq!(
            BedrockProvider::state_of(Some(&"Paused".into()), None, None),
            JobState::Unknown { name: "Paused".into() }
        );
    }
}
