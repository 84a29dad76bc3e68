#include "runtime/token_text.h"

#include <utility>

namespace lmx {

TokenText::TokenText(const Tokenizer* tokenizer, bool skip_special_tokens, std::vector<std::string> stop_strings)
    : stops_(std::move(stop_strings)) {
  if (tokenizer) decoder_.emplace(*tokenizer, skip_special_tokens);
}

TokenText::Piece TokenText::push(int32_t id, bool control, bool last) {
  const std::string piece = decoder_ && !control ? decoder_->push(id) : std::string();
  StopStringMatcher::Result r = stops_.push(piece);
  Piece out{std::move(r.emit), r.stopped};
  if (!out.stopped && last) {
    const StopStringMatcher::Result tail = stops_.push(decoder_ ? decoder_->flush() : std::string());
    out.text += tail.emit;
    out.stopped = tail.stopped;
    if (!tail.stopped) out.text += stops_.flush();
  }
  return out;
}

}  // namespace lmx
