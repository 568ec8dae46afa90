//! What each Bedrock base model accepts: its data format and the ranges of
//! its hyperparameters, checked before anything is uploaded.

use finetune_core::{Error, JobSpec, LearningRate, Location, Result, Setting};

/// The JSONL layout a base model trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BedrockDataFormat {
    /// `{"prompt": …, "completion": …}` (Titan Text, Llama 3.1). A system
    /// message, where present, is put before the prompt.
    PromptCompletion,
    /// The `bedrock-conversation-2024` schema with `system` and `messages`
    /// (Nova).
    Conversation,
}

impl BedrockDataFormat {
    pub(crate) fn output_format(self) -> finetune_data::OutputFormat {
        match self {
            Self::PromptCompletion => finetune_data::OutputFormat::Bedrock,
            Self::Conversation => finetune_data::OutputFormat::BedrockConversation,
        }
    }
}

/// An inclusive range of a hyperparameter and the provider's default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range<T> {
    /// The smallest value accepted.
    pub min: T,
    /// The largest value accepted.
    pub max: T,
    /// What Bedrock uses when the value is left out.
    pub default: T,
}

impl<T> Range<T> {
    /// `min..=max`, defaulting to `default`.
    pub const fn new(min: T, max: T, default: T) -> Self {
        Self { min, max, default }
    }
}

/// What one family of base models accepts. The built-in table covers Titan
/// Text, Nova and Llama 3.1 (from the Bedrock user guide's "Custom model
/// hyperparameters"); [`crate::BedrockConfig::with_model_rules`] adds or
/// replaces families for other models.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseModelRules {
    /// A readable name of the family.
    pub family: String,
    /// The training data layout.
    pub format: BedrockDataFormat,
    /// `epochCount`, when settable.
    pub epochs: Option<Range<u32>>,
    /// `batchSize`, when settable.
    pub batch_size: Option<Range<u32>>,
    /// `learningRate` (absolute), when settable.
    pub learning_rate: Option<Range<f64>>,
    /// `learningRateWarmupSteps` (from the spec's extras), when settable.
    pub warmup_steps: Option<Range<u32>>,
    /// Whether a validation dataset is accepted.
    pub validation: bool,
}

impl BaseModelRules {
    /// Rules for a family with no settable hyperparameter; add them with the
    /// struct's fields.
    pub fn new(family: impl Into<String>, format: BedrockDataFormat) -> Self {
        Self {
            family: family.into(),
            format,
            epochs: None,
            batch_size: None,
            learning_rate: None,
            warmup_steps: None,
            validation: true,
        }
    }

    /// The built-in rules: `(model id prefix, rules)`, longest prefix wins.
    pub fn builtin() -> Vec<(String, BaseModelRules)> {
        let titan = BaseModelRules {
            epochs: Some(Range::new(1, 10, 5)),
            batch_size: Some(Range::new(1, 64, 1)),
            learning_rate: Some(Range::new(0.0, 1.0, 1e-5)),
            warmup_steps: Some(Range::new(0, 250, 5)),
            ..Self::new("Amazon Titan Text (Lite, Express)", BedrockDataFormat::PromptCompletion)
        };
        let premier = BaseModelRules {
            epochs: Some(Range::new(1, 5, 2)),
            batch_size: Some(Range::new(1, 1, 1)),
            learning_rate: Some(Range::new(1e-7, 1e-5, 1e-6)),
            warmup_steps: Some(Range::new(0, 20, 5)),
            ..Self::new("Amazon Titan Text Premier", BedrockDataFormat::PromptCompletion)
        };
        let nova = BaseModelRules {
            epochs: Some(Range::new(1, 5, 2)),
            learning_rate: Some(Range::new(1e-6, 1e-4, 1e-5)),
            warmup_steps: Some(Range::new(0, 100, 10)),
            ..Self::new("Amazon Nova (Micro, Lite, Pro)", BedrockDataFormat::Conversation)
        };
        let llama31 = BaseModelRules {
            epochs: Some(Range::new(1, 10, 5)),
            batch_size: Some(Range::new(1, 1, 1)),
            learning_rate: Some(Range::new(5e-6, 0.1, 1e-4)),
            ..Self::new("Meta Llama 3.1 (8B, 70B)", BedrockDataFormat::PromptCompletion)
        };
        [
            ("amazon.titan-text-lite-v1", &titan),
            ("amazon.titan-text-express-v1", &titan),
            ("amazon.titan-text-premier-v1", &premier),
            ("amazon.nova-micro-v1", &nova),
            ("amazon.nova-lite-v1", &nova),
            ("amazon.nova-pro-v1", &nova),
            ("meta.llama3-1-8b-instruct-v1", &llama31),
            ("meta.llama3-1-70b-instruct-v1", &llama31),
        ]
        .into_iter()
        .map(|(p, r)| (p.to_owned(), r.clone()))
        .collect()
    }

