// tokenizer_config.json: special-token strings, BOS/EOS flags, space cleanup and the chat
// template, in the forms transformers accepts.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/tokenizer.h"

namespace lmx {
namespace {

// A special token is a string or an AddedToken object {"content": ..., ...}.
std::optional<std::string> read_token(const nlohmann::json& j, const char* key, std::string_view where) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  const auto& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail("tokenizer", where, ": ", key, " must be a string or an object with \"content\", got ", v.dump());
}

std::optional<bool> read_flag(const nlohmann::json& j, const char* key, std::string_view where) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  LMX_CHECK(j[key].is_boolean(), "tokenizer", where, ": ", key, " must be true or false, got ", j[key].dump());
  return j[key].get<bool>();
}

}  // namespace

TokenizerConfig TokenizerConfig::parse(const nlohmann::json& j, std::string_view where) {
  LMX_CHECK(j.is_object(), "tokenizer", where, ": expected a JSON object");
  TokenizerConfig c;
  c.bos_token = read_token(j, "bos_token", where);
  c.eos_token = read_token(j, "eos_token", where);
  c.pad_token = read_token(j, "pad_token", where);
  c.unk_token = read_token(j, "unk_token", where);
  c.mask_token = read_token(j, "mask_token", where);
  c.sep_token = read_token(j, "sep_token", where);
  c.cls_token = read_token(j, "cls_token", where);
  // additional_special_tokens is a list; transformers 5's extra_special_tokens is a list or a
  // {name: token} map. Entries are strings or AddedToken objects.
  for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    LMX_CHECK(j[key].is_array() || j[key].is_object(), "tokenizer", where, ": ", key, " must be a list or an object");
    for (const auto& [name, value] : j[key].items()) {
      const nlohmann::json entry = {{"token", value}};
      if (auto t = read_token(entry, "token", where)) c.extra_special_tokens.push_back(*t);
    }
  }
  c.add_bos_token = read_flag(j, "add_bos_token", where);
  c.add_eos_token = read_flag(j, "add_eos_token", where);
  c.clean_up_tokenization_spaces = read_flag(j, "clean_up_tokenization_spaces", where).value_or(false);
  if (j.contains("tokenizer_class") && j["tokenizer_class"].is_string())
    c.tokenizer_class = j["tokenizer_class"].get<std::string>();
  // transformers' Gemma tokenizer class has mask_token="<mask>" by default, which makes
  // decode(skip_special_tokens=True) drop it although tokenizer.json marks it non-special.
  if (!c.mask_token && c.tokenizer_class.rfind("GemmaTokenizer", 0) == 0) c.mask_token = "<mask>";
  if (j.contains("chat_template") && !j["chat_template"].is_null()) {
    const auto& t = j["chat_template"];
    if (t.is_string()) {
      c.chat_template = t.get<std::string>();
    } else if (t.is_array()) {
      for (const auto& e : t) {
        LMX_CHECK(e.is_object() && e.contains("name") && e.contains("template"), "tokenizer", where,
                  ": chat_template list entries must be {\"name\": ..., \"template\": ...}");
        c.named_chat_templates[e["name"].get<std::string>()] = e["template"].get<std::string>();
      }
      if (auto it = c.named_chat_templates.find("default"); it != c.named_chat_templates.end())
        c.chat_template = it->second;
    } else {
      fail("tokenizer", where, ": chat_template must be a string or a list of {name, template}");
    }
  }
  return c;
}

std::vector<std::pair<std::string, std::string>> TokenizerConfig::special_token_strings() const {
  std::vector<std::pair<std::string, std::string>> out;
  const std::pair<const char*, const std::optional<std::string>*> all[] = {
      {"bos_token", &bos_token}, {"eos_token", &eos_token}, {"unk_token", &unk_token}, {"sep_token", &sep_token},
      {"pad_token", &pad_token}, {"cls_token", &cls_token}, {"mask_token", &mask_token}};
  for (const auto& [name, value] : all)
    if (*value) out.emplace_back(name, **value);
  return out;
}

}  // namespace lmx
