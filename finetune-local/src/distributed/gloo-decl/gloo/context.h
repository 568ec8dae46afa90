// See c10d.cpp ("Gloo's headers"): declarations only, for ProcessGroupGloo.hpp.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  // Named by ProcessGroupGloo::setTimeout (inline, never called by us).
  void setTimeout(std::chrono::milliseconds timeout);
};
} // namespace gloo