    /// The rules for `base_model` (a model id or a foundation-model ARN)
    /// among `table`: the longest matching prefix.
    pub fn find<'a>(table: &'a [(String, BaseModelRules)], base_model: &str) -> Option<&'a Self> {
        let id = model_id_of(base_model);
        table
            .iter()
            .filter(|(prefix, _)| id.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, rules)| rules)
    }

    /// Checks the spec's hyperparameters and extras against these rules and
    /// returns Bedrock's `hyperParameters` map (strings, as the API takes).
    pub fn hyperparameters(&self, spec: &JobSpec) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let h = &spec.hyperparameters;
        let refuse = |field: &str, message: String| {
            Err(Error::invalid_at(Location::column(field.to_owned()), message))
        };
        if spec.validation.is_some() && !self.validation {
            return refuse("validation", format!("{} takes no validation dataset", self.family));
        }
        if let Some(epochs) = h.epochs.value() {
            let Some(r) = self.epochs else {
                return refuse(
                    "hyperparameters.epochs",
                    format!("{} has no epoch count to set", self.family),
                );
            };
            if epochs < r.min || epochs > r.max {
                return refuse(
                    "hyperparameters.epochs",
                    format!("{} takes {} to {} epochs, got {epochs}", self.family, r.min, r.max),
                );
            }
            out.push(("epochCount".to_owned(), epochs.to_string()));
        }
        if let Some(batch) = h.batch_size.value() {
            let Some(r) = self.batch_size else {
                return refuse(
                    "hyperparameters.batch_size",
                    format!("{} has no batch size to set", self.family),
                );
            };
            if batch < r.min || batch > r.max {
                return refuse(
                    "hyperparameters.batch_size",
                    format!(
                        "{} takes a batch size of {} to {}, got {batch}",
                        self.family, r.min, r.max
                    ),
                );
            }
            out.push(("batchSize".to_owned(), batch.to_string()));
        }
        match h.learning_rate {
            Setting::Auto => {}
            Setting::Value(LearningRate::Multiplier(m)) => {
                return refuse(
                    "hyperparameters.learning_rate",
                    format!(
                        "Bedrock takes an absolute learning rate, not a multiplier ({m}); {} \
                         defaults to {}",
                        self.family,
                        self.learning_rate
                            .map(|r| r.default.to_string())
                            .unwrap_or_else(|| "its own".into())
                    ),
                );
            }
            Setting::Value(LearningRate::Absolute(lr)) => {
                let Some(r) = self.learning_rate else {
                    return refuse(
                        "hyperparameters.learning_rate",
                        format!("{} has no learning rate to set", self.family),
                    );
                };
                if !lr.is_finite() || lr < r.min || lr > r.max {
                    return refuse(
                        "hyperparameters.learning_rate",
                        format!(
                            "{} takes a learning rate from {:e} to {:e}, got {lr:e}",
                            self.family, r.min, r.max
                        ),
                    );
                }
                out.push(("learningRate".to_owned(), format!("{lr}")));
            }
        }
        for (key, value) in &spec.extras {
            let field = format!("extras.{key}");
            match key.as_str() {
                "learningRateWarmupSteps" | "learning_rate_warmup_steps" | "warmup_steps" => {
                    let Some(r) = self.warmup_steps else {
                        return refuse(
                            &field,
                            format!("{} has no warmup steps to set", self.family),
                        );
                    };
                    let steps = value
                        .as_u64()
                        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                        .and_then(|v| u32::try_from(v).ok());
                    match steps {
                        Some(s) if s >= r.min && s <= r.max => {
                            out.push(("learningRateWarmupSteps".to_owned(), s.to_string()));
                        }
                        _ => {
                            return refuse(
                                &field,
                                format!(
                                    "{} takes {} to {} warmup steps, got {value}",
                                    self.family, r.min, r.max
                                ),
                            );
                        }
                    }
                }
                _ => {
                    return refuse(
                        &field,
                        "Bedrock takes `learningRateWarmupSteps` here and nothing else".to_owned(),
                    );
                }
            }
        }
        Ok(out)
    }
}

