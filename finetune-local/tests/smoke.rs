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
