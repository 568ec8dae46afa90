//! What a job will cost before it is submitted: the tokens the provider
//! bills (every example's tokens as its tokenizer counts them, times the
//! epochs — the provider's default when none is given, computed as the
//! provider does), priced from a table the user supplies, and for local runs
//! the steps and the wall time at a measured throughput.
//!
//! No price is built in: prices change and differ by contract, so they are
//! the caller's to give ([`PriceTable`], read from JSON).

use std::collections::BTreeMap;
use std::fmt;

use finetune_core::DataRules;
use serde::{Deserialize, Serialize};

use crate::stats::Statistics;

/// Training prices per million billed tokens, by model (or model-id
/// prefix; the longest matching entry wins), in one currency.
///
/// ```
/// let prices: finetune_data::PriceTable = serde_json::from_str(
///     r#"{"currency": "USD", "per_million_training_tokens": {"gpt-4o-mini": 3.0}}"#,
/// )?;
/// assert_eq!(prices.price_for("gpt-4o-mini-2024-07-18"), Some(3.0));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PriceTable {
    /// The currency of every price.
    pub currency: String,
    /// Price per million training tokens, by model id or prefix.
    pub per_million_training_tokens: BTreeMap<String, f64>,
}

impl PriceTable {
    /// The price per million training tokens of `model`.
    pub fn price_for(&self, model: &str) -> Option<f64> {
        let id = model.strip_prefix("ft:").unwrap_or(model);
        self.per_million_training_tokens
            .iter()
            .filter(|(prefix, _)| id.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, price)| *price)
    }
}

/// A local run's throughput, measured (by the training benchmark or an
/// earlier run's summary) on the machine that will train.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Trained tokens per second.
    pub tokens_per_second: f64,
    /// Examples per optimizer step.
    pub batch_size: u64,
}

/// Where the number of epochs came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochsFrom {
    /// The job's settings.
    Given,
    /// The provider's default for this many examples.
    ProviderDefault,
}

/// The estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The base model.
    pub base_model: String,
    /// Training examples.
    pub examples: u64,
    /// Billed tokens of one pass over the training set.
    pub tokens_per_epoch: u64,
    /// Epochs.
    pub epochs: u32,
    /// Where `epochs` came from.
    pub epochs_from: EpochsFrom,
    /// Billed tokens in all: `tokens_per_epoch × epochs`.
    pub billed_tokens: u64,
    /// The price per million tokens used, when the table had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_per_million: Option<f64>,
    /// The currency of `cost`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// `billed_tokens` priced, when a price was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Optimizer steps (local runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// Seconds of training at the given throughput (local runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// Estimates a job over a training set with `stats` (validated with the
/// provider's token counter) under `rules`. `epochs`: the job's setting,
/// `None` for the provider's default. Without token statistics the
/// characters are counted at four per token.
pub fn estimate(
    rules: &DataRules,
    stats: &Statistics,
    epochs: Option<u32>,
    prices: Option<&PriceTable>,
    throughput: Option<Throughput>,
) -> Estimate {
    let examples = stats.rows;
    let tokens_per_epoch = match &stats.tokens {
        // What is cut is not trained on (nor billed, locally).
        Some(t) => t.per_row.total.saturating_sub(t.cut_tokens),
        None => {
            let chars =
                stats.prompt_chars.total + stats.completion_chars.total + stats.system_chars.total;
            chars.div_ceil(4)
        }
    };
    let (epochs, epochs_from) = match epochs {
        Some(n) => (n, EpochsFrom::Given),
        None => (rules.default_epochs.epochs_for(examples), EpochsFrom::ProviderDefault),
    };
    let billed_tokens = tokens_per_epoch * u64::from(epochs);
    let price = prices.and_then(|p| p.price_for(&rules.base_model));
    let (steps, seconds) = match throughput {
        Some(t) => {
            let steps = examples.div_ceil(t.batch_size.max(1)) * u64::from(epochs);
            let seconds =
                (t.tokens_per_second > 0.0).then(|| billed_tokens as f64 / t.tokens_per_second);
            (Some(steps), seconds)
        }
        None => (None, None),
    };
    Estimate {
        base_model: rules.base_model.clone(),
        examples,
        tokens_per_epoch,
        epochs,
        epochs_from,
        billed_tokens,
        price_per_million: price,
        currency: price.and(prices.map(|p| p.currency.clone())),
        cost: price.map(|p| billed_tokens as f64 / 1e6 * p),
        steps,
        seconds,
    }
}

impl fmt::Display for Estimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = match self.epochs_from {
            EpochsFrom::Given => "given",
            EpochsFrom::ProviderDefault => "the provider's default",
        };
        writeln!(
            f,
            "estimate: {} examples, {} tokens per epoch x {} epochs ({from}) = {} billed tokens",
            self.examples, self.tokens_per_epoch, self.epochs, self.billed_tokens
        )?;
        match (self.cost, self.price_per_million, &self.currency) {
            (Some(cost), Some(price), Some(currency)) => writeln!(
                f,
                "cost: {cost:.2} {currency} at {price} {currency} per million tokens of {}",
                self.base_model
            )?,
            _ => writeln!(f, "cost: no price given for {}", self.base_model)?,
        }
        if let (Some(steps), Some(seconds)) = (self.steps, self.seconds) {
            writeln!(f, "local: {steps} steps, about {seconds:.0} s at the measured throughput")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{LengthStats, TokenStats};
    use finetune_core::ProviderKind;

    fn stats(rows: u64, tokens: u64) -> Statistics {
        Statistics {
            rows,
            tokens: Some(TokenStats {
                per_row: LengthStats { count: rows, total: tokens, ..LengthStats::default() },
                ..TokenStats::default()
            }),
            ..Statistics::default()
        }
    }

    #[test]
    fn auto_epochs_and_a_price_make_the_cost() {
        let rules = DataRules::builtin(&ProviderKind::OpenAi, "gpt-4o-mini-2024-07-18");
        let prices = PriceTable {
            currency: "USD".into(),
            per_million_training_tokens: [
                ("gpt-4o".to_owned(), 25.0),
                ("gpt-4o-mini".to_owned(), 3.0),
            ]
            .into(),
        };
        // 20 examples: "auto" runs 100 / 20 = 5 epochs.
        let e = estimate(&rules, &stats(20, 4_000), None, Some(&prices), None);
        assert_eq!(
            (e.epochs, e.epochs_from, e.billed_tokens),
            (5, EpochsFrom::ProviderDefault, 20_000)
        );
        assert_eq!(e.price_per_million, Some(3.0));
        assert!((e.cost.unwrap() - 0.06).abs() < 1e-12);
        let given = estimate(&rules, &stats(20, 4_000), Some(2), None, None);
        assert_eq!((given.billed_tokens, given.cost), (8_000, None));
        assert!(given.to_string().contains("no price given"), "{given}");
    }

    #[test]
    fn a_local_run_has_steps_and_seconds() {
        let rules =
            DataRules::builtin(&ProviderKind::LocalHf, "HuggingFaceTB/SmolLM2-135M-Instruct");
        let throughput = Throughput { tokens_per_second: 150.0, batch_size: 4 };
        let e = estimate(&rules, &stats(48, 3_000), Some(4), None, Some(throughput));
        assert_eq!(e.steps, Some(12 * 4));
        assert!((e.seconds.unwrap() - 80.0).abs() < 1e-9);
    }
}
