//! Fine-tunes an AWS Bedrock base model: checks the hyperparameters against
//! the base model's ranges, validates the dataset and writes it in the
//! layout the model takes (prompt/completion, or `bedrock-conversation-2024`
//! for Nova), uploads it to S3 once (multipart when large), creates the
//! customization job, and with `--wait` follows it, prints the loss curve
//! read from the job's metrics CSVs and saves the loss graph.
//!
//! Region and credentials come from the standard AWS chain; endpoints from
//! the usual `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_BEDROCK`,
//! `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, `AWS_ENDPOINT_URL_S3`).
//!
//! ```text
//! cargo run -p finetune-examples --example bedrock_finetune -- \
//!     --train examples/data/reverse-words.jsonl --base-model amazon.titan-text-lite-v1:0:4k \
//!     --role-arn arn:aws:iam::123456789012:role/bedrock-finetune \
//!     --bucket s3://my-bucket/finetune --epochs 2 --wait
//! ```

use finetune_examples::args::usage_error;
use finetune_examples::remote;
use finetune_providers::{BedrockConfig, BedrockProvider};

const OPTIONS: &str = "--train <PATH_OR_URL> [--validation <PATH_OR_URL>] --base-model <ID>
          --role-arn <ARN> --bucket <S3_URI> [--epochs N] [--batch-size N]
          [--learning-rate X] [--warmup-steps N] [--suffix S] [--wait]
          [--poll-interval SECS] [--output DIR] [mapping flags]

  --base-model     a Bedrock base model id (amazon.titan-text-lite-v1:0:4k,
                   amazon.nova-micro-v1:0:128k, meta.llama3-1-8b-instruct-v1:0:128k, ...)
  --role-arn       the IAM role Bedrock assumes to read the data and write the outputs
                   (default: $BEDROCK_ROLE_ARN)
  --bucket         s3://bucket/prefix for the data (data/) and the job outputs (output/)
                   (default: $BEDROCK_S3_PREFIX)
  --learning-rate  an absolute learning rate, checked against the base model's range
  --warmup-steps   learningRateWarmupSteps
  --wait           follow the job, print the loss curve, save the loss graph in DIR
                   (--output, default finetune-output)

mapping flags: --format jsonl|csv|parquet|arrow, --prompt COL, --completion COL, --system COL";

fn main() {
    let usage = format!("usage: bedrock_finetune {OPTIONS}");
    let args = remote::parse_with(
        &usage,
        &["base-model", "role-arn", "bucket", "learning-rate", "warmup-steps"],
    );
    let env = BedrockConfig::from_env().unwrap_or_else(|e| usage_error(&usage, &e.to_string()));
    let role = args
        .value("role-arn")
        .map(str::to_owned)
        .or(env.role_arn)
        .unwrap_or_else(|| usage_error(&usage, "--role-arn (or BEDROCK_ROLE_ARN) is required"));
    let bucket = args
        .value("bucket")
        .map(str::to_owned)
        .or(env.s3_prefix.map(|u| u.to_string()))
        .unwrap_or_else(|| usage_error(&usage, "--bucket (or BEDROCK_S3_PREFIX) is required"));
    if args.value("base-model").is_none() {
        usage_error(&usage, "--base-model is required");
    }
    let code = finetune_examples::block_on(async {
        let provider = match BedrockConfig::new(role, &bucket) {
            Ok(config) => BedrockProvider::new(config).await,
            Err(e) => Err(e),
        };
        match provider {
            Ok(provider) => remote::run(&provider, &usage, &args).await,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    });
    std::process::exit(code);
}
