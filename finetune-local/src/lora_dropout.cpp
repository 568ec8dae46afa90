// The C side of finetune_local::lora's dropout on the CPU: `x` with the
// elements a boolean mask marks zeroed, as one autograd node whose
// backward zeroes the same elements of the gradient. `where(mask, 0, x)`
// computes the same, but its CPU kernel is a scalar loop behind
// TensorIterator; here both passes are one vectorised loop (compiled for
// AVX-512, AVX2 or the baseline, chosen when the library loads) split
// over libtorch's threads. The node keeps the mask (a byte an element),
// as where's does.
//
// Invariants the Rust side keeps (finetune-local/src/lora.rs):
// * `x` and `drop` are `at::Tensor*` held by live tch tensors for the call,
//   `x` f32 or bf16 on the CPU, `drop` bool of x's shape;
// * on failure the function returns null and sets `*error` to a string
//   allocated here, which the caller frees with ft_varlen_string_free
//   (models::varlen::shim_error). No C++ exception crosses this boundary.
#include <cstdint>

#include <ATen/ATen.h>
#include <ATen/TensorIterator.h>
#include <torch/csrc/autograd/custom_function.h>

#include "distributed/shim.h"

namespace {

// Elements a thread takes at least: below this one thread does it all.
constexpr int64_t kGrain = 32768;

// GCC compiles the loops for x86-64-v4 (AVX-512), v3 (AVX2) and the
// baseline, and picks one for the CPU when the library loads.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FT_CLONES
#endif

FT_CLONES void zero_dropped_f32(
    const float* in,
    const uint8_t* drop,
    float* out,
    int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = drop[i] != 0 ? 0.0F : in[i];
  }
}

FT_CLONES void zero_dropped_16(
    const uint16_t* in,
    const uint8_t* drop,
    uint16_t* out,
    int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = drop[i] != 0 ? uint16_t{0} : in[i];
  }
}

// Runs `contiguous(in, drop, out, n)` over the flat elements of `in` and
// `drop` into `out` (all three contiguous), split across libtorch's
// threads by TensorIterator (its parallel loop is compiled into libtorch;
// ATen's inline one would need this file built with OpenMP).
template <typename T, typename F>
void split(const at::Tensor& in, const at::Tensor& drop, at::Tensor& out, F contiguous) {
  const auto flat_out = out.view(-1);
  const auto flat_in = in.view(-1);
  const auto flat_drop = drop.view(-1);
  auto iter = at::TensorIteratorConfig()
                  .add_output(flat_out)
                  .add_const_input(flat_in)
                  .add_const_input(flat_drop)
                  .check_all_same_dtype(false)
                  .resize_outputs(false)
                  .build();
  iter.for_each(
      [&](char** data, const int64_t* strides, int64_t size0, int64_t size1) {
        // One flat dimension of contiguous tensors: unit strides, one row.
        TORCH_CHECK(
            size1 == 1 && strides[0] == sizeof(T) && strides[1] == sizeof(T) && strides[2] == 1,
            "dropout shim: unexpected strides");
        contiguous(
            reinterpret_cast<const T*>(data[1]),
            reinterpret_cast<const uint8_t*>(data[2]),
            reinterpret_cast<T*>(data[0]),
            size0);
      },
      kGrain);
}

// `x` with the elements `drop` marks set to zero, a new contiguous tensor.
at::Tensor zero_dropped(const at::Tensor& x, const at::Tensor& drop) {
  TORCH_CHECK(x.device().is_cpu(), "dropout shim: x is not on the CPU");
  TORCH_CHECK(drop.scalar_type() == at::kBool, "dropout shim: the mask is not boolean");
  TORCH_CHECK(x.sizes() == drop.sizes(), "dropout shim: mask and input shapes differ");
  const auto in = x.contiguous();
  const auto mask = drop.contiguous();
  auto out = at::empty_like(in, at::MemoryFormat::Contiguous);
  switch (in.scalar_type()) {
    case at::kFloat:
      split<float>(in, mask, out, zero_dropped_f32);
      break;
    case at::kBFloat16:
      // As its bits: bf16's +0.0 is all zeros.
      split<uint16_t>(in, mask, out, zero_dropped_16);
      break;
    default:
      TORCH_CHECK(false, "dropout shim: ", in.scalar_type(), " is neither f32 nor bf16");
  }
  return out;
}

struct Dropped : public torch::autograd::Function<Dropped> {
  static at::Tensor forward(
      torch::autograd::AutogradContext* ctx,
      const at::Tensor& x,
      const at::Tensor& drop) {
    ctx->saved_data["drop"] = drop;
    return zero_dropped(x, drop);
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    const auto drop = ctx->saved_data["drop"].toTensor();
    const auto& g = grads[0];
    return {g.defined() ? zero_dropped(g, drop) : g, at::Tensor()};
  }
};

} // namespace

extern "C" {

// `x` with the elements `drop` marks zeroed, recorded for autograd (its
// gradient is zeroed at the same elements): a new `at::Tensor*`, or null
// with `*error` set.
void* ft_lora_dropped(const void* x, const void* drop, char** error) {
  at::Tensor* out = nullptr;
  finetune::guarded(error, [&] {
    const auto& input = *static_cast<const at::Tensor*>(x);
    const auto& mask = *static_cast<const at::Tensor*>(drop);
    out = new at::Tensor(Dropped::apply(input, mask));
  });
  return out;
}

} // extern "C"
