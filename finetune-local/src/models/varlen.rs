//! Packed rows on CUDA: libtorch's variable-length flash attention, which
//! takes the packed examples as one sequence with cumulative sequence
//! lengths, so no `[row, row]` mask is built and no call is made per
//! example. tch does not bind `at::_flash_attention_forward`; `varlen.cpp`
//! (compiled by the build script against libtorch's headers) calls it, and
//! autograd records its backward as for any libtorch op.
//!
//! Flash attention needs a CUDA device it supports (compute capability 8.0
//! or newer), bf16 or f16, and a head width it has kernels for; where the
//! first call fails, packed rows go back to the run-by-run path for the
//! rest of the process.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicU8, Ordering};

use tch::{Device, Kind, Tensor};

use crate::error::{LocalError, Result};

unsafe extern "C" {
    fn ft_varlen_string_free(s: *mut c_char);
    #[allow(clippy::too_many_arguments)]
    fn ft_flash_varlen(
        q: *const c_void,
        k: *const c_void,
        v: *const c_void,
        cu_q: *const c_void,
        cu_k: *const c_void,
        max_q: i64,
        max_k: i64,
        scale: f64,
        has_scale: i32,
        error: *mut *mut c_char,
    ) -> *mut c_void;
}

/// Whether the kernel ran: unknown (not tried), works, or failed once.
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const WORKS: u8 = 1;
const FAILED: u8 = 2;

/// Whether variable-length flash attention has run in this process (a
/// diagnostic: packed rows on CUDA in bf16 or f16 use it where it works).
pub fn flash_varlen_used() -> bool {
    STATE.load(Ordering::Relaxed) == WORKS
}

/// Whether packed rows on `device` in `kind` may use the kernel (it has
/// not failed in this process).
pub(crate) fn usable(device: Device, kind: Kind) -> bool {
    matches!(device, Device::Cuda(_))
        && matches!(kind, Kind::BFloat16 | Kind::Half)
        && STATE.load(Ordering::Relaxed) != FAILED
}

/// Whether packed attention of `q` (`[batch, heads, seq, dim]`) should try
/// the kernel.
pub(crate) fn eligible(q: &Tensor) -> bool {
    let dim = q.size().last().copied().unwrap_or(0);
    usable(q.device(), q.kind()) && dim % 8 == 0 && dim <= 256
}

/// Causal attention within each run of each row, as
/// [`super::layers::attend`]'s run-by-run path computes it: q
/// `[batch, heads, seq, dim]`, k and v `[batch, kv_heads, seq, dim]` (fewer
/// heads for grouped-query attention), `rows` the runs' lengths per row.
/// `None` when the kernel fails (and from then on [`eligible`] is false).
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rows: &[Vec<i64>],
    scale: Option<f64>,
) -> Result<Option<Tensor>> {
    let s = q.size();
    let (b, heads, t, d) = (s[0], s[1], s[2], s[3]);
    let kv_heads = k.size()[1];
    // `[batch × seq, heads, dim]`: the rows one after the other.
    let flat = |x: &Tensor, h: i64| -> Result<Tensor> {
        Ok(x.f_transpose(1, 2)?.f_contiguous()?.f_view([b * t, h, d])?)
    };
    let (qf, kf, vf) = (flat(q, heads)?, flat(k, kv_heads)?, flat(v, kv_heads)?);
    let mut cumulative = vec![0i32];
    let mut longest = 0;
    for &n in rows.iter().flatten() {
        let last = cumulative.last().copied().unwrap_or(0);
        cumulative.push(last + i32::try_from(n).map_err(|_| too_long(n))?);
        longest = longest.max(n);
    }
    let cu = Tensor::f_from_slice(&cumulative)?.f_to_device(q.device())?;
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: every pointer is an `at::Tensor*` held by a live `Tensor` for
    // the call; the function sets `error` or returns a tensor, never both.
    let out = unsafe {
        ft_flash_varlen(
            qf.as_ptr().cast(),
            kf.as_ptr().cast(),
            vf.as_ptr().cast(),
            cu.as_ptr().cast(),
            cu.as_ptr().cast(),
            longest,
            longest,
            scale.unwrap_or(0.0),
            i32::from(scale.is_some()),
            &raw mut error,
        )
    };
    if out.is_null() {
        // SAFETY: null, or set by the C side and not freed yet.
        let why = unsafe { shim_error(error) };
        STATE.store(FAILED, Ordering::Relaxed);
        tracing::warn!(%why, "variable-length flash attention failed; packed rows are attended example by example");
        return Ok(None);
    }
    STATE.store(WORKS, Ordering::Relaxed);
    // SAFETY: a new `at::Tensor*` from the C side, owned from here on.
    let out = unsafe { Tensor::from_ptr(out.cast()) };
    Ok(Some(out.f_view([b, t, heads, d])?.f_transpose(1, 2)?))
}

/// The message a C shim (this one's, or `train/device_memory.cpp`) left in
/// its `error` out-parameter, freed.
///
/// # Safety
/// `error` is null or a NUL-terminated string the shim malloc'd, not freed
/// yet; it must not be used afterwards.
pub(crate) unsafe fn shim_error(error: *mut c_char) -> String {
    if error.is_null() {
        return "unknown error".to_owned();
    }
    // SAFETY: per the contract, a live NUL-terminated string, freed once,
    // here.
    let text = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { ft_varlen_string_free(error) };
    text
}

fn too_long(n: i64) -> LocalError {
    LocalError::InvalidArgument(format!("a packed run of {n} tokens is too long"))
}
