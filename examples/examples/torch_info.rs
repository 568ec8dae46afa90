//! Prints what libtorch offers on this machine (CUDA devices, cuDNN, CPU
//! threads) and runs one matrix product on the preferred device: the quick
//! check that a GPU machine's libtorch is found.

use finetune_local::RuntimeInfo;
use finetune_local::tch::{Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let info = RuntimeInfo::detect();
    println!("{info}");
    let device = info.preferred_device();
    let a = Tensor::f_ones([256, 256], (Kind::Float, device))?;
    let sum = f64::try_from(a.f_matmul(&a)?.f_sum(Kind::Float)?)?;
    println!("device {device:?}: ones(256,256)^2 sums to {sum}");
    Ok(())
}
