// A temporary copy of a fixture model folder, for tests that break one thing in it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace lmx::test {

// A Qwen-style chat template that lists tools and writes calls as <tool_call> (hermes), with
// each message's tool_calls and tool_call_id.
inline constexpr const char* kHermesToolTemplate =
    "{%- if tools %}<|im_start|>system\n{% for t in tools %}{{ t.function.name }}: {{ t.function.parameters | tojson }}"
    "\n{% endfor %}Call one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>.<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<tool_call>{\"name\": \"{{ c.function.name }}\", \"arguments\": "
    "{{ c.function.arguments | tojson }}}</tool_call>{% endfor %}"
    "{%- if m.tool_call_id %} ({{ m.tool_call_id }}){% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

inline const std::filesystem::path kFixtureModels = std::filesystem::path(LMX_FIXTURES_DIR) / "models";

// The copy lives under the system's temporary folder and goes with the object.
class FixtureCopy {
 public:
  FixtureCopy(const std::string& name, const std::string& tag)
      : dir_(std::filesystem::temp_directory_path() /
             ("lmx_" + tag + "_" + name + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(dir_);
    std::filesystem::copy(kFixtureModels / name, dir_, std::filesystem::copy_options::recursive);
  }
  ~FixtureCopy() { std::filesystem::remove_all(dir_); }
  FixtureCopy(const FixtureCopy&) = delete;
  FixtureCopy& operator=(const FixtureCopy&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path file(const std::string& name) const { return dir_ / name; }

  // Rewrites model.safetensors with the f32 tensor `tensor` all NaN, as from weights that
  // overflowed. The final norm's makes every logit of every step NaN.
  void fill_nan(const std::string& tensor) const {
    const std::filesystem::path st = file("model.safetensors"), old = file("old.safetensors");
    std::filesystem::rename(st, old);
    {
      const io::SafetensorsFile f = io::SafetensorsFile::open(old);
      std::vector<io::NamedTensor> tensors;
      std::vector<float> nan;
      for (const io::TensorInfo& t : f.tensors()) {
        tensors.push_back({t.name, t.dtype, t.shape, f.data(t)});
        if (t.name != tensor) continue;
        ASSERT_EQ(t.dtype, io::StDtype::F32) << tensor;
        nan.assign(size_t(t.nbytes() / 4), std::numeric_limits<float>::quiet_NaN());
        tensors.back().bytes = std::as_bytes(std::span<const float>(nan));
      }
      ASSERT_FALSE(nan.empty()) << "no tensor " << tensor << " in " << old;
      io::write_safetensors(st, tensors);
    }
    std::filesystem::remove(old);
  }

  // Rewrites one field of a JSON file of the copy (e.g. tokenizer_config.json's chat_template).
  void set_json(const std::string& name, const nlohmann::json::json_pointer& field, const nlohmann::json& value) const {
    nlohmann::json j;
    {
      std::ifstream in(file(name));
      j = nlohmann::json::parse(in);
    }
    j[field] = value;
    std::ofstream(file(name)) << j.dump();
  }

 private:
  std::filesystem::path dir_;
};

}  // namespace lmx::test
