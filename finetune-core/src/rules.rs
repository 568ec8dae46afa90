//! What each provider accepts as training data, in one place: row counts,
//! the longest example, reserved strings, whether a validation set is
//! taken, the upload size, the tokenizer that bills, and the default number
//! of epochs. The validator (`finetune-data`) applies these rules, each
//! provider hands out its own ([`crate::FineTuneProvider::data_rules`]), and
//! the cost estimate reads them.
//!
//! | provider | rule | value | source |
//! |---|---|---|---|
//! | OpenAI | fewest training examples | 10 | OpenAI fine-tuning guide, "Example count recommendations" |
//! | OpenAI | longest example (tokens) | gpt-4o, gpt-4o-mini, gpt-4.1 family: 65,536; gpt-3.5-turbo-0125/1106: 16,385; gpt-3.5-turbo-0613: 4,096; gpt-4-0613: 8,192; babbage-002, davinci-002: 16,384 | OpenAI fine-tuning guide, "Token limits" |
//! | OpenAI | billing tokenizer | o200k_base (gpt-4o, gpt-4.1, o-series), cl100k_base (older) | tiktoken's `model_to_encoding` |
//! | OpenAI | example tokens | 3 per message + role + content, plus 3 | OpenAI cookbook, "Data preparation and analysis for chat model fine-tuning" |
//! | OpenAI | default epochs ("auto") | 3, raised to reach 100 examples seen (at most 25), lowered to stay under 25,000 (at least 1) | the same cookbook |
//! | Azure OpenAI | as OpenAI, plus: the upload under 512 MB, UTF-8 JSONL (a byte-order mark starting an input file is read as one, not as data) | | Azure OpenAI docs, "Customize a model with fine-tuning", data preparation |
//! | Bedrock Nova 1 (Micro, Lite, Pro) | 8 to 20,000 training records; reserved strings `User:`, `Bot:`, `Assistant:`, `System:`, `<image>`, `<video>`, `[EOS]` (any case) | | Amazon Nova user guide, "Preparing data for fine-tuning Understanding models", item 12; aws-samples `nova_ft_dataset_validator.py` |
//! | Bedrock Nova 2 Lite | 200 to 20,000 training records, no validation set, the same reserved strings | | aws-samples `nova_ft_dataset_validator.py` (`NOVA_2_0_LITE_SAMPLE_BOUNDS`) |
//! | Bedrock Titan Text Lite/Express | up to 10,000 training and 1,000 validation records; 4,096 tokens per record (input and output) | | Bedrock user guide, "Model requirements for training and validation datasets" |
//! | Bedrock (all) | default epochs | Titan Lite/Express 5, Premier 2, Nova 2, Llama 3.1 5 | Bedrock user guide, "Custom model hyperparameters" |
//! | Local | examples longer than the max length are truncated (or skipped when no completion token survives); counted with the model's tokenizer and chat template | | this workspace's trainer |
//!
//! Bedrock does not publish its tokenizers: its token limits are checked
//! against an estimate (4 characters per token) unless the caller supplies a
//! counter. Tables change; every value is a public field, so an application
//! corrects one without waiting for a release.

use serde::{Deserialize, Serialize};

use crate::connection::ProviderKind;

/// The tokenizer a provider bills (and limits examples) with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BillingTokenizer {
    /// OpenAI's `o200k_base` (gpt-4o, gpt-4.1, o-series).
    O200kBase,
    /// OpenAI's `cl100k_base` (gpt-3.5-turbo, gpt-4, babbage-002, davinci-002).
    Cl100kBase,
    /// The model's own tokenizer and chat template (local models).
    Model,
    /// Not published: an estimate of this many characters per token.
    CharsPerToken(f64),
}

/// The number of epochs a provider runs when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DefaultEpochs {
    /// OpenAI's "auto" (see [`DefaultEpochs::epochs_for`]).
    OpenAiAuto,
    /// A fixed number.
    Fixed(u32),
}

