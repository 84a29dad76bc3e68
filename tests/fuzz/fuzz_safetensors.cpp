// libFuzzer entry: arbitrary bytes parsed as a safetensors file from memory. Any input
// must end in a valid file or an lmx::Error; every span handed out must lie inside it.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const auto f = lmx::io::SafetensorsFile::parse_memory(bytes, "fuzz.safetensors");
    uint64_t covered = 0;
    for (const auto& t : f.tensors()) {
      const auto d = f.data(t);
      // Touch the first and last byte so ASan checks the span's bounds.
      if (!d.empty()) {
        volatile std::byte edge = d.front();
        edge = d.back();
        (void)edge;
      }
      if (f.find(t.name) != &t) __builtin_trap();
      covered += d.size();
    }
    if (covered != f.data_bytes()) __builtin_trap();
  } catch (const lmx::Error&) {
  }
  return 0;
}
