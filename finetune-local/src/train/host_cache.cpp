// The C side of finetune_local::train::HostCache: a caching allocator for
// libtorch's CPU tensors. libtorch hands every CPU allocation to malloc and
// every release back to it; for the blocks a training step allocates and
// frees by the thousand (activations, gradients, GEMM outputs of hundreds
// of KiB to hundreds of MiB) glibc searches its large bins, or maps fresh
// pages that fault and are zeroed on first touch, while libtorch's other
// threads wait. Here a released block of 64 KiB or more is kept and handed
// to the next request of a size it fits (within a quarter more), the way
// libtorch's CUDA allocator keeps device memory; smaller ones go to malloc
// as before. Each training step ends with a tick that frees the blocks no
// request took since the previous tick, so what is kept follows what a
// step uses and memory a step stopped using goes back.
//
// Invariants the Rust side keeps (finetune-local/src/train/host_cache.rs):
// * install and uninstall are paired (the guard's constructor and drop);
//   the cache is one process-wide allocator, installed while at least one
//   guard lives and only over libtorch's default CPU allocator;
// * `out` of ft_host_cache_stats points to five int64.
// No C++ exception crosses this boundary: allocation failures are thrown
// to libtorch's caller (as its own allocator throws), not to Rust.
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

namespace {

// Blocks below this go straight to malloc (its small bins are fast).
constexpr size_t kMinCached = size_t{64} << 10;

// `n` rounded up to one of eight sizes per power of two: a block serves
// requests that differ by a few rows, at most an eighth more memory.
size_t class_size(size_t n) {
  const int top = 63 - __builtin_clzll(static_cast<unsigned long long>(n));
  const size_t step = size_t{1} << (top - 3);
  return (n + step - 1) / step * step;
}

class HostCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    void* p = nullptr;
    if (n < kMinCached) {
      p = c10::alloc_cpu(n);
    } else {
      p = take(class_size(n));
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override {
    return &release;
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Installs the cache over libtorch's default CPU allocator, or counts
  // one more user where it is installed. False where another allocator
  // (an application's own) is installed: it is left in place.
  bool install() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (users_ == 0) {
      auto* current = c10::GetCPUAllocator();
      if (current != c10::GetDefaultCPUAllocator()) {
        return false;
      }
      previous_ = current;
      c10::SetCPUAllocator(this, 0);
      // c10 keeps an allocator registered with a higher priority.
      if (c10::GetCPUAllocator() != this) {
        return false;
      }
    }
    users_ += 1;
    return true;
  }

  // One user fewer; the last puts the previous allocator back and frees
  // every kept block. Blocks still held by tensors are freed on release.
  void uninstall() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (users_ == 0) {
      return;
    }
    users_ -= 1;
    if (users_ == 0) {
      c10::SetCPUAllocator(previous_, 0);
      free_idle(UINT64_MAX);
    }
  }

  // Ends a step: frees the kept blocks no request took since the last tick.
  void tick() {
    std::lock_guard<std::mutex> lock(mutex_);
    epoch_ += 1;
    free_idle(epoch_ - 1);
  }

  void stats(int64_t* out) {
    std::lock_guard<std::mutex> lock(mutex_);
    out[0] = static_cast<int64_t>(hits_);
    out[1] = static_cast<int64_t>(misses_);
    out[2] = static_cast<int64_t>(idle_bytes_);
    out[3] = static_cast<int64_t>(live_bytes_);
    out[4] = users_ > 0 ? 1 : 0;
  }

 private:
  struct Idle {
    void* ptr;
    uint64_t epoch;
  };

  // A kept block of at least `size` bytes (and at most a quarter more),
  // the one of its size released last (likeliest still in the CPU's
  // caches), or a new one.
  void* take(size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = idle_.lower_bound(size);
      if (it != idle_.end() && it->first <= size + size / 4) {
        const size_t kept = it->first;
        void* p = it->second.back().ptr;
        it->second.pop_back();
        if (it->second.empty()) {
          idle_.erase(it);
        }
        idle_bytes_ -= kept;
        live_.emplace(p, kept);
        live_bytes_ += kept;
        hits_ += 1;
        return p;
      }
      misses_ += 1;
    }
    void* p = nullptr;
    try {
      p = c10::alloc_cpu(size);
    } catch (...) {
      // Out of memory: what the cache keeps goes back, then one more try
      // (whose failure reaches libtorch's caller as its allocator's would).
      {
        std::lock_guard<std::mutex> lock(mutex_);
        free_idle(UINT64_MAX);
      }
      p = c10::alloc_cpu(size);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    live_.emplace(p, size);
    live_bytes_ += size;
    return p;
  }

  static void release(void* p);

  void give_back(void* p) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(p);
      if (it != live_.end()) {
        const size_t size = it->second;
        live_.erase(it);
        live_bytes_ -= size;
        if (users_ > 0) {
          idle_[size].push_back(Idle{p, epoch_});
          idle_bytes_ += size;
          return;
        }
      }
    }
    c10::free_cpu(p);
  }

  // Frees the kept blocks last released before `epoch` (all of them with
  // UINT64_MAX: epochs count up from 1 and never reach it). Called with the
  // mutex held.
  void free_idle(uint64_t epoch) {
    for (auto it = idle_.begin(); it != idle_.end();) {
      // Oldest first: blocks are pushed in the order they are released.
      auto& blocks = it->second;
      size_t freed = 0;
      while (freed < blocks.size() && blocks[freed].epoch < epoch) {
        c10::free_cpu(blocks[freed].ptr);
        freed += 1;
      }
      idle_bytes_ -= freed * it->first;
      blocks.erase(blocks.begin(), blocks.begin() + static_cast<std::ptrdiff_t>(freed));
      it = blocks.empty() ? idle_.erase(it) : std::next(it);
    }
  }

  std::mutex mutex_;
  // Kept blocks by size, each size's in the order they were released.
  std::map<size_t, std::vector<Idle>> idle_;
  std::unordered_map<void*, size_t> live_;
  size_t idle_bytes_ = 0;
  size_t live_bytes_ = 0;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
  uint64_t epoch_ = 1;
  size_t users_ = 0;
  c10::Allocator* previous_ = nullptr;
};

// Never destroyed: tensors may be released while the process exits.
HostCache& cache() {
  static auto* instance = new HostCache();
  return *instance;
}

void HostCache::release(void* p) {
  cache().give_back(p);
}

} // namespace

extern "C" {

int ft_host_cache_install() {
  return cache().install() ? 1 : 0;
}

void ft_host_cache_uninstall() {
  cache().uninstall();
}

void ft_host_cache_tick() {
  cache().tick();
}

// Requests served from kept blocks, requests that allocated, bytes kept,
// bytes of cached-size blocks held by tensors, and whether it is installed.
void ft_host_cache_stats(int64_t* out) {
  cache().stats(out);
}

} // extern "C"
