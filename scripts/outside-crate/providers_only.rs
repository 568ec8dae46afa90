//! A downstream application using only the OpenAI provider, built outside
//! the workspace without libtorch by `scripts/outside-crate/run`.
//!
//! Usage: `finetune-outside` with `OPENAI_API_KEY` and `OPENAI_BASE_URL` set.

use finetune_core::{FineTuneProvider, ListJobs};
use finetune_providers::{OpenAiConfig, OpenAiProvider};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = OpenAiProvider::new(OpenAiConfig::from_env()?)?;
    let page = provider.list_jobs(&ListJobs { limit: Some(3), after: None }).await?;
    // The re-exported chrono names the jobs' timestamps.
    let newest: Option<finetune_core::chrono::DateTime<finetune_core::chrono::Utc>> =
        page.items.iter().map(|job| job.created_at).max();
    println!("{}: listed {} job(s), newest {newest:?}", provider.name(), page.items.len());
    Ok(())
}
