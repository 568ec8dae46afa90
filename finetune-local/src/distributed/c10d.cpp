// The C side of finetune_local::distributed: PyTorch's own c10d (TCPStore
// rendezvous, ProcessGroupGloo) behind a small C ABI for Rust.
//
// Invariants the Rust side keeps (finetune-local/src/distributed/ffi.rs):
// * every handle passed in came from the matching `_new` and is freed once;
// * a tensor pointer is torch-sys's `C_tensor*`, which is an `at::Tensor*`,
//   alive for the call;
// * calls on one group are made from one thread at a time, in the same
//   order on every rank (c10d's contract);
// * on failure a function returns null or -1 and sets `*error` to a string
//   allocated here, which the caller frees with ft_c10d_string_free. No C++
//   exception crosses this boundary.
//
// Gloo's headers: PyTorch's wheel does not ship them, although
// ProcessGroupGloo.hpp includes them. gloo-decl/ stands in with
// declarations only. We use ProcessGroupGloo through its constructor,
// Options::create_default and the virtual functions of c10d::Backend, all
// compiled into libtorch_cpu.so; the class holds Gloo's types only behind
// std::shared_ptr/std::unique_ptr, so its layout does not depend on them.
// What gloo-decl declares is exactly what the header's inline code names:
// no Gloo function is defined or called from here.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "shim.h"

namespace {

using finetune::guarded;

struct Store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

std::vector<at::Tensor> tensors_of(void* const* tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(*static_cast<at::Tensor*>(tensors[i]));
  }
  return out;
}

} // namespace

extern "C" {

void ft_c10d_string_free(char* s) {
  std::free(s);
}

void* ft_c10d_store_new(
    const char* host,
    uint16_t port,
    int is_server,
    size_t world_size,
    int64_t timeout_ms,
    char** error) {
  Store* out = nullptr;
  guarded(error, [&] {
    c10d::TCPStoreOptions options;
    options.port = port;
    options.isServer = is_server != 0;
    options.numWorkers = world_size;
    options.waitWorkers = true;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
    out = new Store{store};
  });
  return out;
}

void ft_c10d_store_free(void* store) {
  delete static_cast<Store*>(store);
}

int ft_c10d_store_set(
    void* store,
    const char* key,
    const uint8_t* data,
    size_t len,
    char** error) {
  return guarded(error, [&] {
    std::vector<uint8_t> value(data, data + len);
    static_cast<Store*>(store)->store->set(std::string(key), value);
  });
}

// Waits for `key` (up to the store's timeout); `*data` is malloc'd.
int ft_c10d_store_get(
    void* store,
    const char* key,
    uint8_t** data,
    size_t* len,
    char** error) {
  return guarded(error, [&] {
    auto value = static_cast<Store*>(store)->store->get(std::string(key));
    *len = value.size();
    *data = static_cast<uint8_t*>(std::malloc(value.size() + 1));
    std::memcpy(*data, value.data(), value.size());
  });
}

int ft_c10d_store_add(void* store, const char* key, int64_t value, int64_t* out, char** error) {
  return guarded(error, [&] {
    *out = static_cast<Store*>(store)->store->add(std::string(key), value);
  });
}

int ft_c10d_store_check(void* store, const char* key, int* present, char** error) {
  return guarded(error, [&] {
    *present = static_cast<Store*>(store)->store->check({std::string(key)}) ? 1 : 0;
  });
}

void* ft_c10d_gloo_new(
    void* store,
    int rank,
    int size,
    int64_t timeout_ms,
    char** error) {
  Group* out = nullptr;
  guarded(error, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    // Devices from GLOO_SOCKET_IFNAME when set, else the host's address
    // (loopback when the hostname does not resolve).
    auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
        static_cast<Store*>(store)->store, rank, size, options);
    out = new Group{backend, timeout};
  });
  return out;
}

void ft_c10d_group_free(void* group) {
  delete static_cast<Group*>(group);
}

int ft_c10d_allreduce_sum(void* group, void* const* tensors, size_t n, char** error) {
  return guarded(error, [&] {
    auto g = static_cast<Group*>(group);
    auto list = tensors_of(tensors, n);
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    options.timeout = g->timeout;
    g->backend->allreduce(list, options)->wait(g->timeout);
  });
}

int ft_c10d_broadcast(void* group, void* const* tensors, size_t n, int root, char** error) {
  return guarded(error, [&] {
    auto g = static_cast<Group*>(group);
    auto list = tensors_of(tensors, n);
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = g->timeout;
    g->backend->broadcast(list, options)->wait(g->timeout);
  });
}

int ft_c10d_barrier(void* group, char** error) {
  return guarded(error, [&] {
    auto g = static_cast<Group*>(group);
    c10d::BarrierOptions options;
    options.timeout = g->timeout;
    g->backend->barrier(options)->wait(g->timeout);
  });
}

} // extern "C"
