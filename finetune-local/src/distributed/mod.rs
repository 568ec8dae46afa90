//! Data-parallel training over PyTorch's own collectives (feature
//! `distributed`): a TCPStore rendezvous served by rank 0, then
//! ProcessGroupGloo across the ranks on CPU, or NCCL (the libnccl.so.2
//! libtorch_cuda links) on CUDA, all from the libtorch we link (the C++
//! side is `c10d.cpp` and `nccl.cpp` beside it; the unsafe boundary is one
//! module, `ffi`).
//!
//! [`ProcessGroup::for_device`] joins the run a launcher describes
//! ([`Topology::from_env`]: torchrun, Slurm, a Kubernetes Indexed Job) with
//! the backend the device needs, and implements the trainer's
//! [`Collective`]; [`rank_device`] gives each rank of a GPU run its own
//! GPU. Each rank also writes a heartbeat to the store; when a collective fails (a peer's connection
//! closed, or the timeout passed), the error names the rank whose heartbeat
//! stopped — rank 0 when the store itself is gone with it.

mod ffi;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tch::{Device, Tensor};

use crate::error::{LocalError, Result};
use crate::topology::Topology;
use crate::train::Collective;

/// How often each rank writes its heartbeat.
const HEARTBEAT: Duration = Duration::from_millis(500);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn heartbeat_key(rank: usize) -> String {
    format!("finetune/heartbeat/{rank}")
}

/// The store key under which rank 0 shares the NCCL unique id.
const NCCL_ID_KEY: &str = "finetune/nccl-id";

/// The version of the NCCL library a CUDA run would use, as
/// `(major, minor, patch)`; an error when libtorch brings none (a CPU-only
/// build). Opening it needs no GPU.
pub fn nccl_version() -> Result<(u32, u32, u32)> {
    ffi::nccl_version().map_err(failed)
}

/// The device this rank trains on. A launcher starts one process per GPU,
/// so on CUDA (asked for, or `None` where CUDA is present) a rank takes
/// the GPU of its local rank; an error when the node has fewer GPUs than
/// processes. CPU stays CPU.
pub fn rank_device(requested: Option<Device>, topology: &Topology) -> Result<Device> {
    let cuda = match requested {
        Some(Device::Cuda(_)) => true,
        None => tch::Cuda::is_available(),
        Some(other) => return Ok(other),
    };
    if !cuda {
        return Ok(Device::Cpu);
    }
    let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    if topology.local_rank >= count {
        return Err(LocalError::InvalidArgument(format!(
            "local rank {} needs GPU {} of this node, which has {count}: start one process \
             per GPU",
            topology.local_rank, topology.local_rank
        )));
    }
    Ok(Device::Cuda(topology.local_rank))
}

/// The collectives' engine: Gloo, or NCCL and the GPU it runs on.
#[derive(Debug)]
struct Backend {
    group: ffi::Group,
    nccl_device: Option<Device>,
}

impl Backend {
    fn name(&self) -> &'static str {
        if self.nccl_device.is_some() { "NCCL" } else { "Gloo" }
    }

    fn all_reduce_sum(&mut self, tensor: &mut Tensor) -> std::result::Result<(), ffi::CError> {
        let group = &mut self.group;
        on_device(tensor, self.nccl_device, |t| group.all_reduce_sum(std::slice::from_mut(t)))
    }

    fn broadcast(
        &mut self,
        tensor: &mut Tensor,
        root: usize,
    ) -> std::result::Result<(), ffi::CError> {
        let group = &mut self.group;
        on_device(tensor, self.nccl_device, |t| group.broadcast(std::slice::from_mut(t), root))
    }

    fn barrier(&mut self) -> std::result::Result<(), ffi::CError> {
        self.group.barrier()
    }
}

/// Runs a collective on `tensor`; for NCCL (`device` given), through a
/// contiguous copy on its GPU when the tensor is elsewhere (the trainer
/// sums its few loss and token counters in a CPU tensor) or not contiguous,
/// the result copied back into `tensor`.
fn on_device(
    tensor: &mut Tensor,
    device: Option<Device>,
    collective: impl FnOnce(&mut Tensor) -> std::result::Result<(), ffi::CError>,
) -> std::result::Result<(), ffi::CError> {
    let Some(device) = device.filter(|&d| tensor.device() != d || !tensor.is_contiguous()) else {
        return collective(tensor);
    };
    let torch = |e: tch::TchError| ffi::CError(e.to_string());
    let mut moved = tensor.f_to_device(device).and_then(|t| t.f_contiguous()).map_err(torch)?;
    collective(&mut moved)?;
    let back = moved.f_to_device(tensor.device()).map_err(torch)?;
    tensor.f_copy_(&back).map_err(torch)
}

fn failed(e: ffi::CError) -> LocalError {
    LocalError::Distributed { lost_rank: None, message: e.0 }
}

/// This process's membership of a data-parallel run.
#[derive(Debug)]
pub struct ProcessGroup {
    backend: Backend,
    store: Arc<ffi::Store>,
    rank: usize,
    world_size: usize,
    stop: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
}

impl ProcessGroup {
    /// Joins the run `topology` describes with the backend `device` needs:
    /// Gloo on CPU, NCCL on CUDA (see [`Self::gloo`], [`Self::nccl`]).
    pub fn for_device(topology: &Topology, timeout: Duration, device: Device) -> Result<Self> {
        match device {
            Device::Cuda(index) => Self::nccl(topology, timeout, index),
            _ => Self::gloo(topology, timeout),
        }
    }

