//! A downstream application, built outside the workspace by
//! `scripts/outside-crate/run`: it loads a model with finetune-local,
//! generates, and lists jobs through the OpenAI provider.
//!
//! Usage: `finetune-outside <model dir>` with `OPENAI_API_KEY` and
//! `OPENAI_BASE_URL` set.

use finetune_core::{FineTuneProvider, ListJobs};
use finetune_local::generate::{GenerationOptions, generate};
use finetune_local::tch::{Device, Kind};
use finetune_local::{CausalLm, LoadOptions, RuntimeInfo, Tokenizer};
use finetune_providers::{OpenAiConfig, OpenAiProvider};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: finetune-outside <model dir>")?;
    let dir = std::path::Path::new(&dir);
    println!("{}", RuntimeInfo::detect());

    // The re-exported tch names the device and dtype.
    let options = LoadOptions { device: Device::Cpu, dtype: Some(Kind::Float) };
    let model = CausalLm::load(dir, &options)?;
    let tokenizer = Tokenizer::from_dir(dir)?;
    let prompt = tokenizer.encode("Spell backwards: lantern", true)?;
    let generation = GenerationOptions { max_new_tokens: 6, ..Default::default() };
    let out = generate(&model, &[prompt], &generation)?;
    let tokens = &out[0].tokens;
    if tokens.is_empty() {
        return Err("the model generated no token".into());
    }
    println!("local: generated {} tokens: {:?}", tokens.len(), tokenizer.decode(tokens, true)?);

    let provider = OpenAiProvider::new(OpenAiConfig::from_env()?)?;
    let page = provider.list_jobs(&ListJobs { limit: Some(3), after: None }).await?;
    println!("{}: listed {} job(s)", provider.name(), page.items.len());
    Ok(())
}
