// The real Llama 3, Qwen3 and Gemma 3 tokenizers against two references:
//  - "transformers": AutoTokenizer of HF transformers (tools/reference/make_tokenizer_goldens.py),
//    compared with Tokenizer::from_dir, chat templates included;
//  - "raw": HF tokenizers' Rust core alone (tools/reference/make_raw_tokenizer_goldens.js),
//    compared with Tokenizer::from_file, which has the same semantics.
// Each checks ids with and without special tokens, decoded text with and without special
// tokens and streamed text. The tokenizer files come from scripts/fetch-test-data.sh.
// LMX_TOKENIZER_GOLDENS, when set, names another folder of transformers goldens.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "text/tokenizer.h"

#if __has_include("text/jinja/jinja.h")
#include "text/jinja/jinja.h"
#define LMX_HAVE_JINJA 1
#endif

namespace fs = std::filesystem;

namespace {

fs::path data_dir(const std::string& family) {
  const char* env = std::getenv("LMX_TEST_DATA_DIR");
  return fs::path(env ? env : LMX_TEST_DATA_DIR) / family;
}

struct Param {
  std::string family;
  bool raw;  // HF tokenizers alone instead of transformers
};
void PrintTo(const Param& p, std::ostream* os) { *os << p.family << (p.raw ? " (raw)" : ""); }

fs::path golden_path(const Param& p) {
  if (p.raw) return fs::path(LMX_FIXTURES_DIR "/tokenizers/raw") / (p.family + ".json");
  const char* env = std::getenv("LMX_TOKENIZER_GOLDENS");
  return fs::path(env ? env : LMX_FIXTURES_DIR "/tokenizers") / (p.family + ".json");
}

// Loads each tokenizer once for the whole test program; load time goes to the log.
const lmx::Tokenizer* tokenizer_for(const Param& p) {
  static std::map<std::pair<std::string, bool>, std::unique_ptr<lmx::Tokenizer>> cache;
  auto it = cache.find({p.family, p.raw});
  if (it != cache.end()) return it->second.get();
  const fs::path dir = data_dir(p.family);
  std::unique_ptr<lmx::Tokenizer> tok;
  if (fs::exists(dir / "tokenizer.json")) {
    const auto t0 = std::chrono::steady_clock::now();
    tok = std::make_unique<lmx::Tokenizer>(p.raw ? lmx::Tokenizer::from_file(dir / "tokenizer.json")
                                                 : lmx::Tokenizer::from_dir(dir));
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[ load     ] %s tokenizer (%.1f MB%s) loaded in %.1f ms\n", p.family.c_str(),
                double(fs::file_size(dir / "tokenizer.json")) / 1e6, p.raw ? "" : " + config", ms);
  }
  return cache.emplace(std::pair{p.family, p.raw}, std::move(tok)).first->second.get();
}

struct Golden {
  const lmx::Tokenizer* tok = nullptr;
  nlohmann::ordered_json json;  // in the order written: the chats' tools keep their key order
};

// Skips the test (with the reason) when the data or the goldens are missing.
Golden load_golden(const Param& param) {
  Golden g;
  g.tok = tokenizer_for(param);
  const fs::path p = golden_path(param);
  if (!g.tok || !fs::exists(p)) return g;
  std::ifstream in(p);
  g.json = nlohmann::ordered_json::parse(in);
  return g;
}

// Why the goldens cannot run here, or "" when they can.
std::string missing(const Golden& g, const Param& p) {
  if (!g.tok) return "no " + (data_dir(p.family) / "tokenizer.json").string() + ": run scripts/fetch-test-data.sh";
  if (g.json.is_null())
    return "no goldens at " + golden_path(p).string() +
           ": run tools/reference/make_tokenizer_goldens.py where transformers is installed";
  return "";
}

std::string show(const std::string& s) { return nlohmann::json(s).dump(); }

class TokenizerGolden : public ::testing::TestWithParam<Param> {};

TEST_P(TokenizerGolden, EncodeMatchesTransformers) {
  const std::string family = GetParam().family;
  Golden g = load_golden(GetParam());
  if (const std::string why = missing(g, GetParam()); !why.empty()) GTEST_SKIP() << why;
  int checked = 0;
  for (const auto& c : g.json.at("cases")) {
    const std::string text = c.at("text");
    EXPECT_EQ(g.tok->encode(text, true), c.at("ids").get<std::vector<int32_t>>()) << family << " text " << show(text);
    EXPECT_EQ(g.tok->encode(text, false), c.at("ids_no_special").get<std::vector<int32_t>>())
        << family << " text " << show(text);
    ++checked;
  }
  EXPECT_GT(checked, 100);
}

