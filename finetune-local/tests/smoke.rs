//! libtorch is linked, loads without LD_LIBRARY_PATH, and computes.

use finetune_local::RuntimeInfo;
use finetune_local::tch::{Device, Kind, Tensor};

#[test]
fn tensor_ops_run_and_cuda_is_reported() {
    let info = RuntimeInfo::detect();
    println!("{info}");
    let device = info.preferred_device();
    let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]).to_device(device);
    let b = a.f_matmul(&a).unwrap().f_sum(Kind::Float).unwrap();
    // [[1,2],[3,4]]^2 = [[7,10],[15,22]] → 54
    assert_eq!(f64::try_from(&b).unwrap(), 54.0);
    assert_eq!(info.cuda_available, info.cuda_devices > 0);
    if info.cuda_available {
        assert_eq!(b.device(), Device::Cuda(0));
    }
}

/// The CUDA allocator's figures move with a tensor's life, as PyTorch's
/// `memory_allocated` and `max_memory_allocated` do (the GPU benchmark's
/// peak memory is read this way). On a machine without CUDA they are an
/// error, never made-up figures.
#[test]
fn cuda_memory_figures_follow_a_tensor() {
    use finetune_local::train::DeviceMemory;
    if !finetune_local::tch::Cuda::is_available() {
        assert!(DeviceMemory::of_cuda(0).is_err());
        return;
    }
    let warm = Tensor::f_zeros([1], (Kind::Float, Device::Cuda(0))).unwrap();
    let before = DeviceMemory::reset_peaks(0).unwrap();
    let mib64 = 64 << 20;
    let big = Tensor::f_ones([16 << 20], (Kind::Float, Device::Cuda(0))).unwrap();
    let during = DeviceMemory::of_cuda(0).unwrap();
    assert!(during.allocated >= before.allocated + mib64, "{before:?} → {during:?}");
    assert!(during.peak_allocated >= during.allocated && during.reserved >= during.allocated);
    drop(big);
    let after = DeviceMemory::reset_peaks(0).unwrap();
    assert!(after.allocated < during.allocated, "{during:?} → {after:?}");
    assert!(after.peak_allocated >= before.allocated + mib64, "the peak forgot the tensor");
    let reset = DeviceMemory::of_cuda(0).unwrap();
    assert_eq!(reset.peak_allocated, reset.allocated, "the peak did not restart");
    drop(warm);
}