impl DefaultEpochs {
    /// The epochs for `examples` training examples. OpenAI's "auto" aims at
    /// 3 epochs, raised so that at least 100 examples are seen (at most 25
    /// epochs) and lowered so that at most 25,000 are (at least 1), as its
    /// cookbook computes it.
    pub fn epochs_for(self, examples: u64) -> u32 {
        const TARGET: u64 = 3;
        const MIN_SEEN: u64 = 100;
        const MAX_SEEN: u64 = 25_000;
        const MIN_EPOCHS: u64 = 1;
        const MAX_EPOCHS: u64 = 25;
        match self {
            Self::Fixed(n) => n,
            Self::OpenAiAuto => {
                let n = examples.max(1);
                let epochs = if n * TARGET < MIN_SEEN {
                    (MIN_SEEN / n).min(MAX_EPOCHS)
                } else if n * TARGET > MAX_SEEN {
                    (MAX_SEEN / n).max(MIN_EPOCHS)
                } else {
                    TARGET
                };
                epochs as u32
            }
        }
    }
}

/// What a provider accepts for one base model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DataRules {
    /// The provider.
    pub provider: ProviderKind,
    /// The base model the rules are for.
    pub base_model: String,
    /// A readable name of the model family the rules came from.
    pub family: String,
    /// The fewest training examples.
    pub min_training_rows: u64,
    /// The most training examples, when limited.
    pub max_training_rows: Option<u64>,
    /// The most validation examples, when limited.
    pub max_validation_rows: Option<u64>,
    /// Whether a validation set is accepted.
    pub validation: bool,
    /// The longest example in billed tokens (the whole conversation), when
    /// limited.
    pub max_example_tokens: Option<u64>,
    /// Strings refused anywhere in a prompt, completion or system message.
    pub reserved: Vec<String>,
    /// Whether `reserved` matches in any letter case.
    pub reserved_any_case: bool,
    /// The largest file the provider takes, in bytes of its JSONL.
    pub max_upload_bytes: Option<u64>,
    /// The tokenizer that bills.
    pub tokenizer: BillingTokenizer,
    /// The epochs run when none is given.
    pub default_epochs: DefaultEpochs,
}

/// The strings Nova refuses in text (Amazon Nova user guide, data
/// preparation for Understanding models, item 12).
pub const NOVA_RESERVED: [&str; 7] =
    ["User:", "Bot:", "Assistant:", "System:", "<image>", "<video>", "[EOS]"];

/// OpenAI and Azure OpenAI training files: 512 MB (Azure OpenAI docs; the
/// OpenAI Files API's fine-tune limit is the same).
pub const OPENAI_MAX_UPLOAD_BYTES: u64 = 512 * 1_000_000;

impl DataRules {
    /// Rules that refuse nothing: at least one row, no limits.
    pub fn permissive(provider: ProviderKind, base_model: impl Into<String>) -> Self {
        Self {
            provider,
            base_model: base_model.into(),
            family: "any".into(),
            min_training_rows: 1,
            max_training_rows: None,
            max_validation_rows: None,
            validation: true,
            max_example_tokens: None,
            reserved: Vec::new(),
            reserved_any_case: false,
            max_upload_bytes: None,
            tokenizer: BillingTokenizer::CharsPerToken(4.0),
            default_epochs: DefaultEpochs::Fixed(1),
        }
    }

    /// The built-in rules for `base_model` at `provider` (see the module's
    /// table). A model the table does not know gets its provider's general
    /// rules.
    pub fn builtin(provider: &ProviderKind, base_model: &str) -> Self {
        let mut rules = Self::permissive(provider.clone(), base_model);
        match provider {
            ProviderKind::OpenAi | ProviderKind::AzureOpenAi => {
                let (family, context, tokenizer) = openai_model(base_model);
                rules.family = family.into();
                rules.min_training_rows = 10;
                rules.max_example_tokens = context;
                rules.tokenizer = tokenizer;
                rules.default_epochs = DefaultEpochs::OpenAiAuto;
                rules.max_upload_bytes = Some(OPENAI_MAX_UPLOAD_BYTES);
            }
            ProviderKind::Bedrock => bedrock_model(&mut rules, base_model),
            ProviderKind::LocalHf => {
                rules.family = "local HuggingFace model".into();
                rules.tokenizer = BillingTokenizer::Model;
                rules.default_epochs = DefaultEpochs::Fixed(3);
            }
            ProviderKind::Other(_) => {}
        }
        rules
    }

