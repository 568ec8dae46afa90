// The C side of finetune_local::models::varlen: libtorch's flash attention
// over packed sequences (cumulative sequence lengths), which tch does not
// bind, behind a C ABI.
//
// Invariants the Rust side keeps (finetune-local/src/models/varlen.rs):
// * each tensor pointer is tch's `C_tensor*`, an `at::Tensor*`, alive for
//   the call;
// * on failure the function returns null and sets `*error` to a string
//   allocated here, which the caller frees with ft_varlen_string_free. No
//   C++ exception crosses this boundary.
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/ops/_flash_attention_forward.h>

#include "../distributed/shim.h"

extern "C" {

void ft_varlen_string_free(char* s) {
  std::free(s);
}

// Causal attention of q `[total_q, heads, dim]` over k and v `[total_k,
// kv_heads, dim]`, each sequence i being rows cu_q[i]..cu_q[i+1] (int32 on
// the device). Returns a new `at::Tensor*` (`[total_q, heads, dim]`, with
// the graph autograd records for q, k and v) or null with `*error` set.
void* ft_flash_varlen(
    const void* q,
    const void* k,
    const void* v,
    const void* cu_q,
    const void* cu_k,
    int64_t max_q,
    int64_t max_k,
    double scale,
    int has_scale,
    char** error) {
  at::Tensor* out = nullptr;
  finetune::guarded(error, [&] {
    const auto& query = *static_cast<const at::Tensor*>(q);
    const auto& key = *static_cast<const at::Tensor*>(k);
    const auto& value = *static_cast<const at::Tensor*>(v);
    const auto& cum_q = *static_cast<const at::Tensor*>(cu_q);
    const auto& cum_k = *static_cast<const at::Tensor*>(cu_k);
    auto result = at::_flash_attention_forward(
        query,
        key,
        value,
        cum_q,
        cum_k,
        max_q,
        max_k,
        /*dropout_p=*/0.0,
        /*is_causal=*/true,
        /*return_debug_mask=*/false,
        has_scale ? std::optional<double>(scale) : std::nullopt);
    out = new at::Tensor(std::get<0>(std::move(result)));
  });
  return out;
}

} // extern "C"