TEST_P(TokenizerGolden, DecodeMatchesTransformers) {
  const std::string family = GetParam().family;
  Golden g = load_golden(GetParam());
  if (const std::string why = missing(g, GetParam()); !why.empty()) GTEST_SKIP() << why;
  for (const auto& c : g.json.at("cases")) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(g.tok->decode(ids, false), c.at("decoded").get<std::string>()) << family << " text " << show(c.at("text"));
    EXPECT_EQ(g.tok->decode(ids, true), c.at("decoded_skip").get<std::string>())
        << family << " text " << show(c.at("text"));
  }
}

TEST_P(TokenizerGolden, StreamingEqualsDecode) {
  const std::string family = GetParam().family;
  Golden g = load_golden(GetParam());
  if (const std::string why = missing(g, GetParam()); !why.empty()) GTEST_SKIP() << why;
  for (const auto& c : g.json.at("cases")) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    for (bool skip : {false, true}) {
      lmx::StreamDecoder stream(*g.tok, skip);
      std::string text;
      for (int32_t id : ids) text += stream.push(id);
      text += stream.flush();
      EXPECT_EQ(text, g.tok->decode(ids, skip)) << family << " skip=" << skip << " text " << show(c.at("text"));
    }
  }
}

TEST_P(TokenizerGolden, ChatTemplateMatchesTransformers) {
  const std::string family = GetParam().family;
  Golden g = load_golden(GetParam());
  if (const std::string why = missing(g, GetParam()); !why.empty()) GTEST_SKIP() << why;
#ifndef LMX_HAVE_JINJA
  GTEST_SKIP() << "the Jinja engine (text/jinja/jinja.h) is not built yet";
#else
  if (g.json.value("chats", nlohmann::ordered_json::array()).empty()) GTEST_SKIP() << "the goldens hold no chats";
  const lmx::TokenizerConfig& cfg = g.tok->config();
  ASSERT_FALSE(cfg.chat_template.empty());
  const lmx::jinja::Template tmpl(cfg.chat_template);
  int rendered = 0;
  for (const auto& chat : g.json.at("chats")) {
    if (chat.at("rendered").is_null()) continue;
    // apply_chat_template cuts these after rendering (runtime::render_chat does too, and
    // tests/runtime/chat_tools_test.cpp holds it to them).
    if (chat.at("kwargs").value("continue_final_message", false)) continue;
    nlohmann::ordered_json ctx;
    ctx["messages"] = chat.at("messages");
    for (const auto& [name, value] : cfg.special_token_strings()) ctx[name] = value;
    for (const auto& [key, value] : chat.at("kwargs").items()) ctx[key] = value;
    EXPECT_EQ(tmpl.render(ctx), chat.at("rendered").get<std::string>()) << family << " chat " << chat.dump();
    ++rendered;
  }
  EXPECT_GT(rendered, 0);
#endif
}

// Single-thread encode throughput on ~1 MB of the golden corpus cut into 4 kB documents,
// the same measurement as make_tokenizer_goldens.py --bench. Logged, not asserted.
TEST_P(TokenizerGolden, EncodeSpeed) {
  const std::string family = GetParam().family;
  Golden g = load_golden(GetParam());
  if (const std::string why = missing(g, GetParam()); !why.empty()) GTEST_SKIP() << why;
  std::string corpus;
  for (const auto& c : g.json.at("cases")) corpus += c.at("text").get<std::string>() + "\n";
  std::string text;
  while (text.size() < 1000000) text += corpus;
  std::vector<std::string_view> docs;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = std::min(text.size(), pos + 4000);
    while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
    docs.push_back(std::string_view(text).substr(pos, end - pos));
    pos = end;
  }
  double best = 1e30;
  size_t tokens = 0;
  for (int rep = 0; rep < 3; ++rep) {
    tokens = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (std::string_view d : docs) tokens += g.tok->encode(d, false).size();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("[ speed    ] %s encode: %.2f MB/s, %zu tokens in %.1f ms (1 thread)\n", family.c_str(),
              double(text.size()) / best / 1e6, tokens, best * 1e3);
}

INSTANTIATE_TEST_SUITE_P(Families, TokenizerGolden,
                         ::testing::Values(Param{"llama3", false}, Param{"qwen3", false}, Param{"gemma3", false},
                                           Param{"llama3", true}, Param{"qwen3", true}, Param{"gemma3", true}),
                         [](const auto& info) { return info.param.family + (info.param.raw ? "_raw" : ""); });

}  // namespace
