//! Makes this crate's tests, benches and examples runnable without
//! `LD_LIBRARY_PATH` (see `finetune-build`), and hands the libtorch folder
//! that torch-sys found (`DEP_TCH_LIBTORCH_LIB`) on to dependents' build
//! scripts as `DEP_FINETUNE_LOCAL_LIBTORCH_LIB`, where
//! `finetune_build::link_libtorch` reads it.

fn main() {
    if let Some(lib) = finetune_build::libtorch_lib() {
        println!("cargo::metadata=libtorch_lib={}", lib.display());
    }
    finetune_build::link_libtorch();
}
