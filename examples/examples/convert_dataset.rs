//! Converts a dataset into a provider's file format, validating it on the
//! way; an invalid dataset writes no file. Exit status: 0 written, 1 the data
//! has errors, 2 usage error.

use finetune_data::{ConvertOptions, ObjectStores, OutputFormat, convert};
use finetune_examples::args::{Args, usage_error};
use finetune_examples::{MAPPING_FLAGS, block_on, dataset_source, localize_or_exit};

const USAGE: &str = "usage: convert_dataset <IN> --to openai-chat|openai-legacy|bedrock|bedrock-conversation|parquet \
--out <PATH_OR_URL> [--format parquet|csv|jsonl|arrow] [--prompt COL] [--completion COL] [--system COL] \
[--redact-sensitive] [--dedup]";

fn main() {
    let mut flags = MAPPING_FLAGS.to_vec();
    flags.extend(["to", "out"]);
    let args = Args::parse(USAGE, &flags, &["redact-sensitive", "dedup"]);
    let [input] = args.positional.as_slice() else {
        usage_error(USAGE, "give exactly one input dataset")
    };
    let Some(to) = args.parsed::<OutputFormat>(USAGE, "to") else {
        usage_error(USAGE, "--to is required")
    };
    let Some(out) = args.value("out") else { usage_error(USAGE, "--out is required") };
    let source = dataset_source(USAGE, input, &args);
    let options = ConvertOptions {
        redact_sensitive: args.switch("redact-sensitive"),
        deduplicate: args.switch("dedup"),
        ..ConvertOptions::default()
    };
    // A URL is written locally first, then uploaded in parts.
    let remote = out.contains("://");
    let staging = tempfile::tempdir().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let local_out = if remote { staging.path().join("converted") } else { out.into() };
    match convert(&localize_or_exit(&source), &local_out, to, &options) {
        Ok((report, rows)) if report.valid => {
            if !report.warnings.is_empty() {
                eprint!("{report}");
            }
            if remote {
                let sent =
                    block_on(ObjectStores::new().upload(&local_out, out)).unwrap_or_else(|e| {
                        eprintln!("error: uploading to {out}: {e}");
                        std::process::exit(1)
                    });
                println!("uploaded {sent} bytes");
            }
            println!("wrote {rows} row(s) to {out} as {to}");
        }
        Ok((report, _)) => {
            eprint!("{report}");
            eprintln!("nothing written: fix the errors above first");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
