// What c10d.cpp and nccl.cpp share: errors cross to Rust as malloc'd
// strings, never as C++ exceptions (see the invariants in each file).
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include <c10/util/Exception.h>

namespace finetune {

// A malloc'd copy of `text`, for Rust to free with ft_c10d_string_free.
inline char* copy(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, text.c_str(), text.size() + 1);
  }
  return out;
}

// Runs `f`; returns 0, or -1 with the exception's message in `*error`.
template <typename F>
int guarded(char** error, F f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    *error = copy(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *error = copy(e.what());
  } catch (...) {
    *error = copy("unknown C++ exception");
  }
  return -1;
}

} // namespace finetune
