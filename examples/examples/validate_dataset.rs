//! Validates a dataset (and optionally its validation set) and prints the
//! report, the statistics and an estimate of the job. With `--provider`,
//! the provider's own rules apply (row counts, the longest example,
//! reserved strings, a validation set the model refuses, the upload size)
//! and tokens are counted with the tokenizer the provider bills with:
//! o200k/cl100k for OpenAI and Azure OpenAI models, the model's own
//! tokenizer and chat template for a local model (in the model cache or a
//! directory). Exit status: 0 valid, 1 the data has errors, 2 usage error.

use std::sync::Arc;

use finetune_core::{DataRules, ProviderKind, TokenCounter};
use finetune_data::{
    CharsPerToken, DatasetRole, PriceTable, ProblemKind, Statistics, Throughput, ValidationOptions,
    ValidationReport, Validator, validate_with,
};
use finetune_examples::args::{Args, usage_error};
use finetune_examples::{MAPPING_FLAGS, dataset_source, localize_or_exit};

const USAGE: &str = "usage: validate_dataset <PATH_OR_URL> [--validation <PATH_OR_URL>] \
[--provider openai|azure|bedrock|local --base-model M] [--max-length N] [--cache DIR] \
[--format parquet|csv|jsonl|arrow] [--prompt COL] [--completion COL] [--system COL] [--min-rows N] \
[--max-chars N] [--max-tokens N] [--scan-sensitive] [--epochs N] [--prices FILE.json] \
[--tokens-per-second X --batch-size N] [--json]\n\n\
--provider applies that provider's rules for --base-model and counts tokens with the \
tokenizer it bills with (local: the model's tokenizer and chat template at --max-length, \
1024 by default; the model in --cache, by default the HF cache). Without it, tokens are estimated at 4 characters per token.\n\
--epochs: the job's epochs (default: the provider's own default for this many examples).\n\
--prices: {\"currency\": \"USD\", \"per_million_training_tokens\": {\"gpt-4o-mini\": 3.0}}\n\
--tokens-per-second, --batch-size: a measured local throughput, for steps and time.";

fn provider_kind(name: &str) -> ProviderKind {
    match name {
        "openai" => ProviderKind::OpenAi,
        "azure" | "azure_openai" => ProviderKind::AzureOpenAi,
        "bedrock" => ProviderKind::Bedrock,
        "local" | "local_hf" => ProviderKind::LocalHf,
        other => {
            usage_error(USAGE, &format!("--provider {other}: openai, azure, bedrock or local"))
        }
    }
}

/// The rules and the token counter for the command line's provider.
fn rules_and_counter(args: &Args) -> (Option<DataRules>, Arc<dyn TokenCounter>) {
    let Some(provider) = args.value("provider") else {
        return (None, Arc::new(CharsPerToken(4.0)));
    };
    let kind = provider_kind(provider);
    let model = args
        .value("base-model")
        .unwrap_or_else(|| usage_error(USAGE, "--provider needs --base-model"));
    let rules = DataRules::builtin(&kind, model);
    let counter = match finetune_data::counter_for(&rules) {
        Some(counter) => counter,
        None => {
            let max_length = args.parsed(USAGE, "max-length").unwrap_or(1024);
            let cache = args
                .value("cache")
                .map_or_else(finetune_local::ModelCache::from_env, finetune_local::ModelCache::at);
            let counter = finetune_local::locate(model, &cache)
                .and_then(|dir| {
                    finetune_local::sft::TemplateTokens::for_model(
                        &dir,
                        max_length,
                        finetune_local::sft::Truncation::KeepEnd,
                    )
                })
                .unwrap_or_else(|e| {
                    eprintln!("error: the model's tokenizer: {e}");
                    std::process::exit(1)
                });
            Arc::new(counter)
        }
    };
    (Some(rules), counter)
}

