// Post-processors (spec 4.5): TemplateProcessing, ByteLevel (no-op on ids),
// RobertaProcessing, BertProcessing and Sequence. Only single sequences are encoded.
#include "core/error.h"
#include "text/components.h"

namespace lmx::detail {
namespace {

// A flattened template: special-token ids, with -1 standing for the sequence itself.
class TemplateProcessor final : public PostProcessor {
 public:
  explicit TemplateProcessor(std::vector<int32_t> layout) : layout_(std::move(layout)) {}
  void process(std::vector<int32_t>& ids) const override {
    std::vector<int32_t> out;
    out.reserve(ids.size() + layout_.size());
    for (int32_t x : layout_) {
      if (x == -1) out.insert(out.end(), ids.begin(), ids.end());
      else out.push_back(x);
    }
    ids = std::move(out);
  }

 private:
  std::vector<int32_t> layout_;
};

class NoOpProcessor final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&) const override {}
};

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> parts) : parts_(std::move(parts)) {}
  void process(std::vector<int32_t>& ids) const override {
    for (const auto& p : parts_) p->process(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

std::vector<int32_t> template_layout(const nlohmann::json& j, std::string_view where) {
  std::vector<int32_t> layout;
  const auto& specials = j.at("special_tokens");
  for (const auto& item : j.at("single")) {
    if (item.contains("Sequence")) {
      layout.push_back(-1);
      continue;
    }
    LMX_CHECK(item.contains("SpecialToken"), "tokenizer", where, ": bad TemplateProcessing item ", item.dump());
    const std::string name = item["SpecialToken"].at("id").get<std::string>();
    LMX_CHECK(specials.contains(name), "tokenizer", where, ": TemplateProcessing uses special token '", name,
              "' that its special_tokens map lacks");
    for (const auto& id : specials[name].at("ids")) layout.push_back(id.get<int32_t>());
  }
  return layout;
}

// RobertaProcessing / BertProcessing: {"cls": [token, id], "sep": [token, id]}.
std::vector<int32_t> cls_sep_layout(const nlohmann::json& j) {
  return {j.at("cls").at(1).get<int32_t>(), -1, j.at("sep").at(1).get<int32_t>()};
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j, std::string_view where) {
  if (j.is_null()) return nullptr;
  const std::string type = j.value("type", "");
  if (type == "TemplateProcessing") return std::make_unique<TemplateProcessor>(template_layout(j, where));
  if (type == "ByteLevel") return std::make_unique<NoOpProcessor>();
  if (type == "RobertaProcessing" || type == "BertProcessing")
    return std::make_unique<TemplateProcessor>(cls_sep_layout(j));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (const auto& p : j.at("processors"))
      if (auto x = make_post_processor(p, where)) parts.push_back(std::move(x));
    return std::make_unique<SequenceProcessor>(std::move(parts));
  }
  fail("tokenizer", where, ": unknown post_processor type '", type,
       "' (supported: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence)");
}

std::unique_ptr<PostProcessor> make_bos_eos_processor(int32_t bos, int32_t eos) {
  std::vector<int32_t> layout;
  if (bos >= 0) layout.push_back(bos);
  layout.push_back(-1);
  if (eos >= 0) layout.push_back(eos);
  return std::make_unique<TemplateProcessor>(std::move(layout));
}

}  // namespace lmx::detail
