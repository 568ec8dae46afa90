//! Prism, the OpenAPI mock server that validates every request, started on
//! loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use finetune_core::testing::{PeerProcess, free_loopback_port};

/// A running Prism serving one spec; it ends when dropped or when the test
/// process exits.
#[derive(Debug)]
pub struct Prism {
    process: PeerProcess,
    url: String,
    log: PathBuf,
}

impl Prism {
    /// The workspace root (where `.tools` and `../shared` are found).
    pub fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The Prism executable: `$PRISM_BIN`, or the one `scripts/setup --test`
    /// installs in `.tools/prism`.
    pub fn binary() -> PathBuf {
        match std::env::var_os("PRISM_BIN") {
            Some(p) => PathBuf::from(p),
            None => Self::workspace_root().join(".tools/prism/node_modules/.bin/prism"),
        }
    }

    /// An API description from the workspace's `specs` folder (copies of
    /// the official OpenAI spec and the Azure excerpts, see
    /// `specs/SOURCES.md`), or from `$FINETUNE_SPECS_DIR`.
    pub fn spec(name: &str) -> PathBuf {
        let dir = match std::env::var_os("FINETUNE_SPECS_DIR") {
            Some(d) => PathBuf::from(d),
            None => Self::workspace_root().join("specs"),
        };
        dir.join(name)
    }

    /// Starts `prism mock` on a free loopback port and waits until it
    /// listens (the OpenAI spec takes some seconds to load).
    ///
    /// # Panics
    /// When Prism is not installed (`scripts/setup --test` installs it) or
    /// does not start within two minutes: this is test support.
    pub fn start(spec: &Path) -> Self {
        Self::launch(spec, None)
    }

    /// Starts `prism proxy`: every request is validated against `spec`,
    /// then forwarded to `upstream` (a stateful fake), whose answer comes
    /// back. Violations are logged, as in [`Prism::start`].
    ///
    /// # Panics
    /// As [`Prism::start`].
    pub fn proxy(spec: &Path, upstream: &str) -> Self {
        Self::launch(spec, Some(upstream))
    }

    #[allow(clippy::panic)]
    fn launch(spec: &Path, upstream: Option<&str>) -> Self {
        let bin = Self::binary();
        assert!(
            bin.exists(),
            "Prism is not installed at {}: run `scripts/setup --test`",
            bin.display()
        );
        assert!(spec.exists(), "the spec {} is missing", spec.display());
        let port = free_loopback_port().expect("a free port");
        let log = std::env::temp_dir().join(format!("prism-{port}.log"));
        std::fs::File::create(&log).expect("creating Prism's log");
        let mut command = std::process::Command::new(&bin);
        match upstream {
            None => command.args(["mock", "-h", "127.0.0.1", "-p", &port.to_string()]).arg(spec),
            Some(upstream) => command
                .args(["proxy", "-h", "127.0.0.1", "-p", &port.to_string()])
                .arg(spec)
                .arg(upstream),
        };
        let process = PeerProcess::start(&command, Some(&log)).expect("starting Prism");
        let prism = Self { process, url: format!("http://127.0.0.1:{port}"), log };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&prism.log).unwrap_or_default();
            if text.contains("Prism is listening") {
                break;
            }
            assert!(Instant::now() < deadline, "Prism did not start within 120 s:\n{text}");
            std::thread::sleep(Duration::from_millis(200));
        }
        prism
    }

    /// The mock's root URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What Prism logged so far (each request, and each validation failure).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}