    /// Joins the run `topology` describes: rank 0 serves the TCPStore at
    /// `master_addr:master_port`, every rank connects to it, and Gloo
    /// connects the ranks (on the interface `GLOO_SOCKET_IFNAME` names,
    /// else the host's address). `timeout` bounds the rendezvous and each
    /// collective.
    pub fn gloo(topology: &Topology, timeout: Duration) -> Result<Self> {
        let timeout_ms = timeout_ms(timeout);
        let store = rendezvous(topology, timeout)?;
        let group = ffi::Group::gloo(&store, topology.rank, topology.world_size, timeout_ms)
            .map_err(failed)?;
        Self::start(topology, store, Backend { group, nccl_device: None })
    }

    /// Joins the run `topology` describes over NCCL on GPU `device_index`
    /// (usually the local rank: [`rank_device`]): the TCPStore rendezvous
    /// as for Gloo, then rank 0 makes NCCL's unique id and shares it
    /// through the store. A collective that does not finish within
    /// `timeout` aborts the communicator (a dead peer would leave NCCL
    /// waiting for ever) and fails naming the lost rank.
    pub fn nccl(topology: &Topology, timeout: Duration, device_index: usize) -> Result<Self> {
        let timeout_ms = timeout_ms(timeout);
        // Fails early, before anyone waits on the store, where there is no NCCL.
        nccl_version()?;
        let store = rendezvous(topology, timeout)?;
        let id = if topology.rank == 0 {
            let id = ffi::nccl_unique_id().map_err(failed)?;
            store.set(NCCL_ID_KEY, &id).map_err(failed)?;
            id
        } else {
            store.get(NCCL_ID_KEY).map_err(failed)?
        };
        let group =
            ffi::Group::nccl(&id, topology.rank, topology.world_size, device_index, timeout_ms)
                .map_err(failed)?;
        Self::start(
            topology,
            store,
            Backend { group, nccl_device: Some(Device::Cuda(device_index)) },
        )
    }

    /// Starts this rank's heartbeat and returns the joined group.
    fn start(topology: &Topology, store: Arc<ffi::Store>, backend: Backend) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeat = {
            let (store, stop, key) =
                (Arc::clone(&store), Arc::clone(&stop), heartbeat_key(topology.rank));
            std::thread::Builder::new()
                .name(format!("finetune-heartbeat-{}", topology.rank))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // A store that is gone (rank 0 ended) is not ours to report.
                        if store.set(&key, &now_ms().to_le_bytes()).is_err() {
                            return;
                        }
                        std::thread::sleep(HEARTBEAT);
                    }
                })
                .map_err(|e| LocalError::Distributed { lost_rank: None, message: e.to_string() })?
        };
        tracing::info!(
            rank = topology.rank,
            world_size = topology.world_size,
            master = %format!("{}:{}", topology.master_addr, topology.master_port),
            "joined the data-parallel run ({})",
            backend.name()
        );
        Ok(Self {
            backend,
            store,
            rank: topology.rank,
            world_size: topology.world_size,
            stop,
            heartbeat: Some(heartbeat),
        })
    }

    /// Waits until every rank reaches this call.
    pub fn barrier(&mut self) -> Result<()> {
        let result = self.backend.barrier();
        result.map_err(|e| self.lost(e))
    }

    /// The error for a failed collective, naming the rank whose heartbeat
    /// stopped (rank 0 when the store, which it serves, cannot be reached).
    fn lost(&self, e: ffi::CError) -> LocalError {
        // Give a dead rank's heartbeat time to go stale.
        std::thread::sleep(HEARTBEAT * 3);
        let now = now_ms();
        let mut lost_rank = None;
        for rank in (0..self.world_size).filter(|&r| r != self.rank) {
            let key = heartbeat_key(rank);
            let beat = match self.store.check(&key) {
                Ok(true) => self.store.get(&key).ok(),
                Ok(false) => None,
                Err(_) => {
                    lost_rank = Some(0);
                    break;
                }
            };
            let last = beat
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_le_bytes);
            if now.saturating_sub(last) > 2 * HEARTBEAT.as_millis() as u64 {
                lost_rank = Some(rank);
                break;
            }
        }
        LocalError::Distributed { lost_rank, message: e.0 }
    }
}

fn timeout_ms(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

/// Every rank connects to the TCPStore rank 0 serves, and writes its first
/// heartbeat.
fn rendezvous(topology: &Topology, timeout: Duration) -> Result<Arc<ffi::Store>> {
    let started = std::time::Instant::now();
    let store = loop {
        let store = ffi::Store::new(
            &topology.master_addr,
            topology.master_port,
            topology.rank == 0,
            topology.world_size,
            timeout_ms(timeout),
        )
        .map_err(failed)?;
        // A restarted rank can reach the store of a rank 0 that has
        // not yet noticed the run is over: that store has counted a
        // whole world already. Wait for the new one.
        let joined = store.add("finetune/joined", 1).map_err(failed)?;
        if joined <= topology.world_size as i64 {
            break Arc::new(store);
        }
        if started.elapsed() > timeout {
            return Err(LocalError::Distributed {
                lost_rank: None,
                message: format!(
                    "the store at {}:{} belongs to a run that already started",
                    topology.master_addr, topology.master_port
                ),
            });
        }
        tracing::info!("the rendezvous store belongs to an earlier run; waiting for a new one");
        drop(store);
        std::thread::sleep(Duration::from_secs(1));
    };
    store.set(&heartbeat_key(topology.rank), &now_ms().to_le_bytes()).map_err(failed)?;
    Ok(store)
}

impl Collective for ProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<()> {
        let result = self.backend.all_reduce_sum(tensor);
        result.map_err(|e| self.lost(e))
    }

    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<()> {
        let result = self.backend.broadcast(tensor, root);
        result.map_err(|e| self.lost(e))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(heartbeat) = self.heartbeat.take() {
            let _ = heartbeat.join();
        }
    }
}
