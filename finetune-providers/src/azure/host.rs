//! What Azure OpenAI does its own way on the shared protocol.

use finetune_core::{Error, JobSpec, Location, Result};

use crate::openai_compatible::wire::WireJob;
use crate::openai_compatible::{CreateRequest, Host, checked_id, learning_rate_json};

/// Azure OpenAI: models answer only through (billed) deployments, jobs keep
/// no metadata (a lost create is found by model, files, suffix, seed and
/// time), the 2024-10-21 API takes numeric hyperparameters only, suffixes
/// are at most 40 characters of `a-z A-Z 0-9 - _`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Azure;

impl Host for Azure {
    fn name(&self) -> &'static str {
        "azure_openai"
    }

    fn kind(&self) -> finetune_core::ProviderKind {
        finetune_core::ProviderKind::AzureOpenAi
    }

    fn requires_deployment(&self) -> bool {
        true
    }

    fn check_spec(&self, spec: &JobSpec) -> Result<()> {
        if let Some(suffix) = &spec.suffix
            && (suffix.len() > 40
                || !suffix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Err(Error::invalid_at(
                Location::column("suffix"),
                "Azure OpenAI takes at most 40 characters of a-z, A-Z, 0-9, - and _",
            ));
        }
        Ok(())
    }

    fn files_query(&self) -> Vec<(&'static str, String)> {
        vec![("purpose", "fine-tune".to_owned())]
    }

    fn complete_create_body(
        &self,
        body: &mut serde_json::Value,
        spec: &JobSpec,
        _request_id: &str,
    ) {
        // The 2024-10-21 API takes numbers only: leave out what is auto.
        let h = &spec.hyperparameters;
        let mut hyper = serde_json::Map::new();
        if let Some(e) = h.epochs.value() {
            hyper.insert("n_epochs".into(), e.into());
        }
        if let Some(b) = h.batch_size.value() {
            hyper.insert("batch_size".into(), b.into());
        }
        if h.learning_rate.value().is_some() {
            hyper.insert("learning_rate_multiplier".into(), learning_rate_json(h.learning_rate));
        }
        if !hyper.is_empty() {
            body["hyperparameters"] = hyper.into();
        }
    }

    fn created_job_query(&self, _request: &CreateRequest<'_>) -> Vec<(String, String)> {
        vec![("limit".into(), "100".into())]
    }

    fn is_created_job(&self, job: &WireJob, request: &CreateRequest<'_>) -> bool {
        let spec = request.spec;
        job.model.as_deref() == Some(spec.base_model.as_str())
            && job.training_file.as_deref() == Some(request.training)
            && job.validation_file.as_deref() == request.validation
            && job.suffix.as_deref().is_none_or(|s| {
                Some(s) == spec.suffix.as_deref()
                    || spec.suffix.as_deref().is_some_and(|want| s.contains(want))
            })
            && (spec.seed.is_none() || job.seed == spec.seed.map(|s| s as i64))
            && job.created_at.is_none_or(|t| t >= request.since)
    }

    fn chat_request(
        &self,
        target: &str,
        request: &finetune_core::ChatRequest,
    ) -> Result<(String, serde_json::Value)> {
        let path = format!("/deployments/{}/chat/completions", checked_id("deployment", target)?);
        let mut body = crate::openai_compatible::chat_body(request);
        if let Some(n) = request.max_tokens {
            body["max_tokens"] = n.into();
        }
        Ok((path, body))
    }
}
