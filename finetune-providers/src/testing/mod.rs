//! Test support (feature `testing`): a stateful fake of the OpenAI and
//! Azure OpenAI fine-tuning APIs, a proxy that cuts connections, and a
//! launcher for Prism, the OpenAPI mock that validates every request.
//!
//! Applications can test their own flows against [`FakeOpenAi`] without a
//! network or an account.

#[cfg(feature = "bedrock")]
mod bedrock;
mod fake;
#[cfg(feature = "bedrock")]
mod moto;
mod prism;
mod proxy;

/// HTTP methods, for [`Fault`].
pub use axum::http::Method;
#[cfg(feature = "bedrock")]
pub use bedrock::{BedrockFault, FakeBedrock};
pub use fake::{FakeFlavor, FakeOpenAi, Fault};
#[cfg(feature = "bedrock")]
pub use moto::Moto;
pub use prism::Prism;
pub use proxy::CutProxy;

/// A listener on a free loopback port, and its address.
async fn loopback() -> (tokio::net::TcpListener, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port for a fake");
    let addr = listener.local_addr().expect("the fake's address");
    (listener, addr)
}

/// Serves `app` on `listener` in the background of the current runtime.
fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}