    /// Whether `text` holds a reserved string; returns the first.
    pub fn reserved_in(&self, text: &str) -> Option<&str> {
        if self.reserved_any_case {
            let lower = text.to_lowercase();
            self.reserved.iter().find(|r| lower.contains(&r.to_lowercase())).map(String::as_str)
        } else {
            self.reserved.iter().find(|r| text.contains(r.as_str())).map(String::as_str)
        }
    }
}

/// An OpenAI model's family, training context and tokenizer. A fine-tuned
/// model (`ft:<base>:…`) is its base's; Azure names (`gpt-35-turbo`) count as
/// OpenAI's.
fn openai_model(model: &str) -> (&'static str, Option<u64>, BillingTokenizer) {
    let id = model.strip_prefix("ft:").unwrap_or(model).replace("gpt-35", "gpt-3.5");
    let o200k = BillingTokenizer::O200kBase;
    let cl100k = BillingTokenizer::Cl100kBase;
    let starts = |p: &str| id.starts_with(p);
    if starts("gpt-4o-mini") {
        ("gpt-4o-mini", Some(65_536), o200k)
    } else if starts("gpt-4o") {
        ("gpt-4o", Some(65_536), o200k)
    } else if starts("gpt-4.1") {
        ("gpt-4.1", Some(65_536), o200k)
    } else if starts("o1") || starts("o3") || starts("o4") || starts("gpt-5") {
        ("o-series / gpt-5", None, o200k)
    } else if starts("gpt-3.5-turbo-0613") {
        ("gpt-3.5-turbo-0613", Some(4_096), cl100k)
    } else if starts("gpt-3.5-turbo") {
        ("gpt-3.5-turbo", Some(16_385), cl100k)
    } else if starts("gpt-4") {
        ("gpt-4", Some(8_192), cl100k)
    } else if starts("babbage-002") || starts("davinci-002") {
        ("babbage-002 / davinci-002", Some(16_384), cl100k)
    } else {
        ("unknown OpenAI model", None, o200k)
    }
}

/// Bedrock's rules by model id (or foundation-model ARN).
fn bedrock_model(rules: &mut DataRules, model: &str) {
    let id = model.rsplit('/').next().unwrap_or(model);
    let starts = |p: &str| id.starts_with(p);
    let nova = |rules: &mut DataRules, family: &str, min: u64| {
        rules.family = family.into();
        rules.min_training_rows = min;
        rules.max_training_rows = Some(20_000);
        rules.reserved = NOVA_RESERVED.iter().map(|s| (*s).to_owned()).collect();
        rules.reserved_any_case = true;
        rules.default_epochs = DefaultEpochs::Fixed(2);
    };
    if starts("amazon.nova-2-") {
        nova(rules, "Amazon Nova 2", 200);
        rules.validation = false;
    } else if starts("amazon.nova-") {
        nova(rules, "Amazon Nova (Micro, Lite, Pro)", 8);
    } else if starts("amazon.titan-text-premier") {
        rules.family = "Amazon Titan Text Premier".into();
        rules.default_epochs = DefaultEpochs::Fixed(2);
    } else if starts("amazon.titan-text") {
        rules.family = "Amazon Titan Text (Lite, Express)".into();
        rules.max_training_rows = Some(10_000);
        rules.max_validation_rows = Some(1_000);
        rules.max_example_tokens = Some(4_096);
        rules.default_epochs = DefaultEpochs::Fixed(5);
    } else if starts("meta.llama3-1") {
        rules.family = "Meta Llama 3.1".into();
        rules.default_epochs = DefaultEpochs::Fixed(5);
    } else {
        rules.family = "unknown Bedrock model".into();
    }
}

/// Counts the tokens of a text for a model's tokenizer. `finetune-data`
/// has OpenAI's (`o200k_base`, `cl100k_base`), `finetune-local` the one of a
/// model's `tokenizer.json` and chat template; `finetune-data`'s
/// `CharsPerToken` is an estimate when the tokenizer is not at hand.
pub trait TokenCounter: Send + Sync {
    /// Tokens in `text`.
    fn count(&self, text: &str) -> usize;

