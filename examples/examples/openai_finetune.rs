//! Fine-tunes an OpenAI model: validates the dataset, uploads it as chat
//! JSONL, creates the job, and with `--wait` follows it and saves the loss
//! graph. Reads `OPENAI_API_KEY` and the optional `OPENAI_BASE_URL`
//! (gateways, proxies, a local mock), `OPENAI_ORG_ID` and
//! `OPENAI_PROJECT_ID`.
//!
//! ```text
//! OPENAI_API_KEY=sk-... cargo run -p finetune-examples --example openai_finetune -- \
//!     --train examples/data/reverse-words.jsonl --model gpt-4o-mini-2024-07-18 --wait
//! ```

use finetune_examples::remote;
use finetune_providers::{OpenAiConfig, OpenAiProvider};

fn main() {
    let usage = format!("usage: openai_finetune {}", remote::OPTIONS);
    let args = remote::parse(&usage);
    let provider = match OpenAiConfig::from_env().and_then(OpenAiProvider::new) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let code = finetune_examples::block_on(remote::run(&provider, &usage, &args));
    std::process::exit(code);
}
