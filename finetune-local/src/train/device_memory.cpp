// The C side of finetune_local::train::DeviceMemory: the figures of
// libtorch's caching allocator for a CUDA device (what
// torch.cuda.memory_stats reports), which tch does not bind. Only libc10
// is linked: the CUDA allocator registers itself with c10 when
// libtorch_cuda is loaded, so a CPU-only libtorch answers with an error.
//
// Invariants the Rust side keeps (finetune-local/src/train/device_memory.rs):
// `out` points to four int64; on failure the function returns -1 and sets
// `*error` to a string allocated here, which the caller frees with
// ft_varlen_string_free (models::varlen::shim_error). No C++ exception
// crosses this boundary.
#include <cstdint>

#include <c10/core/CachingDeviceAllocator.h>

#include "../distributed/shim.h"

extern "C" {

// Bytes allocated now and at their peak, reserved now and at their peak,
// of CUDA device `index`; with `reset_peak` set, the peaks are then reset
// to the current figures.
int ft_cuda_memory(int64_t index, int reset_peak, int64_t* out, char** error) {
  return finetune::guarded(error, [&] {
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    TORCH_CHECK(allocator->initialized(), "the CUDA allocator has not allocated yet");
    const auto device = static_cast<c10::DeviceIndex>(index);
    const auto stats = allocator->getDeviceStats(device);
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[all].current;
    out[1] = stats.allocated_bytes[all].peak;
    out[2] = stats.reserved_bytes[all].current;
    out[3] = stats.reserved_bytes[all].peak;
    if (reset_peak != 0) {
      allocator->resetPeakStats(device);
    }
  });
}

} // extern "C"
