// NCCL for finetune_local::distributed: all-reduce, broadcast and barrier on
// CUDA tensors, the collectives PyTorch's ProcessGroupNCCL runs, called on
// the NCCL library libtorch_cuda.so itself links (libnccl.so.2 from the
// wheel's nvidia-nccl package).
//
// Why not ProcessGroupNCCL: its header includes CUDA's runtime headers,
// whose crt/ part the wheel does not ship, so it cannot be compiled here.
// nccl.h includes them too. NCCL's C API is small and stable across 2.x, so
// the few functions and types used are declared below, and the library is
// opened at run time: a libtorch without CUDA gives a clear error instead of
// a binary that cannot start. CUDA itself is reached through c10's
// device-generic interface (DeviceGuardImplInterface), which libtorch_cuda
// registers: no CUDA header is needed.
//
// Invariants the Rust side keeps (finetune-local/src/distributed/ffi.rs),
// as for c10d.cpp:
// * a group handle came from ft_nccl_new and is freed once;
// * a tensor pointer is an `at::Tensor*` alive for the call;
// * a group is used from one thread at a time, in the same order on every
//   rank;
// * on failure a function returns null or -1 and sets `*error` to a
//   malloc'd string (freed with ft_c10d_string_free); no C++ exception
//   crosses this boundary.
#include <dlfcn.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include <ATen/ATen.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "shim.h"

namespace {

using finetune::guarded;

// NCCL's C ABI (nccl.h of NCCL 2.x).
using NcclResult = int;  // ncclResult_t: 0 is ncclSuccess, 7 ncclInProgress
using NcclComm = void*;  // ncclComm_t
struct NcclUniqueId {
  char internal[128];  // NCCL_UNIQUE_ID_BYTES
};
enum NcclDataType : int {
  kInt8 = 0,
  kUint8 = 1,
  kInt32 = 2,
  kUint32 = 3,
  kInt64 = 4,
  kUint64 = 5,
  kFloat16 = 6,
  kFloat32 = 7,
  kFloat64 = 8,
  kBfloat16 = 9,
};
constexpr int kNcclSum = 0;  // ncclSum
constexpr NcclResult kNcclSuccess = 0;
constexpr NcclResult kNcclInProgress = 7;

struct NcclApi {
  NcclResult (*get_version)(int*);
  NcclResult (*get_unique_id)(NcclUniqueId*);
  NcclResult (*comm_init_rank)(NcclComm*, int, NcclUniqueId, int);
  NcclResult (*all_reduce)(const void*, void*, size_t, int, int, NcclComm, void*);
  NcclResult (*broadcast)(const void*, void*, size_t, int, int, NcclComm, void*);
  NcclResult (*comm_destroy)(NcclComm);
  NcclResult (*comm_abort)(NcclComm);
  NcclResult (*comm_get_async_error)(NcclComm, NcclResult*);
  const char* (*get_error_string)(NcclResult);
};

template <typename F>
void bind(void* library, const char* name, F*& out) {
  void* symbol = dlsym(library, name);
  if (symbol == nullptr) {
    throw std::runtime_error(std::string("libnccl.so.2 has no ") + name);
  }
  out = reinterpret_cast<F*>(symbol);
}

// Opens NCCL once (the handle is never closed: NCCL keeps threads).
const NcclApi& nccl() {
  static const NcclApi api = [] {
    void* library = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) {
      const char* why = dlerror();
      throw std::runtime_error(
          std::string("NCCL is not available (a libtorch built with CUDA brings libnccl.so.2): ") +
          (why != nullptr ? why : "dlopen failed"));
    }
    NcclApi out{};
    bind(library, "ncclGetVersion", out.get_version);
    bind(library, "ncclGetUniqueId", out.get_unique_id);
    bind(library, "ncclCommInitRank", out.comm_init_rank);
    bind(library, "ncclAllReduce", out.all_reduce);
    bind(library, "ncclBroadcast", out.broadcast);
    bind(library, "ncclCommDestroy", out.comm_destroy);
    bind(library, "ncclCommAbort", out.comm_abort);
    bind(library, "ncclCommGetAsyncError", out.comm_get_async_error);
    bind(library, "ncclGetErrorString", out.get_error_string);
    return out;
  }();
  return api;
}

void check(NcclResult rc, const char* what) {
  if (rc != kNcclSuccess && rc != kNcclInProgress) {
    throw std::runtime_error(
        std::string(what) + ": " + nccl().get_error_string(rc) + " (ncclResult_t " +
        std::to_string(rc) + ")");
  }
}

int data_type(at::ScalarType type) {
  switch (type) {
    case at::kChar: return kInt8;
    case at::kByte: return kUint8;
    case at::kInt: return kInt32;
    case at::kLong: return kInt64;
    case at::kHalf: return kFloat16;
    case at::kFloat: return kFloat32;
    case at::kDouble: return kFloat64;
    case at::kBFloat16: return kBfloat16;
    default:
      throw std::runtime_error(
          std::string("NCCL has no data type for ") + c10::toString(type));
  }
}

struct Group {
  NcclComm comm;
  c10::Device device;
  std::chrono::milliseconds timeout;
  bool aborted;
};

