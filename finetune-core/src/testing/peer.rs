//! Processes that tests start beside them (emulators, mock servers), tied
//! to the test process's life.
//!
//! A test binary keeps its peers in statics (one moto for all tests) or
//! panics before a guard drops, and a `static` is never dropped: a plain
//! child process would outlive the test run. So a [`PeerProcess`] runs its
//! program under a small `sh` watchdog that holds the read end of a pipe
//! whose write end only this process holds. The kernel closes that end when
//! this process exits — normally, by panic, abort or `SIGKILL` — and the
//! watchdog then ends the program's whole process group. Dropping the
//! handle does the same at once.

use std::io;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `"$@"` in a session of its own (so its children end with it) and
/// ends that group when stdin reaches end of file or the watchdog is told to
/// stop.
const WATCHDOG: &str = r#"setsid "$@" </dev/null &
peer=$!
stop() { kill -TERM "-$peer" 2>/dev/null; wait "$peer"; exit 0; }
trap stop INT TERM HUP
cat >/dev/null
stop"#;

/// A peer process that ends when this handle drops or this process exits.
#[derive(Debug)]
pub struct PeerProcess {
    watchdog: Child,
    tie: Option<ChildStdin>,
    program: String,
}

impl PeerProcess {
    /// Starts `command`'s program with its arguments, environment and
    /// working folder, its output appended to `log` (or discarded).
    pub fn start(command: &Command, log: Option<&Path>) -> io::Result<Self> {
        let mut watchdog = Command::new("sh");
        watchdog.arg("-c").arg(WATCHDOG).arg("sh").arg(command.get_program());
        watchdog.args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => watchdog.env(key, value),
                None => watchdog.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            watchdog.current_dir(dir);
        }
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut watchdog = watchdog.stdin(Stdio::piped()).stdout(stdout).stderr(stderr).spawn()?;
        let tie = watchdog.stdin.take();
        let program = command.get_program().to_string_lossy().into_owned();
        Ok(Self { watchdog, tie, program })
    }

    /// Whether the peer (its watchdog) is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.watchdog.try_wait(), Ok(None))
    }

    /// Ends the peer and waits for it, at most ten seconds (then the
    /// watchdog is killed).
    pub fn stop(&mut self) {
        drop(self.tie.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.watchdog.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(program = %self.program, "peer did not stop within 10 s; killing its watchdog");
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_loopback_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts connections on loopback `port`; false
/// when nothing did within `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: &str) -> bool {
        Path::new("/proc").join(pid).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    }

    fn pid_of(pid_file: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(pid) = std::fs::read_to_string(pid_file)
                && !pid.trim().is_empty()
            {
                return pid.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "the peer never wrote its pid");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn dropping_the_handle_ends_the_peer_and_its_children() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pid_file = dir.path().join("pid");
        let mut command = Command::new("sh");
        // The peer starts a child of its own and records that child's pid.
        command.arg("-c").arg(r#"sleep 300 & echo $! > "$PID_FILE"; wait"#);
        command.env("PID_FILE", &pid_file);
        let mut peer = PeerProcess::start(&command, None).unwrap_or_else(|e| panic!("{e}"));
        let grandchild = pid_of(&pid_file);
        assert!(peer.is_running() && alive(&grandchild));
        drop(peer);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(&grandchild) {
            assert!(Instant::now() < deadline, "the peer's child {grandchild} outlived the handle");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_peer_ends_when_the_test_process_is_killed() {
        // A child test process starts a peer and is SIGKILLed: no destructor
        // runs, yet the peer ends.
        if let Some(pid_file) = std::env::var_os("PEER_TEST_PID_FILE") {
            let mut command = Command::new("sh");
            command.arg("-c").arg(r#"echo $$ > "$PEER_TEST_PID_FILE"; exec sleep 300"#);
            command.env("PEER_TEST_PID_FILE", &pid_file);
            let peer = PeerProcess::start(&command, None).unwrap_or_else(|e| panic!("{e}"));
            std::mem::forget(peer);
            std::thread::sleep(Duration::from_secs(300));
            return;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pid_file = dir.path().join("pid");
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
        let mut test = Command::new(exe)
            .args(["--exact", "testing::peer::tests::a_peer_ends_when_the_test_process_is_killed"])
            .env("PEER_TEST_PID_FILE", &pid_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let peer = pid_of(&pid_file);
        assert!(alive(&peer));
        test.kill().unwrap_or_else(|e| panic!("{e}"));
        test.wait().unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(&peer) {
            assert!(Instant::now() < deadline, "the peer {peer} outlived its killed test process");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
