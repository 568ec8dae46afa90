//! Fine-tuning providers for the finetune workspace.
//!
//! Each provider implements [`finetune_core::FineTuneProvider`] and sits
//! behind its own cargo feature, so an application compiles only the clients
//! it uses (and none of them needs libtorch):
//!
//! | feature  | provider |
//! |----------|----------|
//! | `openai` | OpenAI fine-tuning (files, jobs, events, checkpoints) |
//! | `azure`  | Azure OpenAI fine-tuning (api-key or Entra ID) |
//! | `bedrock`| AWS Bedrock model customization, data on S3 |
//!
//! The providers themselves are being built (see the project's issues); this
//! crate currently fixes their place in the workspace and their features.

pub use finetune_core::FineTuneProvider;
