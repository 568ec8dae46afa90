//! Where this process stands in a multi-process run, read from its
//! launcher's environment: torchrun's variables, Slurm's, or a Kubernetes
//! Indexed Job's. One [`Topology`] whatever the launcher, so the trainer
//! runs unchanged under `torchrun`, `srun -n N` or an Indexed Job.
//!
//! | launcher | rank | world size | local rank | rendezvous host | port |
//! |---|---|---|---|---|---|
//! | torchrun (`RANK` set) | `RANK` | `WORLD_SIZE` | `LOCAL_RANK` | `MASTER_ADDR` | `MASTER_PORT` |
//! | Slurm (`SLURM_PROCID` set) | `SLURM_PROCID` | `SLURM_NTASKS` | `SLURM_LOCALID` | the first host of `SLURM_JOB_NODELIST` (or `MASTER_ADDR`) | `MASTER_PORT`, else 29500 |
//! | Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` set) | `JOB_COMPLETION_INDEX` | `WORLD_SIZE` | 0 (one process per pod) | `MASTER_ADDR` (pod 0 through the headless Service) | `MASTER_PORT`, else 29500 |
//!
//! torchrun's variables win when several launchers' are present (torchrun
//! run inside a Slurm allocation sets its own). None of them: one process.

use crate::error::{LocalError, Result};

/// The port of the rendezvous when the launcher gives none (PyTorch's).
pub const DEFAULT_PORT: u16 = 29_500;

/// Which launcher started the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// No launcher: one process.
    Single,
    /// torchrun (or anything setting its variables).
    Torchrun,
    /// Slurm's `srun`.
    Slurm,
    /// A Kubernetes Indexed Job.
    KubernetesIndexedJob,
}

/// This process's place in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Who set it.
    pub launcher: Launcher,
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Processes in all.
    pub world_size: usize,
    /// This process's rank on its machine (its GPU index).
    pub local_rank: usize,
    /// The host of rank 0's rendezvous store.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
}

impl Topology {
    /// One process, alone.
    pub fn single() -> Self {
        Self {
            launcher: Launcher::Single,
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_PORT,
        }
    }

    /// From this process's environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From the variables `var` returns (`None`: unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let need =
            |name: &str, why: &str| get(name).ok_or_else(|| bad(name, &format!("not set; {why}")));
        let number = |name: &str, value: String| -> Result<usize> {
            value.trim().parse().map_err(|_| bad(name, &format!("`{value}` is not a number")))
        };
        let port = |name: &str| -> Result<u16> {
            match get(name) {
                None => Ok(DEFAULT_PORT),
                Some(v) => match v.trim().parse::<u16>() {
                    Ok(p) if p > 0 => Ok(p),
                    _ => Err(bad(name, &format!("`{v}` is not a port (1 to 65535)"))),
                },
            }
        };
        let topology = if let Some(rank) = get("RANK") {
            let why = "torchrun sets it with RANK";
            Self {
                launcher: Launcher::Torchrun,
                rank: number("RANK", rank)?,
                world_size: number("WORLD_SIZE", need("WORLD_SIZE", why)?)?,
                local_rank: number("LOCAL_RANK", need("LOCAL_RANK", why)?)?,
                master_addr: need("MASTER_ADDR", why)?,
                master_port: match get("MASTER_PORT") {
                    Some(_) => port("MASTER_PORT")?,
                    None => return Err(bad("MASTER_PORT", &format!("not set; {why}"))),
                },
            }
        } else if let Some(rank) = get("SLURM_PROCID") {
            let why = "srun sets it with SLURM_PROCID";
            let rank = number("SLURM_PROCID", rank)?;
            let world_size = number("SLURM_NTASKS", need("SLURM_NTASKS", why)?)?;
            let local_rank = number("SLURM_LOCALID", need("SLURM_LOCALID", why)?)?;
            let master_addr = match get("MASTER_ADDR") {
                Some(addr) => addr,
                None => first_host(&need("SLURM_JOB_NODELIST", why)?)?,
            };
            Self {
                launcher: Launcher::Slurm,
                rank,
                world_size,
                local_rank,
                master_addr,
                master_port: port("MASTER_PORT")?,
            }
        } else if let Some(index) = get("JOB_COMPLETION_INDEX") {
            let why = "an Indexed Job's pod template must set it (the Job's completions)";
            Self {
                launcher: Launcher::KubernetesIndexedJob,
                rank: number("JOB_COMPLETION_INDEX", index)?,
                world_size: number("WORLD_SIZE", need("WORLD_SIZE", why)?)?,
                local_rank: 0,
                master_addr: need(
                    "MASTER_ADDR",
                    "an Indexed Job's pod template must set it to pod 0's name under the headless Service",
                )?,
                master_port: port("MASTER_PORT")?,
            }
        } else {
            return Ok(Self::single());
        };
        topology.check()?;
        Ok(topology)
    }

    /// Refuses values that cannot describe a run.
    fn check(&self) -> Result<()> {
        let (rank_var, world_var) = match self.launcher {
            Launcher::Torchrun => ("RANK", "WORLD_SIZE"),
            Launcher::Slurm => ("SLURM_PROCID", "SLURM_NTASKS"),
            Launcher::KubernetesIndexedJob => ("JOB_COMPLETION_INDEX", "WORLD_SIZE"),
            Launcher::Single => return Ok(()),
        };
        if self.world_size == 0 {
            return Err(bad(world_var, "must be at least 1"));
        }
        if self.rank >= self.world_size {
            return Err(bad(
                rank_var,
                &format!("{} is not below {world_var}={}", self.rank, self.world_size),
            ));
        }
        if self.local_rank > self.rank {
            let var = if self.launcher == Launcher::Slurm { "SLURM_LOCALID" } else { "LOCAL_RANK" };
            return Err(bad(
                var,
                &format!("{} is above the global rank {}", self.local_rank, self.rank),
            ));
        }
        Ok(())
    }

    /// Whether this process writes the run's outputs (rank 0).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

