//! A saved model version's summary: how it was made, how its losses
//! ended, where it is deployed and what that costs an hour, and its loss
//! graph — all read from the registry (and the deployer), so it renders
//! after the process that trained it is gone.

use std::fmt;
use std::path::{Path, PathBuf};

use finetune_core::{LossCurve, Result};

use crate::lifecycle::Lifecycle;
use crate::registry::{Origin, Provenance};

/// One deployment of the version.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSummary {
    /// The platform's id.
    pub id: String,
    /// Its state on the platform (`gone` when it no longer exists there).
    pub state: String,
    /// Whether it is the model's active deployment.
    pub active: bool,
    /// Whether this library created it (else a user attached it).
    pub created: bool,
    /// Estimated cost per hour, from the lifecycle's price table.
    pub hourly_cost: Option<f64>,
}

/// A version's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionSummary {
    /// The saved model.
    pub model: String,
    /// The version.
    pub version: u64,
    /// Whether it is the active version.
    pub active: bool,
    /// The fine-tuned model's id at its provider.
    pub model_id: String,
    /// The provider.
    pub provider: String,
    /// The base model.
    pub base_model: String,
    /// Whether it must be deployed to answer.
    pub requires_deployment: bool,
    /// How it was made (versions registered by a recipe).
    pub provenance: Option<Provenance>,
    /// Its loss curve.
    pub curve: LossCurve,
    /// Its deployments.
    pub deployments: Vec<DeploymentSummary>,
}

impl VersionSummary {
    /// The summary of `model`'s `version`, from the registry and the
    /// lifecycle's deployer.
    pub async fn of(lifecycle: &Lifecycle, model: &str, version: u64) -> Result<Self> {
        let registry = lifecycle.registry();
        let record = registry.version(model, version).await?;
        let head = registry.head(model).await?;
        let mut deployments = Vec::new();
        for d in head.deployments.iter().filter(|d| d.version == version) {
            let found = lifecycle.deployer().get(&d.id).await?;
            deployments.push(DeploymentSummary {
                id: d.id.clone(),
                state: found.as_ref().map_or_else(|| "gone".to_owned(), |f| f.state.to_string()),
                active: head.active_deployment.as_deref() == Some(d.id.as_str()),
                created: d.origin == Origin::Created,
                hourly_cost: found.and_then(|f| lifecycle.prices().hourly(&f.sku, f.capacity)),
            });
        }
        Ok(Self {
            model: model.to_owned(),
            version,
            active: head.active_version == Some(version),
            model_id: record.model.model_id.clone(),
            provider: record.model.provider.clone(),
            base_model: record.model.base_model.clone(),
            requires_deployment: record.model.requires_deployment,
            provenance: record.provenance,
            curve: record.model.loss_curve,
            deployments,
        })
    }

    /// The last training loss.
    pub fn final_train_loss(&self) -> Option<f64> {
        self.curve.last_train_loss()
    }

    /// The last validation loss.
    pub fn final_validation_loss(&self) -> Option<f64> {
        self.curve.validation_series().last().map(|p| p.1)
    }

    /// The lowest validation loss and its step.
    pub fn best_validation_loss(&self) -> Option<(u64, f64)> {
        self.curve.best_validation()
    }

    /// The estimated hourly cost of its deployments, when priced.
    pub fn hourly_cost(&self) -> Option<f64> {
        let priced: Vec<f64> = self.deployments.iter().filter_map(|d| d.hourly_cost).collect();
        (!priced.is_empty()).then(|| priced.iter().sum())
    }

    /// Draws the loss graph (validation loss too when there is some) into
    /// `dir` as `<model>-v<version>-loss.svg` and `.png`; `None` when the
    /// curve is empty (it could not be read from the provider) — an empty
    /// curve is never drawn as a fake point.
    pub fn save_loss_graph(&self, dir: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
        if self.curve.train_series().is_empty() {
            return Ok(None);
        }
        std::fs::create_dir_all(dir).map_err(|e| finetune_core::Error::io(dir, e))?;
        let title = format!(
            "{} v{}: {}",
            self.model,
            self.version,
            if self.curve.has_validation() {
                "training and validation loss"
            } else {
                "training loss"
            }
        );
        let options = finetune_core::PlotOptions::titled(&title);
        let stem = format!("{}-v{}-loss", self.model, self.version);
        let (svg, png) = (dir.join(format!("{stem}.svg")), dir.join(format!("{stem}.png")));
        self.curve.save_plot(&svg, &options)?;
        self.curve.save_plot(&png, &options)?;
        Ok(Some((svg, png)))
    }
}

impl fmt::Display for VersionSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let active = if self.active { " (active)" } else { "" };
        writeln!(f, "{} version {}{active}", self.model, self.version)?;
        writeln!(f, "  model:       {} ({})", self.model_id, self.provider)?;
        writeln!(f, "  base model:  {}", self.base_model)?;
        if let Some(p) = &self.provenance {
            writeln!(f, "  connection:  {} (job {})", p.connection, p.job_id)?;
            let took = (p.finished_at - p.submitted_at).num_milliseconds() as f64 / 1000.0;
            writeln!(
                f,
                "  trained:     {} → {} ({took:.1} s)",
                p.submitted_at.format("%F %T"),
                p.finished_at.format("%T")
            )?;
            let h = &p.hyperparameters;
            writeln!(
                f,
                "  settings:    epochs {}, batch size {}, learning rate {}",
                h.epochs, h.batch_size, h.learning_rate
            )?;
            if let Some(resolved) = &p.resolved_hyperparameters {
                writeln!(f, "  resolved:    {resolved}")?;
            }
            if let Some(tokens) = p.trained_tokens {
                writeln!(f, "  trained on:  {tokens} tokens (as the provider counted)")?;
            }
            for d in &p.datasets {
                let tokens = d.tokens.map(|t| format!(", ~{t} tokens")).unwrap_or_default();
                let short = d.sha256.get(..12).unwrap_or(&d.sha256);
                writeln!(
                    f,
                    "  {:<12} {} ({} rows{tokens}, sha256 {short}…)",
                    format!("{}:", d.role),
                    d.location,
                    d.rows
                )?;
            }
        }
        let train = self.curve.train_series();
        match (train.first(), self.final_train_loss()) {
            (Some((_, first)), Some(last)) => {
                writeln!(f, "  train loss:  {first:.4} → {last:.4} over {} steps", train.len())?
            }
            _ => writeln!(
                f,
                "  train loss:  not available (the provider's metrics could not be read)"
            )?,
        }
        if let (Some(last), Some((step, best))) =
            (self.final_validation_loss(), self.best_validation_loss())
        {
            writeln!(f, "  valid loss:  {last:.4} (best {best:.4} at step {step})")?;
        }
        if !self.requires_deployment {
            writeln!(f, "  deployment:  none needed")?;
        } else if self.deployments.is_empty() {
            writeln!(f, "  deployment:  none (deploy it before use)")?;
        }
        for d in &self.deployments {
            let cost = d.hourly_cost.map(|c| format!(", ~{c:.2}/h")).unwrap_or_default();
            let active = if d.active { ", active" } else { "" };
            writeln!(f, "  deployment:  {} ({}{active}{cost})", d.id, d.state)?;
        }
        Ok(())
    }
}
