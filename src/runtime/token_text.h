// A generation's text as its tokens come: the streaming detokenizer, then the stop strings,
// which hold back text that might still grow into one. Streams and batched rows alike.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "runtime/stop_strings.h"
#include "text/tokenizer.h"

namespace lmx {

class TokenText {
 public:
  // `tokenizer` may be null (a model without one): then there is no text.
  TokenText(const Tokenizer* tokenizer, bool skip_special_tokens, std::vector<std::string> stop_strings);
  struct Piece {
    std::string text;      // what is now safe to show
    bool stopped = false;  // a stop string was found: the generation ends, `text` just before it
  };
  // The next token. `control`: it ended the generation as an end-of-sequence or stop token,
  // and has no text. `last`: it is the generation's last (for any reason), so what is held
  // back is released.
  Piece push(int32_t id, bool control, bool last);

 private:
  std::optional<StreamDecoder> decoder_;
  StopStringMatcher stops_;
};

}  // namespace lmx
