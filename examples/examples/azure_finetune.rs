//! Fine-tunes an Azure OpenAI model: validates the dataset, uploads it as
//! chat JSONL, creates the job, and with `--wait` follows it and saves the
//! loss graph. Reads `AZURE_OPENAI_ENDPOINT`, then `AZURE_OPENAI_API_KEY`
//! or, for Entra ID, `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
//! `AZURE_CLIENT_SECRET`; and the optional `AZURE_OPENAI_API_VERSION`.
//! The fine-tuned model must be deployed before use.
//!
//! ```text
//! AZURE_OPENAI_ENDPOINT=https://my-resource.openai.azure.com AZURE_OPENAI_API_KEY=... \
//!     cargo run -p finetune-examples --example azure_finetune -- \
//!     --train examples/data/reverse-words.jsonl --model gpt-4o-mini-2024-07-18 --wait
//! ```

use finetune_examples::remote;
use finetune_providers::{AzureOpenAiConfig, AzureOpenAiProvider};

fn main() {
    let usage = format!("usage: azure_finetune {}", remote::OPTIONS);
    let args = remote::parse(&usage);
    let provider = match AzureOpenAiConfig::from_env().and_then(AzureOpenAiProvider::new) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let code = finetune_examples::block_on(remote::run(&provider, &usage, &args));
    std::process::exit(code);
}