fn main() {
    let mut flags = MAPPING_FLAGS.to_vec();
    flags.extend([
        "validation",
        "min-rows",
        "max-chars",
        "max-tokens",
        "epochs",
        "provider",
        "base-model",
        "max-length",
        "cache",
        "prices",
        "tokens-per-second",
        "batch-size",
    ]);
    let args = Args::parse(USAGE, &flags, &["json", "scan-sensitive"]);
    let [train] = args.positional.as_slice() else {
        usage_error(USAGE, "give exactly one dataset")
    };
    let options = ValidationOptions {
        min_rows: args.parsed(USAGE, "min-rows").unwrap_or(1),
        max_chars: args.parsed(USAGE, "max-chars"),
        max_tokens: args.parsed(USAGE, "max-tokens"),
        scan_sensitive: args.switch("scan-sensitive"),
        ..ValidationOptions::default()
    };
    let prices: Option<PriceTable> = args.value("prices").map(|path| {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| usage_error(USAGE, &format!("--prices {path}: {e}")));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| usage_error(USAGE, &format!("--prices {path}: {e}")))
    });
    let throughput = args.parsed::<f64>(USAGE, "tokens-per-second").map(|tokens_per_second| {
        Throughput { tokens_per_second, batch_size: args.parsed(USAGE, "batch-size").unwrap_or(8) }
    });
    let (rules, counter) = rules_and_counter(&args);

    let mut results: Vec<(ValidationReport, Statistics)> = Vec::new();
    let mut sources = vec![dataset_source(USAGE, train, &args)];
    if let Some(v) = args.value("validation") {
        sources.push(dataset_source(USAGE, v, &args));
    }
    let mut training_index = None;
    for (i, source) in sources.iter().enumerate() {
        let mut options = options.clone();
        let role = if i == 0 { DatasetRole::Training } else { DatasetRole::Validation };
        if role == DatasetRole::Validation {
            options.min_rows = 1;
        }
        let mut validator = Validator::new(source.location.to_string(), options)
            .with_token_counter(Box::new(Arc::clone(&counter)));
        if let Some(rules) = &rules {
            validator = validator.with_rules(rules.clone(), role);
        }
        if let Some(index) = training_index.take() {
            validator = validator.against_training(index);
        }
        match validate_with(&localize_or_exit(source), validator) {
            Ok(mut v) => {
                training_index = Some(v.take_index());
                results.push(v.finish());
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    let rules_for_estimate = rules.clone().unwrap_or_else(|| {
        let mut r = DataRules::permissive(ProviderKind::Other("any".into()), "");
        r.default_epochs = finetune_core::rules::DefaultEpochs::Fixed(1);
        r
    });
    let estimate = finetune_data::estimate(
        &rules_for_estimate,
        &results[0].1,
        args.parsed(USAGE, "epochs"),
        prices.as_ref(),
        throughput,
    );
    let valid = results.iter().all(|(r, _)| r.valid);
    if args.switch("json") {
        let mut out = serde_json::to_value(&results[0].0).unwrap_or_default();
        out["statistics"] = serde_json::to_value(&results[0].1).unwrap_or_default();
        out["valid"] = valid.into();
        out["estimate"] = serde_json::to_value(&estimate).unwrap_or_default();
        out["estimated_billed_tokens"] = estimate.billed_tokens.into();
        if let Some(rules) = &rules {
            out["rules"] = serde_json::to_value(rules).unwrap_or_default();
        }
        if let Some((report, stats)) = results.get(1) {
            let mut v = serde_json::to_value(report).unwrap_or_default();
            v["statistics"] = serde_json::to_value(stats).unwrap_or_default();
            out["validation"] = v;
        }
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        if let Some(rules) = &rules {
            println!(
                "rules: {} {} ({}), tokens by {:?}\n",
                rules.provider, rules.base_model, rules.family, rules.tokenizer
            );
        }
        for (report, stats) in &results {
            println!("{report}");
            if !report.has(ProblemKind::Unreadable) || stats.rows > 0 {
                println!("{stats}");
            }
        }
        print!("{estimate}");
    }
    std::process::exit(if valid { 0 } else { 1 });
}
