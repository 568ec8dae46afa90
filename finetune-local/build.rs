//! Makes this crate's tests, benches and examples runnable without
//! `LD_LIBRARY_PATH` (see `finetune-build`), and hands the libtorch folder
//! that torch-sys found (`DEP_TCH_LIBTORCH_LIB`) on to dependents' build
//! scripts as `DEP_FINETUNE_LOCAL_LIBTORCH_LIB`, where
//! `finetune_build::link_libtorch` reads it.
//!
//! It compiles `src/models/varlen.cpp` (variable-length flash attention,
//! the C side of `models::varlen`), `src/train/device_memory.cpp` (the
//! CUDA allocator's figures, the C side of `train::DeviceMemory`),
//! `src/train/host_cache.cpp` (the CPU tensors' memory cache, the C side of
//! `train::HostCache`) and `src/lora_dropout.cpp` (LoRA's dropout on the
//! CPU, see `lora`) against that libtorch's headers and sets
//! `cfg(finetune_shims)` when it did.
//! With the `distributed` feature it also compiles `src/distributed/c10d.cpp`
//! and `nccl.cpp` (the C side of `distributed::ffi`).

fn main() {
    let lib = finetune_build::libtorch_lib();
    if let Some(lib) = &lib {
        println!("cargo::metadata=libtorch_lib={}", lib.display());
    }
    finetune_build::link_libtorch();
    println!("cargo::rustc-check-cfg=cfg(finetune_shims)");
    if let Some(lib) = &lib {
        compile_shims(lib);
    }
    #[cfg(feature = "distributed")]
    compile_c10d(lib.as_deref());
}

fn compile_shims(lib: &std::path::Path) {
    println!("cargo::rerun-if-changed=src/models/varlen.cpp");
    println!("cargo::rerun-if-changed=src/train/device_memory.cpp");
    println!("cargo::rerun-if-changed=src/lora_dropout.cpp");
    println!("cargo::rerun-if-changed=src/train/host_cache.cpp");
    println!("cargo::rerun-if-changed=src/distributed/shim.h");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/models/varlen.cpp")
        .file("src/train/device_memory.cpp")
        .file("src/lora_dropout.cpp")
        .file("src/train/host_cache.cpp")
        .include(lib.join("../include"))
        .include(lib.join("../include/torch/csrc/api/include"))
        // The dropout loops are the hot part: optimised in every profile.
        .opt_level(3)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("finetune_shims");
    println!("cargo::rustc-cfg=finetune_shims");
}

#[cfg(feature = "distributed")]
fn compile_c10d(lib: Option<&std::path::Path>) {
    let Some(lib) = lib else {
        panic!("the distributed feature needs libtorch's headers: no libtorch folder is known");
    };
    let include = lib.join("../include");
    println!("cargo::rerun-if-changed=src/distributed/c10d.cpp");
    println!("cargo::rerun-if-changed=src/distributed/nccl.cpp");
    println!("cargo::rerun-if-changed=src/distributed/shim.h");
    println!("cargo::rerun-if-changed=src/distributed/gloo-decl");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/distributed/c10d.cpp")
        .file("src/distributed/nccl.cpp")
        // Declarations standing in for Gloo's headers (see c10d.cpp).
        .include("src/distributed/gloo-decl")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("finetune_c10d");
}
