//! Build-script helper for packages whose binaries link `finetune-local`.
//!
//! Cargo gives binaries, tests and examples no rpath to libtorch, and the
//! linker's `--as-needed` drops `libtorch_cuda.so` (no symbol of it is used
//! directly), after which `tch::Cuda::is_available()` is false even on a GPU
//! machine. Link arguments from `finetune-local`'s own build script cannot
//! reach a dependent's binaries, so each package that builds such binaries
//! calls this from its `build.rs`:
//!
//! ```text
//! // build.rs
//! fn main() {
//!     finetune_build::link_libtorch();
//! }
//! ```
//!
//! with `finetune-build` under `[build-dependencies]` and `finetune-local`
//! under `[dependencies]`. The libtorch folder comes from `finetune-local`
//! (which hands it on as `DEP_FINETUNE_LOCAL_LIBTORCH_LIB`), so it is the
//! very libtorch the binary was linked against; `$LIBTORCH/lib` is the
//! fallback for a package that reaches `finetune-local` only through another
//! crate.

use std::path::{Path, PathBuf};

/// Where the libtorch folder is announced to build scripts, first match wins:
/// `finetune-local`'s metadata (a direct dependent), torch-sys' own (only
/// `finetune-local` itself sees it), then the user's `LIBTORCH`.
const SOURCES: [&str; 2] = ["DEP_FINETUNE_LOCAL_LIBTORCH_LIB", "DEP_TCH_LIBTORCH_LIB"];

/// Adds an rpath to libtorch and keeps `libtorch_cuda` linked, for every
/// binary, test and example of the calling package.
///
/// Prints a cargo warning, and nothing else, when no libtorch folder is
/// known: the binaries then need `LD_LIBRARY_PATH` to start.
pub fn link_libtorch() {
    match libtorch_lib() {
        Some(lib) => {
            let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
            let has_cuda = lib.join("libtorch_cuda.so").exists();
            for arg in link_args(&lib, &os, has_cuda) {
                println!("cargo::rustc-link-arg={arg}");
            }
        }
        None => println!(
            "cargo::warning=libtorch folder unknown (no DEP_FINETUNE_LOCAL_LIBTORCH_LIB, no \
             LIBTORCH): binaries get no rpath to libtorch"
        ),
    }
}

/// The libtorch library folder this build links against, if known.
///
/// Registers every variable it reads with `cargo::rerun-if-env-changed`.
pub fn libtorch_lib() -> Option<PathBuf> {
    let announced = SOURCES.into_iter().find_map(|name| {
        println!("cargo::rerun-if-env-changed={name}");
        std::env::var_os(name).map(PathBuf::from)
    });
    announced.or_else(|| {
        println!("cargo::rerun-if-env-changed=LIBTORCH");
        std::env::var_os("LIBTORCH").map(|root| PathBuf::from(root).join("lib"))
    })
}

/// The linker arguments for a libtorch folder on a target OS: an rpath on
/// Linux and macOS, and on Linux `libtorch_cuda` linked even though nothing
/// calls it directly (only when that library exists: CPU-only builds of
/// libtorch have none).
pub fn link_args(lib: &Path, target_os: &str, has_cuda: bool) -> Vec<String> {
    let mut args = Vec::new();
    if target_os == "linux" || target_os == "macos" {
        args.push(format!("-Wl,-rpath,{}", lib.display()));
    }
    if target_os == "linux" && has_cuda {
        args.push("-Wl,--no-as-needed,-ltorch_cuda,--as-needed".to_owned());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_with_cuda_gets_rpath_and_keeps_torch_cuda() {
        let args = link_args(Path::new("/opt/torch/lib"), "linux", true);
        assert_eq!(
            args,
            ["-Wl,-rpath,/opt/torch/lib", "-Wl,--no-as-needed,-ltorch_cuda,--as-needed"]
        );
    }

    #[test]
    fn cpu_only_and_macos_get_only_the_rpath() {
        assert_eq!(link_args(Path::new("/t"), "linux", false), ["-Wl,-rpath,/t"]);
        assert_eq!(link_args(Path::new("/t"), "macos", true), ["-Wl,-rpath,/t"]);
    }

    #[test]
    fn windows_gets_nothing() {
        assert!(link_args(Path::new("C:/t"), "windows", true).is_empty());
    }
}
