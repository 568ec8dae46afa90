//! What a CUDA device holds for this process, from libtorch's caching
//! allocator (`device_memory.cpp`; tch does not bind it): the figures
//! `torch.cuda.memory_stats` reports, so a run's GPU peak can stand next
//! to PyTorch's.
#![allow(unsafe_code)]

use crate::error::{LocalError, Result};

/// Bytes of one CUDA device held by libtorch's caching allocator in this
/// process: handed out to tensors (`allocated`, PyTorch's
/// `memory_allocated`) and taken from the device (`reserved`, its
/// `memory_reserved`: allocated plus the allocator's cache), now and at
/// their peak since the process started or the peaks were last reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Held by tensors now.
    pub allocated: u64,
    /// The most held by tensors at once.
    pub peak_allocated: u64,
    /// Taken from the device now.
    pub reserved: u64,
    /// The most taken from the device at once.
    pub peak_reserved: u64,
}

impl DeviceMemory {
    /// CUDA device `index`'s figures. An error where libtorch has no CUDA
    /// allocator (a CPU-only build), the allocator has not allocated yet,
    /// or there is no such device.
    pub fn of_cuda(index: usize) -> Result<Self> {
        read(index, false)
    }

    /// CUDA device `index`'s figures, after which its peaks restart from
    /// the current figures (`torch.cuda.reset_peak_memory_stats`).
    pub fn reset_peaks(index: usize) -> Result<Self> {
        read(index, true)
    }
}

#[cfg(finetune_shims)]
fn read(index: usize, reset: bool) -> Result<DeviceMemory> {
    use std::ffi::c_char;

    unsafe extern "C" {
        fn ft_cuda_memory(
            index: i64,
            reset_peak: i32,
            out: *mut i64,
            error: *mut *mut c_char,
        ) -> i32;
    }
    let index = i64::try_from(index)
        .map_err(|_| LocalError::InvalidArgument(format!("no CUDA device {index}")))?;
    let mut out = [0i64; 4];
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `out` holds the four values the function writes; it sets
    // `error` only when it returns -1.
    let rc = unsafe { ft_cuda_memory(index, i32::from(reset), out.as_mut_ptr(), &raw mut error) };
    if rc != 0 {
        // SAFETY: set by the C side on failure, not freed yet.
        let why = unsafe { crate::models::varlen::shim_error(error) };
        return Err(tch::TchError::Torch(format!("CUDA memory of device {index}: {why}")).into());
    }
    let bytes = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(DeviceMemory {
        allocated: bytes(out[0]),
        peak_allocated: bytes(out[1]),
        reserved: bytes(out[2]),
        peak_reserved: bytes(out[3]),
    })
}

#[cfg(not(finetune_shims))]
fn read(_index: usize, _reset: bool) -> Result<DeviceMemory> {
    Err(LocalError::InvalidArgument(
        "this build could not compile its libtorch shims: no CUDA memory figures".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_a_cuda_allocation_gets_an_error_not_figures() {
        if tch::Cuda::is_available() {
            return;
        }
        let err = DeviceMemory::of_cuda(0).unwrap_err();
        assert!(err.to_string().contains("CUDA memory of device 0"), "{err}");
        assert!(DeviceMemory::reset_peaks(usize::MAX).is_err());
    }
}
