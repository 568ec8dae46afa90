//! A local job's folder as the record of the job, so that jobs outlive the
//! process that started them.
//!
//! Beside what [`crate::run_job`] writes (adapter, merged model, metrics,
//! checkpoints), the folder holds:
//!
//! ```text
//! <job>/job.json        the job as last reported (state, model) and its spec
//! <job>/data/           the validated datasets, copied at submit
//! <job>/.owner.lock     locked by the process training it, while it does
//! <job>/cancel          asks the owning process to stop
//! ```
//!
//! A job whose `job.json` is not terminal and whose owner lock is free was
//! interrupted (its process died): a provider may take it over and resume it
//! from its newest checkpoint. Locks are `flock`s, released by the kernel
//! when the owner dies, SIGKILL included. The same kind of lock on
//! `<root>/.device-<device>.lock` makes jobs on one device run one after
//! the other, across threads and processes.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use finetune_core::{Error, Job, JobId, JobSpec, Location, Result};
use serde::{Deserialize, Serialize};

/// What `job.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The job as last reported.
    pub(crate) job: Job,
    /// What was asked for.
    pub(crate) spec: JobSpec,
    /// The training data inside the folder.
    pub(crate) training: PathBuf,
    /// The validation data inside the folder.
    #[serde(default)]
    pub(crate) validation: Option<PathBuf>,
    /// How many times the job was taken over after an interruption.
    #[serde(default)]
    pub(crate) resumed: u32,
}

/// One job's folder.
#[derive(Debug, Clone)]
pub(crate) struct JobFolder {
    pub(crate) dir: PathBuf,
}

impl JobFolder {
    /// The folder of job `id` under `root`; an id that is not a plain
    /// folder name is no job of ours.
    pub(crate) fn of(root: &Path, id: &JobId) -> Result<Self> {
        let s = id.as_str();
        let plain = !s.is_empty()
            && s.len() <= 128
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !plain {
            return Err(Error::NotFound { what: format!("local job {id}") });
        }
        Ok(Self { dir: root.join(s) })
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("job.json")
    }

    /// The record, or `None` when the folder holds no job.
    pub(crate) fn read(&self) -> Result<Option<Record>> {
        let path = self.record_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                Error::invalid_at(
                    Location::file(path.display().to_string()).with_line(e.line() as u64),
                    format!("not a job record: {e}"),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Replaces the record atomically (a reader never sees half of it).
    pub(crate) fn write(&self, record: &Record) -> Result<()> {
        let path = self.record_path();
        let tmp = self.dir.join(".job.json.tmp");
        let text = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::other("serializing the job record", e))?;
        let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        file.write_all(&text).map_err(|e| Error::io(&tmp, e))?;
        file.sync_data().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Takes ownership of the job: `None` while another process (or
    /// thread) owns it.
    pub(crate) fn try_own(&self) -> Result<Option<File>> {
        try_lock(&self.dir.join(".owner.lock"))
    }

    fn cancel_marker(&self) -> PathBuf {
        self.dir.join("cancel")
    }

    /// Asks whoever trains the job to stop.
    pub(crate) fn request_cancel(&self) -> Result<()> {
        let path = self.cancel_marker();
        File::create(&path).map(drop).map_err(|e| Error::io(path, e))
    }

    /// Whether a stop was asked for.
    pub(crate) fn cancel_requested(&self) -> bool {
        self.cancel_marker().exists()
    }
}

/// An exclusive lock on `path` (created when missing), or `None` when it is
/// held elsewhere. Held until the returned file is dropped or the process
/// dies.
pub(crate) fn try_lock(path: &Path) -> Result<Option<File>> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// The lock file that serializes the jobs of one device under `root`.
pub(crate) fn device_lock_path(root: &Path, device: tch::Device) -> PathBuf {
    let name = match device {
        tch::Device::Cpu => "cpu".to_owned(),
        tch::Device::Cuda(n) => format!("cuda{n}"),
        other => format!("{other:?}").to_lowercase(),
    };
    root.join(format!(".device-{name}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_exclude_each_other_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = try_lock(&path).unwrap();
        assert!(first.is_some());
        assert!(try_lock(&path).unwrap().is_none(), "a second open of the file must not lock");
        drop(first);
        assert!(try_lock(&path).unwrap().is_some());
    }

    #[test]
    fn ids_that_are_paths_are_no_jobs() {
        let root = Path::new("/tmp/jobs");
        for bad in ["../etc", "a/b", "", ".hidden"] {
            assert!(JobFolder::of(root, &JobId::new(bad)).is_err(), "{bad}");
        }
        assert!(JobFolder::of(root, &JobId::new("local-20261203-ab12")).is_ok());
    }
}
