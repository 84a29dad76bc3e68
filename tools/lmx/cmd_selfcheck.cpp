// `lmx selfcheck`: a quick end-to-end check of this build on this machine.
#include <cmath>
#include <cstdio>

#include "commands.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/fast.h"
#include "ops/kernels.h"

namespace lmx::cli {
namespace {

// Largest |a - b| over two arrays of the same shape.
float max_diff(const Array& a, const Array& b) {
  const std::vector<float> x = to_floats(a), y = to_floats(b);
  float m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

int run_selfcheck(const std::string& device_name) {
  const Device dev = Device::parse(device_name);
  std::printf("lmx %s selfcheck on %s (%d CPU threads)\n", LMX_VERSION, dev.str().c_str(), num_threads());
  int failures = 0;
  auto check = [&](const char* what, float err, float tol) {
    const bool ok = err <= tol;
    failures += !ok;
    std::printf("  %-44s %s (error %.3g, tolerance %.3g)\n", what, ok ? "ok" : "FAILED", double(err), double(tol));
  };
  const Array a = random_normal({64, 96}, 1, 0, 1, Dtype::f32, dev);
  const Array w = random_normal({80, 96}, 2, 0, 1, Dtype::f32, dev);
  // matmul against the same product in bf16 storage (checks both GEMM paths agree).
  const Array y32 = matmul(a, swapaxes(w, 0, 1));
  const Array y16 = matmul(astype(a, Dtype::bf16), swapaxes(astype(w, Dtype::bf16), 0, 1));
  check("matmul f32 vs bf16", max_diff(y32, y16) / 10.0f, 0.5f);
  const Array s = sum(softmax(a, -1), {-1});
  check("softmax rows sum to 1", max_diff(s, ones({64}, Dtype::f32, dev)), 1e-5f);
  const Array g = ones({96}, Dtype::f32, dev);
  check("rms_norm vs composed fallback",
        max_diff(fast::rms_norm(a, g, 1e-6f), fast::reference::rms_norm(a, g, 1e-6f, fast::RmsNormStyle::llama)),
        1e-5f);
  const Array q = random_normal({1, 4, 9, 16}, 3, 0, 1, Dtype::f32, dev);
  const Array k = random_normal({1, 2, 9, 16}, 4, 0, 1, Dtype::f32, dev);
  check("attention vs composed fallback",
        max_diff(fast::scaled_dot_product_attention(q, k, k, 0.25f),
                 fast::reference::scaled_dot_product_attention(q, k, k, 0.25f, {})),
        1e-5f);
  const MemoryStats m = memory_stats(dev);
  std::printf("  memory: %zu bytes active, %zu peak, %zu cached\n", m.active, m.peak, m.cached);
  std::printf("%s\n", failures ? "selfcheck FAILED" : "selfcheck passed");
  return failures ? 1 : 0;
}

}  // namespace

void add_selfcheck_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("selfcheck", "Check that this build computes correctly on this machine");
  cmd->footer("Example:\n  lmx selfcheck\n  lmx selfcheck --device cuda");
  auto device = std::make_shared<std::string>("cpu");
  cmd->add_option("--device", *device, "cpu, cuda or cuda:N");
  cmd->callback([device] {
    const int rc = run_selfcheck(*device);
    if (rc) throw Error("[selfcheck] some checks failed; see above");
  });
}

}  // namespace lmx::cli
