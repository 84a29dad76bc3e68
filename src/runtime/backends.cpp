// The built-in backends. Both serve LocalTextModel; they differ in the device.
#include "core/error.h"
#include "ops/kernels.h"
#include "runtime/text_model.h"

namespace lmx {
namespace {

class DeviceBackend final : public Backend {
 public:
  DeviceBackend(std::string name, Device::Type type, int priority) : name_(std::move(name)), type_(type), priority_(priority) {}
  std::string name() const override { return name_; }
  int priority() const override { return priority_; }
  bool available() const override {
    try {
      detail::kernels_for(Device{type_, 0});
      return true;
    } catch (const Error&) {
      return false;
    }
  }
  std::unique_ptr<TextModel> load_model(const std::filesystem::path& dir, const LoadOptions& o) override {
    Device d{type_, 0};
    if (!o.device.empty()) {
      d = Device::parse(o.device);
      LMX_CHECK(d.type == type_, "backend", "backend '", name_, "' cannot run on device ", d.str());
    }
    return std::make_unique<runtime::LocalTextModel>(dir, o, d, name_);
  }

 private:
  std::string name_;
  Device::Type type_;
  int priority_;
};

}  // namespace

void register_builtin_backends(std::vector<std::unique_ptr<Backend>>& out) {
  out.push_back(std::make_unique<DeviceBackend>("cpu", Device::Type::cpu, 0));
  out.push_back(std::make_unique<DeviceBackend>("cuda", Device::Type::cuda, 10));
}

}  // namespace lmx
