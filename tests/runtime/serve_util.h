// `lmx serve` as a child process and an HTTP client's helpers, for the tests that ask the
// server as OpenAI's clients ask (serve_test.cpp, serve_tools_test.cpp).
#pragma once

#include <httplib.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "lmx/lmx.h"
#include "test_util.h"

extern char** environ;

namespace lmx::test {

namespace fs = std::filesystem;
using nlohmann::json;

inline const fs::path kModel = fs::path(LMX_FIXTURES_DIR) / "models" / "qwen3-f32";

// `lmx serve ARGS --port 0` as a child process, its stderr in a file; ready once it prints
// the port it listens on.
class Served {
 public:
  explicit Served(const std::string& args)
      : log_(fs::temp_directory_path() / ("lmx_serve_" + std::to_string(::getpid()) + ".log")) {
    const std::string cmd =
        std::string("exec '") + LMX_CLI + "' serve " + args + " --port 0 > /dev/null 2> '" + log_.string() + "'";
    const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
    if (posix_spawn(&pid_, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) != 0) pid_ = -1;
    const std::regex listening("listening on http://127\\.0\\.0\\.1:([0-9]+)");
    for (int i = 0; i < 1200 && pid_ > 0 && port_ == 0; ++i) {  // up to 2 minutes (sanitizer builds load slowly)
      std::smatch m;
      const std::string text = read_all(log_);
      if (std::regex_search(text, m, listening))
        port_ = std::stoi(m[1]);
      else
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  ~Served() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    fs::remove(log_);
  }
  int port() const { return port_; }
  // A client of the server that waits up to 2 minutes for a reply.
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120);
    return c;
  }
  std::string log() const { return read_all(log_); }
  // Whether the log has `line` within 20 s: a run's line comes as its batch ends, after
  // the replies of the rows that ended before it.
  bool logged(const std::string& line) const {
    for (int i = 0; i < 200; ++i) {
      if (log().find(line) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  // SIGTERM, as Ctrl-C or a service manager stops it; the exit status.
  int stop() {
    ::kill(pid_, SIGTERM);
    int status = -1;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  fs::path log_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// The served fixture, loaded in this process: the library's own answers to compare with.
inline std::unique_ptr<TextModel> cpu_model(int context_len = 0) {
  LoadOptions lo;
  lo.backend = "cpu";
  lo.context_len = context_len;
  return load_model(kModel, lo);
}

struct Reply {
  int status = 0;
  json body;
};

inline Reply post(httplib::Client& c, const std::string& path, const std::string& body,
           const httplib::Headers& headers = {}) {
  const auto r = c.Post(path.c_str(), headers, body, "application/json");
  if (!r) return {};
  return {r->status, json::parse(r->body, nullptr, false)};
}

// A streamed reply's events, "data: " lines in order; the last must be [DONE]. The body as
// text keeps its keys' order.
inline std::vector<json> events(httplib::Client& c, const std::string& path, const std::string& body) {
  const auto r = c.Post(path.c_str(), body, "application/json");
  EXPECT_TRUE(r && r->status == 200);
  if (!r) return {};
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  std::vector<json> out;
  std::istringstream lines(r->body);
  std::string line, last;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    EXPECT_EQ(line.rfind("data: ", 0), 0u) << line;
    last = line.substr(6);
    if (last != "[DONE]") out.push_back(json::parse(last));
  }
  EXPECT_EQ(last, "[DONE]");
  return out;
}
inline std::vector<json> events(httplib::Client& c, const std::string& path, const json& body) {
  return events(c, path, body.dump());
}

}  // namespace lmx::test