/// `amazon.titan-text-lite-v1:0:4k` from itself or from
/// `arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-text-lite-v1:0:4k`.
pub(crate) fn model_id_of(model: &str) -> &str {
    match model.rsplit_once("foundation-model/") {
        Some((_, id)) => id,
        None => model,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finetune_core::DatasetSource;

    fn spec(model: &str) -> JobSpec {
        JobSpec::new(model, DatasetSource::new("train.jsonl").expect("a source"))
    }

    #[test]
    fn the_data_rules_agree_with_the_hyperparameter_table() {
        // Two tables, one per concern: the epochs the cost estimate assumes
        // and whether a validation set is taken must be this table's.
        for (prefix, rules) in BaseModelRules::builtin() {
            let data =
                finetune_core::DataRules::builtin(&finetune_core::ProviderKind::Bedrock, &prefix);
            let epochs = rules.epochs.map(|e| e.default);
            assert_eq!(
                Some(data.default_epochs),
                epochs.map(finetune_core::rules::DefaultEpochs::Fixed),
                "{prefix}"
            );
            assert_eq!(data.validation, rules.validation, "{prefix}");
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_arns_resolve() {
        let table = BaseModelRules::builtin();
        let titan = BaseModelRules::find(&table, "amazon.titan-text-lite-v1:0:4k").expect("titan");
        assert_eq!(titan.format, BedrockDataFormat::PromptCompletion);
        let nova = BaseModelRules::find(
            &table,
            "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-micro-v1:0:128k",
        )
        .expect("nova");
        assert_eq!(nova.format, BedrockDataFormat::Conversation);
        assert!(
            BaseModelRules::find(&table, "anthropic.claude-3-haiku-20240307-v1:0:200k").is_none()
        );
    }

    #[test]
    fn ranges_are_enforced_with_the_field_named() {
        let table = BaseModelRules::builtin();
        let premier =
            BaseModelRules::find(&table, "amazon.titan-text-premier-v1:0:32k").expect("premier");
        let mut s = spec("amazon.titan-text-premier-v1:0:32k");
        s.hyperparameters.epochs = Setting::Value(6);
        let err = premier.hyperparameters(&s).expect_err("6 epochs is too many");
        assert!(err.to_string().contains("hyperparameters.epochs"), "{err}");
        assert!(err.to_string().contains("1 to 5"), "{err}");

        let mut s = spec("amazon.titan-text-premier-v1:0:32k");
        s.hyperparameters.learning_rate = Setting::Value(LearningRate::Absolute(1e-4));
        assert!(premier.hyperparameters(&s).is_err());
        s.hyperparameters.learning_rate = Setting::Value(LearningRate::Multiplier(1.0));
        assert!(
            premier.hyperparameters(&s).expect_err("a multiplier").to_string().contains("absolute")
        );

        let nova = BaseModelRules::find(&table, "amazon.nova-lite-v1:0:300k").expect("nova");
        let mut s = spec("amazon.nova-lite-v1:0:300k");
        s.hyperparameters.batch_size = Setting::Value(8);
        assert!(nova.hyperparameters(&s).expect_err("no batch size").to_string().contains("batch"));

        let mut s = spec("amazon.nova-lite-v1:0:300k");
        s.hyperparameters.epochs = Setting::Value(3);
        s.hyperparameters.learning_rate = Setting::Value(LearningRate::Absolute(2e-5));
        s.extras.insert("learningRateWarmupSteps".into(), serde_json::json!(7));
        let hp = nova.hyperparameters(&s).expect("in range");
        assert_eq!(
            hp,
            vec![
                ("epochCount".to_owned(), "3".to_owned()),
                ("learningRate".to_owned(), "0.00002".to_owned()),
                ("learningRateWarmupSteps".to_owned(), "7".to_owned()),
            ]
        );
        s.extras.insert("loraRank".into(), serde_json::json!(8));
        assert!(
            nova.hyperparameters(&s)
                .expect_err("unknown extra")
                .to_string()
                .contains("extras.loraRank")
        );
    }
}
