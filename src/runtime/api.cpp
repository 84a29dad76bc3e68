// The public API's free functions: streams, the backend registry, memory control and
// model discovery.
#include <algorithm>
#include <mutex>

#include "core/allocator.h"
#include "core/error.h"
#include "io/config.h"
#include "lmx/lmx.h"

namespace lmx {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "lmx"; }
  std::string message(int c) const override {
    switch (Errc(c)) {
      case Errc::cancelled: return "generation was cancelled";
      case Errc::out_of_memory: return "out of memory";
      case Errc::invalid_input: return "invalid input";
      case Errc::failed: return "generation failed";
    }
    return "unknown error";
  }
};

struct Registry {
  std::mutex mu;
  std::vector<std::unique_ptr<Backend>> backends;
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

// Defined by the runtime for the built-in backends (cpu always; cuda when built).
void register_builtin_backends(std::vector<std::unique_ptr<Backend>>& out);

const std::error_category& error_category() {
  static Category c;
  return c;
}

Stream::~Stream() {
  if (src_ && !done_) src_->cancel();
}

std::optional<Token> Stream::next() {
  if (done_ || !src_) return std::nullopt;
  std::optional<Token> t = src_->next();
  if (!t) done_ = true;
  return t;
}

std::string Stream::text() {
  std::string out;
  while (auto t = next()) out += t->text;
  return out;
}

Stream::iterator& Stream::iterator::operator++() {
  if (!s_) return *this;
  if (std::optional<Token> t = s_->next()) cur_ = std::move(*t);
  else s_ = nullptr;
  return *this;
}

static void ensure_builtins(Registry& r) {
  static std::once_flag once;
  std::call_once(once, [&] {
    std::vector<std::unique_ptr<Backend>> b;
    register_builtin_backends(b);
    for (auto& x : b) r.backends.push_back(std::move(x));
  });
}

void register_backend(std::unique_ptr<Backend> backend) {
  Registry& r = registry();
  ensure_builtins(r);
  std::lock_guard lock(r.mu);
  LMX_CHECK(backend != nullptr, "backend", "register_backend(nullptr)");
  for (auto& b : r.backends)
    if (b->name() == backend->name()) {
      b = std::move(backend);  // a later registration replaces the earlier one
      return;
    }
  r.backends.push_back(std::move(backend));
}

Backend* get_backend(std::string_view name) {
  Registry& r = registry();
  ensure_builtins(r);
  std::lock_guard lock(r.mu);
  for (auto& b : r.backends)
    if (b->name() == name) return b.get();
  return nullptr;
}

std::vector<std::string> list_backends() {
  Registry& r = registry();
  ensure_builtins(r);
  std::lock_guard lock(r.mu);
  std::vector<std::string> out;
  for (auto& b : r.backends) out.push_back(b->name());
  return out;
}

static Backend* best_backend() {
  Registry& r = registry();
  ensure_builtins(r);
  std::lock_guard lock(r.mu);
  Backend* best = nullptr;
  for (auto& b : r.backends)
    if (b->available() && (!best || b->priority() > best->priority())) best = b.get();
  LMX_CHECK(best != nullptr, "backend", "no backend is available");
  return best;
}

std::unique_ptr<TextModel> load_model(const std::filesystem::path& dir, const LoadOptions& options) {
  Backend* b = options.backend.empty() ? best_backend() : get_backend(options.backend);
  if (!b) {
    std::string names;
    for (const auto& n : list_backends()) names += (names.empty() ? "" : ", ") + n;
    fail("backend", "unknown backend '", options.backend, "'; available: ", names);
  }
  LMX_CHECK(b->available(), "backend", "backend '", b->name(), "' is not available on this machine");
  return b->load_model(dir, options);
}

std::string default_device() {
  const Backend* cuda = get_backend("cuda");
  return cuda && cuda->available() ? "cuda:0" : "cpu";
}

static Allocator& allocator_of(std::string_view device) {
  if (!device.empty()) return allocator_for(Device::parse(device));
  const Backend* b = best_backend();
  return allocator_for(b->name() == "cuda" ? Device::cuda(0) : Device::cpu());
}
void set_cache_limit(size_t bytes, std::string_view device) { allocator_of(device).set_cache_limit(bytes); }
void set_memory_limit(size_t bytes, std::string_view device) { allocator_of(device).set_memory_limit(bytes); }
size_t active_memory(std::string_view device) { return allocator_of(device).stats().active; }
size_t peak_memory(std::string_view device) { return allocator_of(device).stats().peak; }
size_t cache_memory(std::string_view device) { return allocator_of(device).stats().cached; }
void reset_peak_memory(std::string_view device) { allocator_of(device).reset_peak(); }
void clear_cache(std::string_view device) { allocator_of(device).clear_cache(); }

std::vector<DiscoveredModel> discover(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  LMX_CHECK(fs::is_directory(dir), "discover", dir.string(), " is not a directory");
  std::vector<DiscoveredModel> out;
  auto inspect = [&](const fs::path& d) {
    std::error_code ec;
    const bool has_config = fs::exists(d / "config.json", ec);
    int files = 0;
    uint64_t bytes = 0;
    for (const auto& e : fs::directory_iterator(d, ec))
      if (e.is_regular_file(ec) && e.path().extension() == ".safetensors") ++files, bytes += e.file_size(ec);
    if (!has_config && files == 0) return;
    DiscoveredModel m;
    m.path = d;
    m.num_files = files;
    m.total_bytes = bytes;
    m.has_tokenizer = fs::exists(d / "tokenizer.json", ec);
    if (!has_config) {
      m.error = "no config.json next to the safetensors files";
    } else if (files == 0) {
      m.error = "config.json but no *.safetensors weights";
    }
    if (has_config) {
      try {
        const io::ModelConfig c = io::load_model_config(d);
        m.model_type = c.model_type;
        if (c.quantization) {
          m.quant_bits = int(c.quantization->base.bits);
          m.quant_group_size = int(c.quantization->base.group_size);
        }
      } catch (const Error& e) {
        m.error = e.what();
      }
    }
    out.push_back(std::move(m));
  };
  // The folder itself and two levels below it, as model collections are usually laid out
  // (models/<org>/<name>).
  inspect(dir);
  std::error_code ec;
  for (const auto& a : fs::directory_iterator(dir, ec)) {
    if (!a.is_directory(ec)) continue;
    inspect(a.path());
    for (const auto& b : fs::directory_iterator(a.path(), ec))
      if (b.is_directory(ec)) inspect(b.path());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
  return out;
}

}  // namespace lmx