    /// The tokens of one example as the provider counts (and trains on)
    /// it: by default the sum of its texts.
    fn example(&self, system: Option<&str>, prompt: &str, completion: &str) -> ExampleTokens {
        let total =
            system.map_or(0, |s| self.count(s)) + self.count(prompt) + self.count(completion);
        ExampleTokens::whole(total as u64)
    }
}

impl<T: TokenCounter + ?Sized> TokenCounter for std::sync::Arc<T> {
    fn count(&self, text: &str) -> usize {
        (**self).count(text)
    }

    fn example(&self, system: Option<&str>, prompt: &str, completion: &str) -> ExampleTokens {
        (**self).example(system, prompt, completion)
    }
}

impl std::fmt::Debug for dyn TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCounter")
    }
}

/// The tokens of one example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExampleTokens {
    /// Every token of the example as the provider sees it (template and
    /// per-message overhead included), before any truncation.
    pub total: u64,
    /// Tokens cut to fit the counter's length limit (local runs).
    pub cut: u64,
    /// Whether the cut leaves no completion token to learn from.
    pub nothing_left: bool,
}

impl ExampleTokens {
    /// An example that is kept whole.
    pub const fn whole(total: u64) -> Self {
        Self { total, cut: 0, nothing_left: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_auto_epochs_follow_the_cookbook() {
        let auto = DefaultEpochs::OpenAiAuto;
        // 10 examples: 3 epochs see 30 < 100, so 100 / 10 = 10 epochs.
        assert_eq!(auto.epochs_for(10), 10);
        // 3 examples would need 33 epochs: capped at 25.
        assert_eq!(auto.epochs_for(3), 25);
        assert_eq!(auto.epochs_for(34), 3);
        assert_eq!(auto.epochs_for(1_000), 3);
        // 10,000 examples: 30,000 > 25,000, so 25,000 / 10,000 = 2.
        assert_eq!(auto.epochs_for(10_000), 2);
        assert_eq!(auto.epochs_for(100_000), 1);
        assert_eq!(DefaultEpochs::Fixed(5).epochs_for(7), 5);
    }

    #[test]
    fn models_find_their_rules() {
        let openai = |m: &str| DataRules::builtin(&ProviderKind::OpenAi, m);
        assert_eq!(openai("gpt-4o-mini-2024-07-18").max_example_tokens, Some(65_536));
        assert_eq!(openai("gpt-4o-mini-2024-07-18").tokenizer, BillingTokenizer::O200kBase);
        assert_eq!(openai("ft:gpt-4o-2024-08-06:org::abc").family, "gpt-4o");
        assert_eq!(openai("gpt-3.5-turbo-0125").tokenizer, BillingTokenizer::Cl100kBase);
        assert_eq!(openai("gpt-3.5-turbo-0613").max_example_tokens, Some(4_096));
        let azure = DataRules::builtin(&ProviderKind::AzureOpenAi, "gpt-35-turbo-1106");
        assert_eq!(
            (azure.max_example_tokens, azure.min_training_rows, azure.max_upload_bytes),
            (Some(16_385), 10, Some(512_000_000))
        );
        let bedrock = |m: &str| DataRules::builtin(&ProviderKind::Bedrock, m);
        let nova2 =
            bedrock("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-2-lite-v1:0:256k");
        assert!(!nova2.validation);
        assert_eq!(nova2.min_training_rows, 200);
        let nova = bedrock("amazon.nova-micro-v1:0:128k");
        assert!(nova.validation);
        assert_eq!(nova.reserved_in("fine, then bot: said hi"), Some("Bot:"));
        assert_eq!(nova.reserved_in("a robot: no"), Some("Bot:"));
        assert_eq!(nova.reserved_in("nothing here"), None);
        assert_eq!(bedrock("amazon.titan-text-express-v1").max_example_tokens, Some(4_096));
        assert_eq!(
            bedrock("meta.llama3-1-8b-instruct-v1:0").default_epochs,
            DefaultEpochs::Fixed(5)
        );
    }
}
