// Where an array lives: the CPU or one CUDA device.
#pragma once

#include <string>
#include <string_view>

namespace lmx {

struct Device {
  enum class Type { cpu, cuda };
  Type type = Type::cpu;
  int index = 0;

  static Device cpu() { return {Type::cpu, 0}; }
  static Device cuda(int i = 0) { return {Type::cuda, i}; }
  // "cpu", "cuda" or "cuda:N"; anything else throws "[device] ...".
  static Device parse(std::string_view s);
  std::string str() const;
  bool operator==(const Device&) const = default;
};

}  // namespace lmx
