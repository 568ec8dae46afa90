//! Test support (feature `testing`): stateful fakes of the OpenAI and Azure
//! OpenAI fine-tuning APIs ([`FakeOpenAi`]), of Bedrock ([`FakeBedrock`])
//! and of ARM's deployments (`FakeArm`), all on one core (loopback server,
//! request log, [`Fault`] injection with commit-then-fail and delays); a
//! proxy that cuts connections; and launchers for moto and Prism (the
//! OpenAPI mock that validates every request), which end with the test
//! process.
//!
//! Applications can test their own flows against [`FakeOpenAi`] without a
//! network or an account.

#[cfg(feature = "azure")]
mod arm;
#[cfg(feature = "bedrock")]
mod bedrock;
mod fake_server;
#[cfg(feature = "bedrock")]
mod moto;
mod openai;
mod prism;
mod proxy;

#[cfg(feature = "azure")]
pub use arm::{ARM_ACCOUNT, ARM_API_VERSION, ARM_RESOURCE_GROUP, ARM_SUBSCRIPTION, FakeArm};
/// HTTP methods, for [`Fault`].
pub use axum::http::Method;
#[cfg(feature = "bedrock")]
pub use bedrock::FakeBedrock;
pub use fake_server::Fault;
#[cfg(feature = "bedrock")]
pub use moto::Moto;
pub use openai::{FakeFlavor, FakeOpenAi};
pub use prism::Prism;
pub use proxy::CutProxy;
