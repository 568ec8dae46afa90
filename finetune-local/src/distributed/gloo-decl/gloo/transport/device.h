// See c10d.cpp ("Gloo's headers"): declarations only, for ProcessGroupGloo.hpp.
#pragma once

namespace gloo {
namespace transport {
class Device;
class UnboundBuffer {
 public:
  virtual ~UnboundBuffer();
};
} // namespace transport
} // namespace gloo
