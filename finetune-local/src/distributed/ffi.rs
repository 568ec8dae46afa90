//! The unsafe boundary to `c10d.cpp` and `nccl.cpp` (beside this file):
//! the only module of the crate that may use `unsafe`.
//!
//! Invariants (also written at the top of the C++ file):
//! * each handle (`*mut c_void`) comes from its `_new` function, is not
//!   null, and is freed exactly once, by [`Handle`]'s drop;
//! * a tensor pointer is tch's `*mut C_tensor`, an `at::Tensor*` that
//!   outlives the call (the caller holds the `Tensor`);
//! * a group is used from one thread at a time (`&mut self`), in the same
//!   order on every rank;
//! * on failure a function returns null or -1 and sets `*error` to a
//!   C string that we own and free; no C++ exception crosses the boundary.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};

unsafe extern "C" {
    fn ft_c10d_string_free(s: *mut c_char);
    fn ft_c10d_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        world_size: usize,
        timeout_ms: i64,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn ft_c10d_store_free(store: *mut c_void);
    fn ft_c10d_store_set(
        store: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: usize,
        error: *mut *mut c_char,
    ) -> c_int;
    fn ft_c10d_store_get(
        store: *mut c_void,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut usize,
        error: *mut *mut c_char,
    ) -> c_int;
    fn ft_c10d_store_add(
        store: *mut c_void,
        key: *const c_char,
        value: i64,
        out: *mut i64,
        error: *mut *mut c_char,
    ) -> c_int;
    fn ft_c10d_store_check(
        store: *mut c_void,
        key: *const c_char,
        present: *mut c_int,
        error: *mut *mut c_char,
    ) -> c_int;
    fn ft_c10d_gloo_new(
        store: *mut c_void,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn ft_c10d_group_free(group: *mut c_void);
    fn ft_c10d_allreduce_sum(
        group: *mut c_void,
        tensors: *const *mut c_void,
        n: usize,
        error: *mut *mut c_char,
    ) -> c_int;
    fn ft_c10d_broadcast(
        group: *mut c_void,
        tensors: *const *mut c_void,
        n: usize,
        root: c_int,
        error: *mut *mut c_char,
    ) -> c_int;
    fn ft_c10d_barrier(group: *mut c_void, error: *mut *mut c_char) -> c_int;

    fn ft_nccl_version(version: *mut c_int, error: *mut *mut c_char) -> c_int;
    fn ft_nccl_unique_id(out: *mut u8, len: usize, error: *mut *mut c_char) -> c_int;
    fn ft_nccl_new(
        id: *const u8,
        len: usize,
        rank: c_int,
        size: c_int,
        device_index: c_int,
        timeout_ms: i64,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn ft_nccl_free(group: *mut c_void);
    fn ft_nccl_allreduce_sum(
        group: *mut c_void,
        tensors: *const *mut c_void,
        n: usize,
        error: *mut *mut c_char,
    ) -> c_int;
    fn ft_nccl_broadcast(
        group: *mut c_void,
        tensors: *const *mut c_void,
        n: usize,
        root: c_int,
        error: *mut *mut c_char,
    ) -> c_int;
    fn ft_nccl_barrier(group: *mut c_void, error: *mut *mut c_char) -> c_int;
}

/// What the C++ side said went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CError(pub(crate) String);

fn take_error(error: *mut c_char) -> CError {
    if error.is_null() {
        return CError("c10d failed without a message".into());
    }
    // SAFETY: a non-null error is a NUL-terminated string the C++ side
    // allocated for us; we free it once, here.
    let text = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { ft_c10d_string_free(error) };
    CError(text)
}

fn c_string(text: &str) -> Result<CString, CError> {
    CString::new(text).map_err(|_| CError(format!("`{text}` holds a NUL byte")))
}

fn status(rc: c_int, error: *mut c_char) -> Result<(), CError> {
    if rc == 0 { Ok(()) } else { Err(take_error(error)) }
}

/// A c10d object owned by Rust.
#[derive(Debug)]
struct Handle {
    ptr: *mut c_void,
    free: unsafe extern "C" fn(*mut c_void),
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from the `_new` function matching `free`, and
        // this is the only place it is freed.
        unsafe { (self.free)(self.ptr) }
    }
}

// SAFETY: a TCPStore client serialises its operations with its own mutex
// (`activeOpLock_`), and a process group is only reached through `&mut`
// (one thread at a time); neither is tied to the thread that made it.
unsafe impl Send for Handle {}

/// A TCPStore client (and, on rank 0, its server).
#[derive(Debug)]
pub(crate) struct Store(Handle);

// SAFETY: see `Handle`: the store's operations lock internally.
unsafe impl Sync for Store {}

impl Store {
    pub(crate) fn new(
        host: &str,
        port: u16,
        is_server: bool,
        world_size: usize,
        timeout_ms: i64,
    ) -> Result<Self, CError> {
        let host = c_string(host)?;
        let mut error = std::ptr::null_mut();
        // SAFETY: `host` is a valid C string for the call; `error` is ours.
        let ptr = unsafe {
            ft_c10d_store_new(
                host.as_ptr(),
                port,
                c_int::from(is_server),
                world_size,
                timeout_ms,
                &raw mut error,
            )
        };
        if ptr.is_null() {
            return Err(take_error(error));
        }
        Ok(Self(Handle { ptr, free: ft_c10d_store_free }))
    }

    pub(crate) fn set(&self, key: &str, value: &[u8]) -> Result<(), CError> {
        let key = c_string(key)?;
        let mut error = std::ptr::null_mut();
        // SAFETY: the handle is live; `key` and `value` outlive the call.
        let rc = unsafe {
            ft_c10d_store_set(self.0.ptr, key.as_ptr(), value.as_ptr(), value.len(), &raw mut error)
        };
        status(rc, error)
    }

    /// Waits (up to the store's timeout) for `key` and returns its value.
    pub(crate) fn get(&self, key: &str) -> Result<Vec<u8>, CError> {
        let key = c_string(key)?;
        let (mut data, mut len, mut error) = (std::ptr::null_mut(), 0usize, std::ptr::null_mut());
        // SAFETY: the handle is live; the out-pointers are ours.
        let rc = unsafe {
            ft_c10d_store_get(self.0.ptr, key.as_ptr(), &raw mut data, &raw mut len, &raw mut error)
        };
        status(rc, error)?;
        // SAFETY: on success `data` is a malloc'd buffer of `len` bytes that
        // we copy and then free (the string free is `free`).
        let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { ft_c10d_string_free(data.cast()) };
        Ok(value)
    }

    /// Adds `value` to the counter `key` (0 when new); returns the sum.
    pub(crate) fn add(&self, key: &str, value: i64) -> Result<i64, CError> {
        let key = c_string(key)?;
        let (mut out, mut error) = (0i64, std::ptr::null_mut());
        // SAFETY: the handle is live; the out-pointers are ours.
        let rc = unsafe {
            ft_c10d_store_add(self.0.ptr, key.as_ptr(), value, &raw mut out, &raw mut error)
        };
        status(rc, error)?;
        Ok(out)
    }

    pub(crate) fn check(&self, key: &str) -> Result<bool, CError> {
        let key = c_string(key)?;
        let (mut present, mut error) = (0, std::ptr::null_mut());
        // SAFETY: the handle is live; the out-pointers are ours.
        let rc = unsafe {
            ft_c10d_store_check(self.0.ptr, key.as_ptr(), &raw mut present, &raw mut error)
        };
        status(rc, error)?;
        Ok(present != 0)
    }
}

type TensorsFn =
    unsafe extern "C" fn(*mut c_void, *const *mut c_void, usize, *mut *mut c_char) -> c_int;
type RootedFn =
    unsafe extern "C" fn(*mut c_void, *const *mut c_void, usize, c_int, *mut *mut c_char) -> c_int;
type BarrierFn = unsafe extern "C" fn(*mut c_void, *mut *mut c_char) -> c_int;

/// The C functions of one backend.
#[derive(Debug)]
struct Collectives {
    all_reduce_sum: TensorsFn,
    broadcast: RootedFn,
    barrier: BarrierFn,
}

const GLOO: Collectives = Collectives {
    all_reduce_sum: ft_c10d_allreduce_sum,
    broadcast: ft_c10d_broadcast,
    barrier: ft_c10d_barrier,
};

const NCCL: Collectives = Collectives {
    all_reduce_sum: ft_nccl_allreduce_sum,
    broadcast: ft_nccl_broadcast,
    barrier: ft_nccl_barrier,
};

/// A process group: ProcessGroupGloo ([`Group::gloo`]) or an NCCL
/// communicator on one CUDA device ([`Group::nccl`]).
#[derive(Debug)]
pub(crate) struct Group {
    handle: Handle,
    calls: &'static Collectives,
}

fn int(what: &str, value: usize) -> Result<c_int, CError> {
    c_int::try_from(value).map_err(|_| CError(format!("{what} {value}")))
}

impl Group {
    pub(crate) fn gloo(
        store: &Store,
        rank: usize,
        size: usize,
        timeout_ms: i64,
    ) -> Result<Self, CError> {
        let (rank, size) = (int("rank", rank)?, int("world size", size)?);
        let mut error = std::ptr::null_mut();
        // SAFETY: the store handle is live for the call (the group keeps its
        // own reference to the store).
        let ptr = unsafe { ft_c10d_gloo_new(store.0.ptr, rank, size, timeout_ms, &raw mut error) };
        if ptr.is_null() {
            return Err(take_error(error));
        }
        Ok(Self { handle: Handle { ptr, free: ft_c10d_group_free }, calls: &GLOO })
    }

    /// Joins the communicator `id` names, on CUDA device `device_index`.
    pub(crate) fn nccl(
        id: &[u8],
        rank: usize,
        size: usize,
        device_index: usize,
        timeout_ms: i64,
    ) -> Result<Self, CError> {
        let (rank, size) = (int("rank", rank)?, int("world size", size)?);
        let device = int("device index", device_index)?;
        let mut error = std::ptr::null_mut();
        // SAFETY: `id` outlives the call and its length is passed with it.
        let ptr = unsafe {
            ft_nccl_new(id.as_ptr(), id.len(), rank, size, device, timeout_ms, &raw mut error)
        };
        if ptr.is_null() {
            return Err(take_error(error));
        }
        Ok(Self { handle: Handle { ptr, free: ft_nccl_free }, calls: &NCCL })
    }

    fn pointers(tensors: &mut [tch::Tensor]) -> Vec<*mut c_void> {
        tensors.iter_mut().map(|t| t.as_mut_ptr().cast::<c_void>()).collect()
    }

    pub(crate) fn all_reduce_sum(&mut self, tensors: &mut [tch::Tensor]) -> Result<(), CError> {
        let pointers = Self::pointers(tensors);
        let mut error = std::ptr::null_mut();
        // SAFETY: the group is live and used by this thread alone (`&mut`);
        // each pointer is an `at::Tensor*` held by `tensors` for the call;
        // the function is this group's backend's.
        let rc = unsafe {
            (self.calls.all_reduce_sum)(
                self.handle.ptr,
                pointers.as_ptr(),
                pointers.len(),
                &raw mut error,
            )
        };
        status(rc, error)
    }

    pub(crate) fn broadcast(
        &mut self,
        tensors: &mut [tch::Tensor],
        root: usize,
    ) -> Result<(), CError> {
        let root = int("root", root)?;
        let pointers = Self::pointers(tensors);
        let mut error = std::ptr::null_mut();
        // SAFETY: as for `all_reduce_sum`.
        let rc = unsafe {
            (self.calls.broadcast)(
                self.handle.ptr,
                pointers.as_ptr(),
                pointers.len(),
                root,
                &raw mut error,
            )
        };
        status(rc, error)
    }

    pub(crate) fn barrier(&mut self) -> Result<(), CError> {
        let mut error = std::ptr::null_mut();
        // SAFETY: the group is live, used by this thread alone, and the
        // function is its backend's.
        let rc = unsafe { (self.calls.barrier)(self.handle.ptr, &raw mut error) };
        status(rc, error)
    }
}

/// The bytes of an `ncclUniqueId`.
pub(crate) const NCCL_ID_BYTES: usize = 128;

/// The NCCL library's version as `(major, minor, patch)`, opening it.
pub(crate) fn nccl_version() -> Result<(u32, u32, u32), CError> {
    let (mut code, mut error) = (0 as c_int, std::ptr::null_mut());
    // SAFETY: the out-pointers are ours for the call.
    let rc = unsafe { ft_nccl_version(&raw mut code, &raw mut error) };
    status(rc, error)?;
    let code = u32::try_from(code).map_err(|_| CError(format!("NCCL version {code}")))?;
    Ok((code / 10000, code / 100 % 100, code % 100))
}

/// A new NCCL unique id (rank 0 makes it and shares it).
pub(crate) fn nccl_unique_id() -> Result<Vec<u8>, CError> {
    let (mut id, mut error) = (vec![0u8; NCCL_ID_BYTES], std::ptr::null_mut());
    // SAFETY: `id` holds the NCCL_ID_BYTES the function writes.
    let rc = unsafe { ft_nccl_unique_id(id.as_mut_ptr(), id.len(), &raw mut error) };
    status(rc, error)?;
    Ok(id)
}