/// The variable bounding each collective and the rendezvous, in seconds.
pub const TIMEOUT_VARIABLE: &str = "FINETUNE_DIST_TIMEOUT_SECS";

/// How long a rank waits for the others (the rendezvous, each collective)
/// when [`TIMEOUT_VARIABLE`] is unset.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The collective timeout [`TIMEOUT_VARIABLE`] sets among the variables
/// `var` returns, [`DEFAULT_TIMEOUT`] when unset; a value that is not a
/// whole number of seconds above zero is an error naming the variable.
pub fn timeout_from_vars(var: impl Fn(&str) -> Option<String>) -> Result<std::time::Duration> {
    match var(TIMEOUT_VARIABLE).filter(|v| !v.trim().is_empty()) {
        None => Ok(DEFAULT_TIMEOUT),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(std::time::Duration::from_secs(secs)),
            _ => Err(bad(
                TIMEOUT_VARIABLE,
                &format!("`{v}` is not a whole number of seconds above 0"),
            )),
        },
    }
}

fn bad(variable: &str, message: &str) -> LocalError {
    LocalError::Topology { variable: variable.into(), message: message.into() }
}

/// The first host of a Slurm node list: `node[01-04,07],gpu5` → `node01`.
pub fn first_host(list: &str) -> Result<String> {
    let invalid = |why: &str| bad("SLURM_JOB_NODELIST", &format!("`{list}`: {why}"));
    // The first entry: up to a comma outside brackets.
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or_else(|| invalid("unbalanced `]`"))?,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let entry = list[..end].trim();
    let Some(open) = entry.find('[') else {
        return if entry.is_empty() { Err(invalid("no host")) } else { Ok(entry.to_owned()) };
    };
    let close = entry[open..].find(']').map(|i| open + i).ok_or_else(|| invalid("unclosed `[`"))?;
    let first = entry[open + 1..close].split(',').next().unwrap_or_default();
    let start = first.split('-').next().unwrap_or_default().trim();
    if start.is_empty() || !start.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("a range must start with a number"));
    }
    Ok(format!("{}{}{}", &entry[..open], start, &entry[close + 1..]))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Topology> {
        let map: HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Topology::from_vars(|name| map.get(name).cloned())
    }

    fn variable(e: LocalError) -> String {
        match e {
            LocalError::Topology { variable, .. } => variable,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn the_collective_timeout_is_seconds_above_zero_or_an_error_naming_its_variable() {
        let timeout = |v: Option<&str>| timeout_from_vars(|_| v.map(str::to_owned));
        assert_eq!(timeout(None).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(timeout(Some(" ")).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(timeout(Some("45")).unwrap(), std::time::Duration::from_secs(45));
        for wrong in ["0", "-5", "1.5", "5m"] {
            let e = timeout(Some(wrong)).unwrap_err();
            assert!(e.to_string().contains(wrong), "{e}");
            assert_eq!(variable(e), TIMEOUT_VARIABLE);
        }
    }

    #[test]
    fn each_launcher_maps_to_one_topology() {
        assert_eq!(from(&[]).unwrap(), Topology::single());
        let t = from(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29400"),
        ])
        .unwrap();
        assert_eq!(
            (t.launcher, t.rank, t.world_size, t.local_rank, t.master_addr.as_str(), t.master_port),
            (Launcher::Torchrun, 3, 4, 1, "10.0.0.2", 29400)
        );
        let t = from(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[07-09,12],cpu1"),
        ])
        .unwrap();
        assert_eq!(
            (t.launcher, t.rank, t.world_size, t.master_addr.as_str(), t.master_port),
            (Launcher::Slurm, 1, 2, "gpu07", DEFAULT_PORT)
        );
        assert!(!t.is_main());
        let t = from(&[
            ("JOB_COMPLETION_INDEX", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "train-0.train"),
        ])
        .unwrap();
        assert_eq!((t.launcher, t.rank, t.local_rank), (Launcher::KubernetesIndexedJob, 0, 0));
        assert!(t.is_main());
        // torchrun inside a Slurm allocation: torchrun's variables win.
        let t = from(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1234"),
            ("SLURM_PROCID", "5"),
        ])
        .unwrap();
        assert_eq!(t.launcher, Launcher::Torchrun);
    }

    #[test]
    fn missing_or_inconsistent_values_name_their_variable() {
        let torchrun =
            [("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "h")];
        assert_eq!(variable(from(&torchrun).unwrap_err()), "MASTER_PORT");
        let mut bad_rank = torchrun.to_vec();
        bad_rank[0] = ("RANK", "2");
        bad_rank.push(("MASTER_PORT", "1"));
        let e = from(&bad_rank).unwrap_err();
        assert!(e.to_string().contains("2 is not below WORLD_SIZE=2"), "{e}");
        assert_eq!(variable(e), "RANK");
        assert_eq!(
            variable(from(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "x")]).unwrap_err()),
            "SLURM_NTASKS"
        );
        assert_eq!(
            variable(
                from(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), ("SLURM_LOCALID", "0")])
                    .unwrap_err()
            ),
            "SLURM_JOB_NODELIST"
        );
        assert_eq!(
            variable(from(&[("JOB_COMPLETION_INDEX", "1"), ("MASTER_ADDR", "h")]).unwrap_err()),
            "WORLD_SIZE"
        );
        let port = [
            ("JOB_COMPLETION_INDEX", "0"),
            ("WORLD_SIZE", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
        ];
        assert_eq!(variable(from(&port).unwrap_err()), "MASTER_PORT");
        let zero = [("JOB_COMPLETION_INDEX", "0"), ("WORLD_SIZE", "0"), ("MASTER_ADDR", "h")];
        assert_eq!(variable(from(&zero).unwrap_err()), "WORLD_SIZE");
    }

    #[test]
    fn slurm_node_lists_give_their_first_host() {
        assert_eq!(first_host("node01").unwrap(), "node01");
        assert_eq!(first_host("a1,b2").unwrap(), "a1");
        assert_eq!(first_host("node[001-004,007]").unwrap(), "node001");
        assert_eq!(first_host("gpu-[3,5]-ib,gpu-9").unwrap(), "gpu-3-ib");
        assert_eq!(first_host("rack[2-3]").unwrap(), "rack2");
        for bad in ["", "node[", "node]", "node[a-b]"] {
            assert!(first_host(bad).is_err(), "{bad}");
        }
    }
}
