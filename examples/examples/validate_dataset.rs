//! Validates a dataset (and optionally its validation set) and prints the
//! report and statistics. Exit status: 0 valid, 1 the data has errors,
//! 2 usage error.

use finetune_data::{
    CharsPerToken, ProblemKind, Statistics, ValidationOptions, ValidationReport, Validator,
    validate_with,
};
use finetune_examples::args::{Args, usage_error};
use finetune_examples::{MAPPING_FLAGS, dataset_source, localize_or_exit};

const USAGE: &str = "usage: validate_dataset <PATH_OR_URL> [--validation <PATH_OR_URL>] \
[--format parquet|csv|jsonl|arrow] [--prompt COL] [--completion COL] [--system COL] [--min-rows N] \
[--max-chars N] [--max-tokens N] [--scan-sensitive] [--epochs N] [--json]\n\n\
Tokens are estimated at 4 characters per token.";

fn main() {
    let mut flags = MAPPING_FLAGS.to_vec();
    flags.extend(["validation", "min-rows", "max-chars", "max-tokens", "epochs"]);
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
    let mut results: Vec<(ValidationReport, Statistics)> = Vec::new();
    let mut sources = vec![dataset_source(USAGE, train, &args)];
    if let Some(v) = args.value("validation") {
        sources.push(dataset_source(USAGE, v, &args));
    }
    let mut training_index = None;
    for (i, source) in sources.iter().enumerate() {
        let mut options = options.clone();
        if i > 0 {
            options.min_rows = 1;
        }
        let mut validator = Validator::new(source.location.to_string(), options)
            .with_token_counter(Box::new(CharsPerToken(4.0)));
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
    let epochs: u32 = args.parsed(USAGE, "epochs").unwrap_or(1);
    let valid = results.iter().all(|(r, _)| r.valid);
    if args.switch("json") {
        let mut out = serde_json::to_value(&results[0].0).unwrap_or_default();
        out["statistics"] = serde_json::to_value(&results[0].1).unwrap_or_default();
        out["valid"] = valid.into();
        if let Some(t) = &results[0].1.tokens {
            out["estimated_billed_tokens"] = t.billed_tokens(epochs).into();
        }
        if let Some((report, stats)) = results.get(1) {
            let mut v = serde_json::to_value(report).unwrap_or_default();
            v["statistics"] = serde_json::to_value(stats).unwrap_or_default();
            out["validation"] = v;
        }
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        for (report, stats) in &results {
            println!("{report}");
            if !report.has(ProblemKind::Unreadable) || stats.rows > 0 {
                println!("{stats}");
            }
        }
        if let Some(t) = &results[0].1.tokens {
            println!(
                "estimated billed training tokens for {epochs} epoch(s): {}",
                t.billed_tokens(epochs)
            );
        }
    }
    std::process::exit(if valid { 0 } else { 1 });
}