const c10::impl::DeviceGuardImplInterface& cuda() {
  // Throws (c10::Error) when libtorch has no CUDA.
  return *c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
}

// Waits for the work enqueued on `stream` (a collective NCCL runs there),
// polling NCCL's asynchronous error. Past the timeout the communicator is
// aborted: a peer that died leaves NCCL's kernel waiting for ever.
void wait(Group& g, const c10::Stream& stream, const char* what) {
  auto deadline = std::chrono::steady_clock::now() + g.timeout;
  while (!cuda().queryStream(stream)) {
    NcclResult async = kNcclSuccess;
    check(nccl().comm_get_async_error(g.comm, &async), "ncclCommGetAsyncError");
    if (async != kNcclSuccess && async != kNcclInProgress) {
      nccl().comm_abort(g.comm);
      g.aborted = true;
      check(async, what);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      nccl().comm_abort(g.comm);
      g.aborted = true;
      throw std::runtime_error(
          std::string(what) + " did not finish within " + std::to_string(g.timeout.count()) +
          " ms");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// The tensors a collective may run on: contiguous, on the group's device.
void expect_on(const Group& g, const at::Tensor& t) {
  if (g.aborted) {
    throw std::runtime_error("the NCCL communicator was aborted after an earlier failure");
  }
  if (t.device() != g.device) {
    throw std::runtime_error(
        "NCCL runs on " + g.device.str() + ", the tensor is on " + t.device().str());
  }
  if (!t.is_contiguous()) {
    throw std::runtime_error("NCCL needs a contiguous tensor");
  }
}

// Runs `enqueue(tensor, stream)` on each tensor in turn and waits for it.
template <typename F>
void each(Group& g, void* const* tensors, size_t n, const char* what, F enqueue) {
  for (size_t i = 0; i < n; ++i) {
    auto& t = *static_cast<at::Tensor*>(tensors[i]);
    expect_on(g, t);
    // The stream libtorch enqueues this thread's work on, so NCCL runs
    // after the kernels that produced the tensor.
    auto stream = cuda().getStream(g.device);
    check(enqueue(t, stream.native_handle()), what);
    wait(g, stream, what);
  }
}

} // namespace

extern "C" {

// NCCL's version as major * 10000 + minor * 100 + patch (NCCL's own code).
int ft_nccl_version(int* version, char** error) {
  return guarded(error, [&] { check(nccl().get_version(version), "ncclGetVersion"); });
}

// The id rank 0 makes and shares (through the TCPStore) with the others.
int ft_nccl_unique_id(uint8_t* out, size_t len, char** error) {
  return guarded(error, [&] {
    if (len != sizeof(NcclUniqueId)) {
      throw std::runtime_error("an NCCL unique id is 128 bytes");
    }
    NcclUniqueId id{};
    check(nccl().get_unique_id(&id), "ncclGetUniqueId");
    std::memcpy(out, id.internal, sizeof id.internal);
  });
}

void* ft_nccl_new(
    const uint8_t* id,
    size_t len,
    int rank,
    int size,
    int device_index,
    int64_t timeout_ms,
    char** error) {
  Group* out = nullptr;
  guarded(error, [&] {
    if (len != sizeof(NcclUniqueId)) {
      throw std::runtime_error("an NCCL unique id is 128 bytes");
    }
    c10::Device device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device_index));
    // NCCL binds the communicator to the current device.
    cuda().setDevice(device);
    NcclUniqueId unique{};
    std::memcpy(unique.internal, id, sizeof unique.internal);
    NcclComm comm = nullptr;
    check(nccl().comm_init_rank(&comm, size, unique, rank), "ncclCommInitRank");
    out = new Group{comm, device, std::chrono::milliseconds(timeout_ms), false};
  });
  return out;
}

void ft_nccl_free(void* group) {
  auto g = static_cast<Group*>(group);
  if (!g->aborted) {
    nccl().comm_destroy(g->comm);
  }
  delete g;
}

int ft_nccl_allreduce_sum(void* group, void* const* tensors, size_t n, char** error) {
  return guarded(error, [&] {
    auto& g = *static_cast<Group*>(group);
    each(g, tensors, n, "ncclAllReduce", [&](at::Tensor& t, void* stream) {
      return nccl().all_reduce(
          t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()),
          data_type(t.scalar_type()), kNcclSum, g.comm, stream);
    });
  });
}

int ft_nccl_broadcast(void* group, void* const* tensors, size_t n, int root, char** error) {
  return guarded(error, [&] {
    auto& g = *static_cast<Group*>(group);
    each(g, tensors, n, "ncclBroadcast", [&](at::Tensor& t, void* stream) {
      return nccl().broadcast(
          t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()),
          data_type(t.scalar_type()), root, g.comm, stream);
    });
  });
}

// NCCL has no barrier: an all-reduce of one number on every rank is one.
int ft_nccl_barrier(void* group, char** error) {
  at::Tensor one;
  int rc = guarded(error, [&] {
    auto& g = *static_cast<Group*>(group);
    one = at::ones({1}, at::TensorOptions().dtype(at::kFloat).device(g.device));
  });
  if (rc != 0) {
    return rc;
  }
  void* tensors[] = {&one};
  return ft_nccl_allreduce_sum(group, tensors, 1, error);
}

} // extern "C"
