// StreamDecoder: decodes a short window of recent ids and returns the part of its text that
// is new and can no longer change.
#include "text/tokenizer.h"
#include "text/unicode.h"

namespace lmx {
namespace {

// Bytes at the end of `text` that a later token may still rewrite: an unfinished UTF-8
// character, which decodes as trailing U+FFFDs.
size_t unstable_tail(std::string_view text) {
  size_t end = text.size();
  while (end >= 3 && text.substr(end - 3, 3) == detail::kReplacementUtf8) end -= 3;
  return text.size() - end;
}

}  // namespace

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tok_(&tokenizer), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::push(int32_t id) {
  window_.push_back(id);
  // A run of <0xHH> tokens decodes as a whole: valid UTF-8 or one U+FFFD per byte. Wait
  // for the run to end.
  if (tok_->is_byte_fallback_token(id)) return {};
  const std::string text = tok_->decode(window_, skip_special_);
  const size_t stable = text.size() - unstable_tail(text);
  std::string out;
  if (stable > emitted_) {
    out = text.substr(emitted_, stable - emitted_);
    emitted_ = stable;
  }
  // When nothing is held back, keep only the last id as context: it carries what the
  // decoders look at across a boundary (the first-token space rule of Metaspace and Strip).
  if (stable == text.size() && window_.size() > 1) {
    const std::string last = tok_->decode(std::span<const int32_t>(&window_.back(), 1), skip_special_);
    if (!last.empty() && last.find(detail::kReplacementUtf8) == std::string::npos &&
        text.size() >= last.size() && text.compare(text.size() - last.size(), last.size(), last) == 0) {
      window_.erase(window_.begin(), window_.end() - 1);
      emitted_ = last.size();
    }
  }
  return out;
}

std::string StreamDecoder::flush() {
  const std::string text = tok_->decode(window_, skip_special_);
  std::string out = text.size() > emitted_ ? text.substr(emitted_) : std::string();
  window_.clear();
  emitted_ = 0;
  return out;
}

}  // namespace lmx
