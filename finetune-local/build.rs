//! Makes binaries that link libtorch runnable without `LD_LIBRARY_PATH`.
//!
//! Cargo gives binaries and test binaries no rpath to libtorch, and the
//! linker's `--as-needed` drops `libtorch_cuda.so` (nothing references it
//! directly), after which `tch::Cuda::is_available()` is false even on a GPU.
//! So every package whose binaries link libtorch runs this script: it adds an
//! rpath to the libtorch folder and keeps `libtorch_cuda` linked.
//!
//! `finetune-local` reads the folder from torch-sys (`links = "tch"`) and
//! passes it on as `DEP_FINETUNE_LOCAL_LIBTORCH_LIB`; a package depending on
//! `finetune-local` (like `examples`) uses this same script to read that.

use std::path::Path;

fn main() {
    let lib =
        ["DEP_TCH_LIBTORCH_LIB", "DEP_FINETUNE_LOCAL_LIBTORCH_LIB"].into_iter().find_map(|name| {
            println!("cargo::rerun-if-env-changed={name}");
            std::env::var(name).ok()
        });
    let Some(lib) = lib else {
        println!("cargo::warning=libtorch folder unknown: binaries get no rpath to libtorch");
        return;
    };
    if std::env::var("CARGO_MANIFEST_LINKS").is_ok() {
        println!("cargo::metadata=libtorch_lib={lib}");
    }
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" || os == "macos" {
        println!("cargo::rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if os == "linux" && Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo::rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
