//! moto's S3 server, started on loopback from the copy `scripts/setup
//! --test` installs in `.tools/python`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use finetune_core::testing::{PeerProcess, free_loopback_port, wait_for_port};

/// A running moto server; it ends when dropped or when the test process
/// exits (also from a `static`).
#[derive(Debug)]
pub struct Moto {
    _process: PeerProcess,
    endpoint: String,
}

impl Moto {
    /// Where moto is installed: `$MOTO_PYTHONPATH` or `.tools/python`.
    pub fn site() -> PathBuf {
        match std::env::var_os("MOTO_PYTHONPATH") {
            Some(p) => PathBuf::from(p),
            None => super::Prism::workspace_root().join(".tools/python"),
        }
    }

    /// Starts moto on a free loopback port and waits until it listens.
    ///
    /// # Panics
    /// When moto is not installed or does not start within a minute: this
    /// is test support.
    #[allow(clippy::panic)]
    pub fn start() -> Self {
        let site = Self::site();
        assert!(
            site.join("moto").exists(),
            "moto is not installed in {}: run `scripts/setup --test`",
            site.display()
        );
        let port = free_loopback_port().expect("a free port");
        let mut command = std::process::Command::new("python3");
        command
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONPATH", &site);
        let process = PeerProcess::start(&command, None).expect("starting moto");
        assert!(wait_for_port(port, Duration::from_secs(60)), "moto did not start within 60 s");
        Self { _process: process, endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Creates a bucket (moto takes the plain, unsigned S3 call).
    ///
    /// # Panics
    /// When moto refuses: this is test support.
    pub async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("creating a bucket in moto");
        assert!(response.status().is_success(), "moto refused the bucket: {}", response.status());
    }

    /// An `object_store` client for `bucket`, with moto's test credentials.
    ///
    /// # Panics
    /// When the client cannot be built: this is test support.
    pub fn store(&self, bucket: &str) -> Arc<dyn object_store::ObjectStore> {
        Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_bucket_name(bucket)
                .with_access_key_id("testing")
                .with_secret_access_key("testing")
                .build()
                .expect("an S3 client for moto"),
        )
    }

    /// An AWS configuration with static test credentials in `us-east-1`.
    pub fn sdk_config() -> aws_config::SdkConfig {
        use aws_credential_types::Credentials;
        use aws_credential_types::provider::SharedCredentialsProvider;
        aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "finetune-tests",
            )))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build()
    }
}
