// libFuzzer entry point: encodes arbitrary bytes (invalid UTF-8 included) with small
// tokenizers built in code, decodes the ids back and streams them. The first input byte
// picks the tokenizer. Errors must be lmx::Error; a crash, a hang, a leak, or streamed
// text that differs from decode() is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "text/tokenizer.h"

namespace {

using nlohmann::json;

const std::string kSp = "\xE2\x96\x81";  // U+2581

json added(int id, const std::string& content, bool special, const char* flag = nullptr) {
  json t = {{"id", id},         {"content", content}, {"single_word", false}, {"lstrip", false},
            {"rstrip", false},  {"normalized", false}, {"special", special}};
  if (flag) t[flag] = true;
  return t;
}

// SentencePiece-style: byte fallback, unk, normalizers, added tokens with every flag.
json sentencepiece() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) vocab[std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">"] = int(vocab.size());
  for (const std::string& s : std::vector<std::string>{kSp, "a", "b", "c", "e", "h", "t", kSp + "t", "he", kSp + "the", "ab", "abc"})
    vocab[s] = int(vocab.size());
  const int n = int(vocab.size());
  return {{"added_tokens", {added(0, "<unk>", true), added(1, "<s>", true), added(2, "</s>", true),
                            added(n, "[L]", true, "lstrip"), added(n + 1, "[R]", true, "rstrip"),
                            added(n + 2, "word", false, "single_word"), added(n + 3, "a b", false, "normalized")}},
          {"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "NFKC"}}, {{"type", "Prepend"}, {"prepend", kSp}},
                                                                 {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSp}}}}}},
          {"pre_tokenizer", nullptr},
          {"post_processor", {{"type", "TemplateProcessing"},
                              {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                              {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
          {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", kSp}}}, {"content", " "}},
                                                          {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                                          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
          {"model", {{"type", "BPE"}, {"unk_token", "<unk>"}, {"fuse_unk", true}, {"byte_fallback", true}, {"vocab", vocab},
                     {"merges", {kSp + " t", "h e", kSp + "t he", "a b", "ab c"}}}}};
}

// Byte-level with the Llama 3 split regex, ignore_merges and the ByteLevel decoder.
json byte_level(bool metaspace) {
  json vocab = json::object();
  int next_extra = 256;
  std::vector<std::string> chars;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const int cp = printable ? b : next_extra++;
    std::string s;
    if (cp < 0x80) s.push_back(char(cp));
    else s = {char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};
    chars.push_back(s);
    vocab[s] = b;
  }
  const std::string sp = chars[' '];
  for (const std::string& s : std::vector<std::string>{sp + "t", "he", sp + "the", "in", sp + "in"}) vocab[s] = int(vocab.size());
  json pre = {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"},
                 {"pattern", {{"Regex", R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
                 {"behavior", "Isolated"}, {"invert", false}},
                {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  if (metaspace) pre = {{"type", "Metaspace"}, {"replacement", kSp}, {"prepend_scheme", "first"}, {"split", true}};
  return {{"added_tokens", {added(int(vocab.size()), "<|eot|>", true), added(int(vocab.size()) + 1, "<think>", false)}},
          {"normalizer", metaspace ? json{{"type", "Lowercase"}} : json{{"type", "NFC"}}},
          {"pre_tokenizer", pre},
          {"post_processor", {{"type", "ByteLevel"}}},
          {"decoder", metaspace ? json{{"type", "Metaspace"}, {"replacement", kSp}, {"prepend_scheme", "first"}}
                                : json{{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"ignore_merges", !metaspace}, {"vocab", vocab},
                     {"merges", {{sp, "t"}, {"h", "e"}, {sp + "t", "he"}, {"i", "n"}, {sp, "in"}}}}}};
}

const lmx::Tokenizer& tokenizer(int which) {
  static const lmx::Tokenizer toks[] = {lmx::Tokenizer::from_json(sentencepiece().dump()),
                                        lmx::Tokenizer::from_json(byte_level(false).dump()),
                                        lmx::Tokenizer::from_json(byte_level(true).dump())};
  return toks[which % 3];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const lmx::Tokenizer& tok = tokenizer(data[0]);
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    for (bool special : {true, false}) {
      const std::vector<int32_t> ids = tok.encode(text, special);
      for (int32_t id : ids)
        if (id < 0 || size_t(id) >= tok.vocab_size()) std::abort();
      for (bool skip : {false, true}) {
        const std::string whole = tok.decode(ids, skip);
        lmx::StreamDecoder stream(tok, skip);
        std::string streamed;
        for (int32_t id : ids) streamed += stream.push(id);
        streamed += stream.flush();
        if (streamed != whole) std::abort();
      }
    }
    // Arbitrary ids, unknown ones included, must decode without trouble.
    std::vector<int32_t> ids;
    for (size_t i = 1; i + 1 < size; i += 2) ids.push_back(int32_t(data[i]) | (int32_t(data[i + 1] & 0x03) << 8));
    (void)tok.decode(ids, false);
  } catch (const lmx::Error&) {
  }
  return 0;
}
