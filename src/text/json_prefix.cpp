#include "text/json_prefix.h"

#include <algorithm>
#include <cstring>
#include <limits>

namespace lmx::text {
namespace {

using Kind = SchemaNode::Kind;
constexpr size_t kMaxPaths = 64;  // anyOf's branches read side by side; past this, the rest are dropped

bool digit(char c) { return c >= '0' && c <= '9'; }
int hex_value(char c) {
  if (digit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// What a container of `n` holds: `any` holds any keys and values.
bool free_keys(const SchemaNode& n) { return n.kind == Kind::any || n.free_keys; }
int32_t member(const SchemaNode& n) { return n.kind == Kind::any ? JsonSchema::kAny : n.items; }

// The last property a key may name next: skipping past a required one would leave it out.
size_t last_key(const SchemaNode& n, size_t next) {
  for (size_t j = next; j < n.properties.size(); ++j)
    if (n.properties[j].required) return j;
  return n.properties.size() - 1;
}

bool required_left(const SchemaNode& n, size_t next) {
  for (size_t j = next; j < n.properties.size(); ++j)
    if (n.properties[j].required) return true;
  return false;
}

// The scratch paths of accepts(), kept between calls so that reading a token allocates nothing.
template <class Path>
std::vector<Path>& scratch(int i) {
  thread_local std::vector<Path> v[2];
  return v[i];
}

}  // namespace

JsonPrefix::JsonPrefix(bool object_only)
    : schema_(object_only ? &JsonSchema::any_object() : &JsonSchema::any_value()) {
  paths_.emplace_back().h.node = schema_->root();
}

JsonPrefix::JsonPrefix(std::shared_ptr<const JsonSchema> schema) : owned_(std::move(schema)), schema_(owned_.get()) {
  paths_.emplace_back().h.node = schema_->root();
}

bool JsonPrefix::feed(std::string_view bytes) {
  std::vector<Path> a = paths_, b;
  for (char c : bytes) {
    if (!step_all(a, c, b)) return false;
    std::swap(a, b);
  }
  paths_ = std::move(a);
  return true;
}

bool JsonPrefix::accepts(std::string_view bytes) const {
  if (paths_.size() != 1) return accepts_from(paths_, bytes);
  // One way of reading, the common case: stepped in place, with no list of paths.
  thread_local Path p;
  thread_local std::vector<Path> forks;
  p = paths_[0];
  for (size_t i = 0; i < bytes.size(); ++i) {
    forks.clear();
    if (step(p, bytes[i], forks)) continue;
    return !forks.empty() && accepts_from(forks, bytes.substr(i + 1));  // anyOf's branches took the byte
  }
  return true;
}

bool JsonPrefix::accepts_from(const std::vector<Path>& paths, std::string_view bytes) const {
  std::vector<Path>& a = scratch<Path>(0);
  std::vector<Path>& b = scratch<Path>(1);
  a = paths;
  for (char c : bytes) {
    if (!step_all(a, c, b)) return false;
    std::swap(a, b);
  }
  return true;
}

bool JsonPrefix::complete() const {
  return std::any_of(paths_.begin(), paths_.end(), [](const Path& p) { return p.h.state == State::done; });
}

std::optional<uint32_t> JsonPrefix::string_room() const {
  uint32_t room = 0;  // the most of any path: text is taken if one path takes it
  for (const Path& p : paths_) {
    if (p.h.state != State::string || p.h.pair) return std::nullopt;
    room = std::max(room, node(p.h.node).max - p.h.len);
  }
  return room;
}

// Every field that decides what may follow, each path's in turn, and only where its state
// reads it (the others keep what an earlier state left). Counts that matter only up to a
// bound (a string's characters below its minLength, an array's items below minItems,
// where no maximum counts them too) are cut there, so that the states of a long string or
// list share one key.
void JsonPrefix::state_key(std::string& out) const {
  auto put = [&](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); };
  put(uint32_t(paths_.size()));
  for (const Path& p : paths_) {
    const Head& h = p.h;
    const State s = h.state;
    const bool text = s == State::string || s == State::escape || s == State::hex;
    const bool by_node = text || s == State::value || s == State::colon || s == State::literal ||
                         (s >= State::minus && s <= State::exp_digits);
    const SchemaNode& n = node(h.node);
    uint32_t len = text || s == State::literal || s == State::key_text ? h.len : 0;
    if (s == State::string && n.max == SchemaNode::kUnbounded) len = std::min(len, n.min);
    put(uint32_t(s) | uint32_t(text && h.key) << 8 | uint32_t(text && h.pair) << 9 | uint32_t(h.blank) << 16);
    put(s == State::hex ? uint32_t(h.hex) | uint32_t(h.hex_left) << 16 : 0);
    put(by_node ? uint32_t(h.node) : 0);
    put(len);
    put(s == State::literal || s == State::key_text ? h.at : 0);
    put(s == State::literal ? h.end : 0);
    put(h.depth);
    for (int d = 0; d < h.depth; ++d) {
      const Open& o = p.open[d];
      const SchemaNode& c = node(o.node);
      uint32_t count = o.count;
      if (o.array && c.max == SchemaNode::kUnbounded) count = std::min(count, c.min);
      if (!o.array && free_keys(c)) count = 0;
      put(uint32_t(o.node));
      put(count << 1 | o.array);
    }
  }
}

bool JsonPrefix::step_all(const std::vector<Path>& in, char c, std::vector<Path>& out) const {
  out.clear();
  thread_local std::vector<Path> forks;
  for (const Path& p : in) {
    forks.clear();
    out.push_back(p);
    if (!step(out.back(), c, forks)) out.pop_back();
    for (const Path& f : forks)
      if (out.size() < kMaxPaths) out.push_back(f);
  }
  return !out.empty();
}

bool JsonPrefix::step(Path& p, char c, std::vector<Path>& forks) const {
  Head& h = p.h;
  if (h.state <= State::first_item || h.state == State::done) {  // between tokens: whitespace may stand here
    if (json_space(c)) {
      if (h.blank == kMaxBlank) return false;
      ++h.blank;
      return true;
    }
    h.blank = 0;
  }
  switch (h.state) {
    case State::value:
      return start_value(p, c, forks);
    case State::first_key:
    case State::key:
      if (c == '"') return begin_key(p);
      return h.state == State::first_key && c == '}' && close(p, c);
    case State::key_text:
      return key_text(p, c);
    case State::colon:
      if (c == ':') h.state = State::value;
      return c == ':';
    case State::after: {
      if (c != ',') return (c == '}' || c == ']') && close(p, c);
      const Open& top = p.top();
      const SchemaNode& n = node(top.node);
      if (!top.array) {
        h.state = State::key;
        return free_keys(n) || top.count < n.properties.size();  // a key may follow
      }
      if (top.count >= n.max) return false;
      h.node = member(n);
      h.state = State::value;
      return true;
    }
    case State::first_item: {
      if (c == ']') return close(p, c);
      const SchemaNode& n = node(p.top().node);
      if (n.max == 0) return false;
      h.node = member(n);
      h.state = State::value;
      return start_value(p, c, forks);
    }
    case State::string:
      return string(p, c);
    case State::escape:
      if (c == 'u') {
        h.hex_left = 4;
        h.hex = 0;
        h.state = State::hex;
        return true;
      }
      if (h.pair || c == '\0' || !std::strchr("\"\\/bfnrt", c)) return false;
      h.state = State::string;
      return true;
    case State::hex: {
      // UTF-16 in escapes: a high surrogate (D800-DBFF) must be followed by an escaped low
      // one (DC00-DFFF), and a low one must follow a high one, as parsers ask. Told by the
      // first two digits, so that no prefix taken is a dead end.
      const int v = hex_value(c);
      if (v < 0) return false;
      if (h.hex_left == 4 && h.pair && v != 0xD) return false;
      if (h.hex_left == 3 && h.hex == 0xD && (v >= 0xC) != h.pair) return false;
      h.hex = uint16_t(h.hex * 16 + v);
      if (--h.hex_left > 0) return true;
      h.pair = !h.pair && h.hex >= 0xD800 && h.hex <= 0xDBFF;  // a low half next
      h.state = State::string;
      return true;
    }
    case State::minus:
      if (!digit(c)) return false;
      h.state = c == '0' ? State::zero : State::digits;
      return true;
    case State::zero:
    case State::digits:
      if (digit(c) && h.state == State::digits) return true;
      if (c == '.' || c == 'e' || c == 'E') {
        if (node(h.node).integer) return false;
        h.state = c == '.' ? State::point : State::exp;
        return true;
      }
      return end_number(p, c, forks);
    case State::point:
      if (digit(c)) h.state = State::fraction;
      return digit(c);
    case State::fraction:
      if (digit(c)) return true;
      if (c == 'e' || c == 'E') {
        h.state = State::exp;
        return true;
      }
      return end_number(p, c, forks);
    case State::exp:
      if (c == '+' || c == '-') h.state = State::exp_sign;
      else if (digit(c)) h.state = State::exp_digits;
      return c == '+' || c == '-' || digit(c);
    case State::exp_sign:
      if (digit(c)) h.state = State::exp_digits;
      return digit(c);
    case State::exp_digits:
      return digit(c) || end_number(p, c, forks);
    case State::literal:
      return literal(p, c, forks);
    case State::done:
      return false;  // only whitespace, taken above
  }
  return false;
}

bool JsonPrefix::start_value(Path& p, char c, std::vector<Path>& forks) const {
  Head& h = p.h;
  const SchemaNode& n = node(h.node);
  switch (n.kind) {
    case Kind::any_of:
      // Each branch that takes c goes on as a path of its own.
      for (int32_t b : n.branches) {
        Path q = p;
        q.h.node = b;
        if (start_value(q, c, forks) && forks.size() < kMaxPaths) forks.push_back(q);
      }
      return false;
    case Kind::literals:
      h.state = State::literal;
      h.len = 0;
      h.at = 0;
      h.end = uint32_t(n.texts.size());
      return literal(p, c, forks);
    case Kind::object:
    case Kind::array:
    case Kind::any:
      if ((c == '{' && n.kind != Kind::array) || (c == '[' && n.kind != Kind::object)) {
        if (h.depth == kMaxDepth) return false;
        p.open[h.depth++] = Open{h.node, 0, c == '['};
        h.state = c == '{' ? State::first_key : State::first_item;
        return true;
      }
      if (n.kind != Kind::any) return false;
      if (c == 't' || c == 'f' || c == 'n') {
        h.node = JsonSchema::kAnyLiteral;
        return start_value(p, c, forks);
      }
      break;
    case Kind::string:
      break;
    case Kind::number:
      if (c != '-' && !digit(c)) return false;
      break;
  }
  if (c == '"') {
    if (n.kind != Kind::any && n.kind != Kind::string) return false;
    h.key = false;
    h.pair = false;
    h.len = 0;
    h.state = State::string;
    return true;
  }
  if (n.kind == Kind::string) return false;
  if (c == '-') {
    h.state = State::minus;
    return true;
  }
  if (!digit(c)) return false;
  h.state = c == '0' ? State::zero : State::digits;
  return true;
}

bool JsonPrefix::begin_key(Path& p) const {
  Head& h = p.h;
  const Open& top = p.top();
  const SchemaNode& n = node(top.node);
  if (free_keys(n)) {
    h.key = true;
    h.pair = false;
    h.len = 0;
    h.node = JsonSchema::kAny;  // a key's length is not bounded
    h.state = State::string;
    return true;
  }
  if (top.count >= n.properties.size()) return false;
  h.at = top.count;  // every key's text starts with the quote just read
  h.len = 1;
  h.state = State::key_text;
  return true;
}

// The key so far is the first h.len bytes of property h.at's; the next byte picks among
// the properties that may come next and share them.
bool JsonPrefix::key_text(Path& p, char c) const {
  Head& h = p.h;
  Open& top = p.top();
  const SchemaNode& n = node(top.node);
  const std::string& so_far = n.properties[h.at].key;
  for (size_t j = h.at, last = last_key(n, top.count); j <= last; ++j) {
    const std::string& k = n.properties[j].key;
    if (k.size() <= h.len || k[h.len] != c || k.compare(0, h.len, so_far, 0, h.len) != 0) continue;
    h.at = uint32_t(j);
    if (++h.len < k.size()) return true;
    top.count = uint32_t(j + 1);  // the closing quote: this key, and the ones after it next
    h.node = n.properties[j].node;
    h.state = State::colon;
    return true;
  }
  return false;
}

// The texts [h.at, h.end) of the node are sorted and share their first h.len bytes, so those
// that go on with c are a run among them.
bool JsonPrefix::literal(Path& p, char c, std::vector<Path>& forks) const {
  Head& h = p.h;
  const std::vector<std::string>& texts = node(h.node).texts;
  const auto byte = [&](const std::string& t) {
    return t.size() > h.len ? int(static_cast<unsigned char>(t[h.len])) : -1;  // a text read whole sorts first
  };
  const int b = static_cast<unsigned char>(c);
  const auto first = texts.begin() + h.at, last = texts.begin() + h.end;
  const auto lo = std::partition_point(first, last, [&](const std::string& t) { return byte(t) < b; });
  const auto hi = std::partition_point(lo, last, [&](const std::string& t) { return byte(t) <= b; });
  if (lo == hi) {
    // A text read whole that others went on from (1 beside 12): the byte after it ends it.
    if (first->size() != h.len || !end_value(p)) return false;
    return step(p, c, forks);
  }
  h.at = uint32_t(lo - texts.begin());
  h.end = uint32_t(hi - texts.begin());
  ++h.len;
  if (hi - lo == 1 && lo->size() == h.len) return end_value(p);  // the only text left, whole
  return true;
}

bool JsonPrefix::string(Path& p, char c) const {
  Head& h = p.h;
  const SchemaNode& n = node(h.node);
  if (c == '"') {
    if (h.len < n.min || h.pair) return false;
    if (!h.key) return end_value(p);
    h.key = false;
    h.node = member(node(p.top().node));
    h.state = State::colon;
    return true;
  }
  if (static_cast<unsigned char>(c) < 0x20) return false;  // control characters must be escaped
  if (h.pair) {  // a surrogate pair's low half, which the high half counted
    h.state = State::escape;
    return c == '\\';
  }
  if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) {  // a character starts (not a UTF-8 continuation)
    if (h.len >= n.max) return false;
    ++h.len;
    if (c == '\\') h.state = State::escape;
  }
  return true;
}

bool JsonPrefix::end_value(Path& p) const {
  Head& h = p.h;
  if (h.depth == 0) {
    h.state = State::done;
    return true;
  }
  Open& top = p.top();
  if (top.array) ++top.count;
  h.state = State::after;
  return true;
}

bool JsonPrefix::close(Path& p, char c) const {
  Head& h = p.h;
  if (h.depth == 0) return false;
  const Open& top = p.top();
  if (top.array != (c == ']')) return false;
  const SchemaNode& n = node(top.node);
  if (top.array ? top.count < n.min : !free_keys(n) && required_left(n, top.count)) return false;
  h.node = top.node;
  --h.depth;
  return end_value(p);
}

// A number has no end mark: the byte after it ends it, and is then read in its own right.
bool JsonPrefix::end_number(Path& p, char c, std::vector<Path>& forks) const {
  end_value(p);
  return step(p, c, forks);
}

JsonTokens::JsonTokens(std::vector<std::string> pieces)
    : pieces_(std::move(pieces)), plain_(pieces_.size()), cache_(std::make_unique<Cache>()) {
  for (size_t id = 0; id < pieces_.size(); ++id) {
    const std::string& p = pieces_[id];
    const bool plain = !p.empty() && std::none_of(p.begin(), p.end(), [](char c) {
      return c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20;
    });
    const auto starts_character = [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; };
    if (plain) plain_[id] = uint32_t(std::count_if(p.begin(), p.end(), starts_character));
  }
}

void JsonTokens::mask(const JsonPrefix& json, std::span<float> logits) const {
  constexpr float kOut = -std::numeric_limits<float>::infinity();
  std::string key;
  json.state_key(key);
  std::lock_guard<std::mutex> lock(cache_->mutex);
  auto it = cache_->allowed.find(key);
  if (it == cache_->allowed.end()) {
    if (cache_->allowed.size() >= kCachedStates) cache_->allowed.clear();
    it = cache_->allowed.emplace(std::move(key), allowed_ids(json)).first;
  }
  const std::vector<uint64_t>& bits = it->second;  // [ceil(pieces / 64)]
  for (size_t id = 0; id < logits.size(); ++id)
    if (id >= pieces_.size() || !(bits[id / 64] >> (id % 64) & 1)) logits[id] = kOut;
}

std::vector<uint64_t> JsonTokens::allowed_ids(const JsonPrefix& json) const {
  bool first[256];  // whether a text may start with each byte
  for (int b = 0; b < 256; ++b) {
    const char c = char(b);
    first[b] = json.accepts(std::string_view(&c, 1));
  }
  const std::optional<uint32_t> room = json.string_room();
  std::vector<uint64_t> bits((pieces_.size() + 63) / 64);
  for (size_t id = 0; id < pieces_.size(); ++id) {
    const std::string& p = pieces_[id];
    if (p.empty() || !first[static_cast<unsigned char>(p[0])]) continue;
    if (p.size() == 1 || (room && plain_[id] && plain_[id] <= *room) || json.accepts(p))
      bits[id / 64] |= 1ull << (id % 64);
  }
  return bits;
}

}  // namespace lmx::text
