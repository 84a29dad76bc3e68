// `lmx serve MODEL`: the model behind an OpenAI-compatible HTTP API (openai.h), so that
// OpenAI's clients, LangChain, curl and the like can use it: /v1/chat/completions and
// /v1/completions, whole or streamed as server-sent events, /v1/models and /health.
//
// One model runs one request at a time (lmx.h), so requests take turns on a mutex. A
// stream's tokens are made on the thread that writes them: cpp-httplib calls a chunked
// response's provider on the thread that ran its handler, which keeps the lock and the
// stream. A client that goes away ends its generation at the next token.
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <stop_token>
#include <thread>

#include "cli_util.h"
#include "commands.h"
#include "core/error.h"
#include "openai.h"

namespace lmx::cli {
namespace {

using nlohmann::json;

// JSON text; a string that is not UTF-8 (a model's text is, but a caller's echoed field may not
// be) gets U+FFFD rather than an exception.
std::string text_of(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(text_of(body), "application/json");
}

class Service {
 public:
  Service(TextModel& model, std::string name, GenerateOptions defaults)
      : model_(model), name_(std::move(name)), defaults_(std::move(defaults)) {}

  void mount(httplib::Server& svr) {
    svr.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, {{"status", "ok"}});
    });
    svr.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      const json model = {{"id", name_}, {"object", "model"}, {"created", started_}, {"owned_by", "lmx"}};
      send_json(res, 200, {{"object", "list"}, {"data", json::array({model})}});
    });
    svr.Post("/v1/chat/completions",
             [this](const httplib::Request& req, httplib::Response& res) { answer(req, res, true); });
    svr.Post("/v1/completions",
             [this](const httplib::Request& req, httplib::Response& res) { answer(req, res, false); });
  }

  // Ends the generation under way within a decode step, and any later one at once: the
  // server is stopping, and its threads are joined only once their requests end.
  void stop_generating() { stopping_.request_stop(); }

 private:
  // A generation under the model's lock, its first token already pulled (so that a prompt
  // the model refuses is an HTTP error, not an error inside a stream that began well).
  struct Run {
    std::unique_lock<std::mutex> lock;
    openai::Request request;
    std::optional<Stream> stream;
    std::optional<Token> first;
  };

  openai::Envelope envelope(bool chat) {
    return {std::string(chat ? "chatcmpl-" : "cmpl-") + std::to_string(started_) + "-" + std::to_string(++count_),
            name_, now()};
  }
  static int64_t now() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }

  // The model's reason for ending a stream early, as the HTTP error it is; none for a normal
  // end or a client that left (cancelled).
  std::optional<openai::ApiError> stream_error() const {
    const std::error_code e = model_.err();
    if (!e || e == Errc::cancelled) return std::nullopt;
    if (e == Errc::invalid_input) return openai::ApiError{400, model_.err_message()};
    if (e == Errc::out_of_memory) return openai::ApiError{503, model_.err_message(), "server_error"};
    return openai::ApiError{500, model_.err_message(), "server_error"};
  }

  std::shared_ptr<Run> start(openai::Request request) {
    auto run = std::make_shared<Run>();
    run->lock = std::unique_lock<std::mutex>(mutex_);
    if (stopping_.stop_requested()) throw openai::ApiError{503, "the server is stopping", "server_error"};
    run->request = std::move(request);
    const openai::Request& r = run->request;
    try {
      const std::stop_token stop = stopping_.get_token();
      if (r.chat)
        run->stream.emplace(model_.chat(r.messages, r.options, stop));
      else if (!r.prompt_ids.empty())
        run->stream.emplace(model_.generate_ids(r.prompt_ids, r.options, stop));
      else
        run->stream.emplace(model_.generate(r.prompt, r.options, stop));
      run->first = run->stream->next();
    } catch (const Error& e) {  // the model's checks of the request: a bad template variable, a long prompt
      throw openai::ApiError{400, e.what()};
    }
    if (!run->first)
      if (auto err = stream_error()) throw *err;
    return run;
  }

  void answer(const httplib::Request& req, httplib::Response& res, bool chat) {
    try {
      auto run = start(openai::parse_request(req.body, chat, defaults_));
      const openai::Envelope env = envelope(chat);
      if (run->request.stream) {
        res.set_chunked_content_provider("text/event-stream", [this, run, env](size_t, httplib::DataSink& sink) {
          stream(*run, env, sink);
          return true;
        });
        return;
      }
      std::vector<Token> tokens;
      if (run->first) {
        tokens.push_back(std::move(*run->first));
        for (const Token& t : *run->stream) tokens.push_back(t);
      }
      std::string text;
      for (const Token& t : tokens) text += t.text;
      if (auto err = stream_error()) throw *err;
      const GenerateMetrics m = model_.metrics();
      run->stream.reset();
      json scores = nullptr;
      int64_t offset = 0;
      const int top = run->request.options.logprobs;
      if (run->request.echo) {  // the prompt first: its text, and its tokens' scores
        const openai::Request& r = run->request;
        const std::vector<int32_t> ids = r.prompt_ids.empty() ? model_.tokenize(r.prompt) : r.prompt_ids;
        text = (r.prompt_ids.empty() ? r.prompt : model_.detokenize(ids)) + text;
        if (top >= 0) scores = openai::logprobs(false, echoed(ids, top), piece_, offset);
      }
      if (top >= 0) {
        const json generated = openai::logprobs(chat, listed(tokens, m), piece_, offset);
        if (scores.is_null()) {
          scores = generated;
        } else {  // after the prompt's, list by list
          for (const auto& [key, values] : generated.items())
            scores[key].insert(scores[key].end(), values.begin(), values.end());
        }
      }
      send_json(res, 200, openai::completion(env, chat, text, m, scores));
    } catch (const openai::ApiError& e) {
      send_json(res, e.status, openai::error_body(e));
    } catch (const std::exception& e) {
      send_json(res, 500, openai::error_body({500, std::string("internal error: ") + e.what(), "server_error"}));
    }
  }

  // The events of one streamed reply: the role (chat), a delta per piece of text, the
  // finish reason, the usage where asked for, then [DONE]. An error after the first event
  // is sent as an event of its own with OpenAI's error object.
  void stream(Run& run, const openai::Envelope& env, httplib::DataSink& sink) {
    const bool chat = run.request.chat;
    bool open = true;
    auto send = [&](const json& event) {
      const std::string line = "data: " + text_of(event) + "\n\n";
      open = open && sink.write(line.data(), line.size());
    };
    // With logprobs, a token whose text is held back (part of a character, or of a possible
    // stop string) has its scores sent with the next text.
    const bool scoring = run.request.options.logprobs >= 0;
    std::vector<Token> pending;
    int64_t offset = 0;
    auto text_event = [&](const std::string& text) {
      const json scores = scoring ? openai::logprobs(chat, pending, piece_, offset) : json(nullptr);
      pending.clear();
      send(openai::chunk(env, chat, chat ? json{{"content", text}} : json(text), "", scores));
    };
    auto piece = [&](const Token& t) {
      if (scoring) pending.push_back(t);
      if (!t.text.empty()) text_event(t.text);
    };
    try {
      if (chat) send(openai::chunk(env, chat, {{"role", "assistant"}, {"content", ""}}, ""));
      if (run.first) {
        piece(*run.first);
        while (open) {
          const std::optional<Token> t = run.stream->next();
          if (!t) break;
          piece(*t);
        }
      }
      run.stream.reset();  // a client that left cancels here
      if (auto err = stream_error()) {
        send(openai::error_body(*err));
      } else if (open) {
        const GenerateMetrics m = model_.metrics();
        if (scoring && !listed(pending, m).empty()) {  // the last tokens made no text
          pending.resize(listed(pending, m).size());
          text_event("");
        }
        send(openai::chunk(env, chat, chat ? json::object() : json(""), openai::finish_reason(m.finish_reason)));
        if (run.request.include_usage) {
          json last = openai::chunk(env, chat, json::object(), "");
          last["choices"] = json::array();
          last["usage"] = openai::usage(m);
          send(last);
        }
      }
    } catch (const std::exception& e) {
      send(openai::error_body({500, std::string("internal error: ") + e.what(), "server_error"}));
    }
    if (open) sink.write("data: [DONE]\n\n", 14);
    sink.done();
    run.lock.unlock();
  }

  // The tokens whose text a reply carries, for their scores: all but an end-of-sequence or
  // stop token that ended the generation (its text is left out of the reply).
  static std::span<const Token> listed(std::span<const Token> tokens, const GenerateMetrics& m) {
    const bool control_last = m.finish_reason == "eos" || m.finish_reason == "stop_token";
    return control_last && !tokens.empty() ? tokens.first(tokens.size() - 1) : tokens;
  }

  // An echoed prompt's tokens with their scores (the model's, after the generation has ended):
  // the first has none (NaN).
  std::vector<Token> echoed(const std::vector<int32_t>& ids, int top) {
    std::vector<Token> out(1);
    out[0].id = ids.at(0);
    out[0].logprob = std::numeric_limits<float>::quiet_NaN();
    try {
      for (Token& t : model_.score_ids(ids, top)) out.push_back(std::move(t));
    } catch (const Error& e) {
      throw openai::ApiError{400, e.what()};
    }
    return out;
  }

  TextModel& model_;
  // A token's own text, for its scores.
  const std::function<std::string(int32_t)> piece_ = [this](int32_t id) {
    return model_.detokenize({&id, 1}, false);
  };
  const std::string name_;
  const GenerateOptions defaults_;
  const int64_t started_ = now();
  std::mutex mutex_;
  std::atomic<uint64_t> count_{0};
  std::stop_source stopping_;
};

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");

struct ServeArgs {
  std::string host = "127.0.0.1", name, api_key;
  int port = 8080;
};

void run_serve(const ModelArgs& margs, const GenerateArgs& gen, ServeArgs args) {
  auto model = margs.load();
  if (args.name.empty()) {  // the folder's name, "/models/Qwen3-0.6B/" included
    std::filesystem::path dir = std::filesystem::path(margs.dir).lexically_normal();
    if (dir.filename().empty()) dir = dir.parent_path();
    args.name = dir.filename().string();
  }
  Service service(*model, args.name, gen.options());
  httplib::Server svr;
  service.mount(svr);
  if (!args.api_key.empty())
    svr.set_pre_routing_handler([key = "Bearer " + args.api_key](const httplib::Request& req, httplib::Response& res) {
      if (req.path == "/health" || req.get_header_value("Authorization") == key)
        return httplib::Server::HandlerResponse::Unhandled;
      send_json(res, 401,
                openai::error_body({401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                                    "authentication_error"}));
      return httplib::Server::HandlerResponse::Handled;
    });
  svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler's own error reply
    std::string what = "HTTP status " + std::to_string(res.status);
    if (res.status == 404)
      what = "no such endpoint: " + req.method + " " + req.path +
             " (lmx serve has /v1/chat/completions, /v1/completions, /v1/models and /health)";
    if (res.status == 413)  // cpp-httplib's cap on form bodies, which curl -d sends by default
      what = "the request body is too large for its Content-Type; send JSON with 'Content-Type: application/json'";
    send_json(res, res.status, openai::error_body({res.status, what}));
  });
  svr.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    std::fprintf(stderr, "%s %s %d\n", req.method.c_str(), req.path.c_str(), res.status);
  });

  const int port = args.port == 0 ? svr.bind_to_any_port(args.host) : svr.bind_to_port(args.host, args.port) ? args.port
                                                                                                               : -1;
  LMX_CHECK(port > 0, "serve", "cannot listen on ", args.host, ":", args.port,
            " (is the port in use, or the address not this machine's?); pick another with --port");
  const ModelInfo info = model->info();
  std::fprintf(stderr,
               "lmx serve: %s (%s, %s on %s) listening on http://%s:%d\n"
               "  POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health; Ctrl-C stops\n",
               args.name.c_str(), info.model_type.c_str(), info.dtype.c_str(), info.device.c_str(),
               args.host.c_str(), port);
  // SIGINT and SIGTERM set a flag (all a handler may safely do), and a thread that watches it
  // stops the server; blocking the signals instead would miss the threads the libraries
  // started before main.
  g_stop = false;
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_stop = true; };
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  std::atomic<bool> listening_ended{false};
  std::thread stopper([&] {
    while (!g_stop && !listening_ended) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    service.stop_generating();
    svr.stop();
  });
  const bool served = svr.listen_after_bind();
  listening_ended = true;
  stopper.join();
  LMX_CHECK(served, "serve", "the server on ", args.host, ":", port, " stopped with an error");
  std::fprintf(stderr, "lmx serve: stopped\n");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "Serve a model over an OpenAI-compatible HTTP API");
  auto model = std::make_shared<ModelArgs>();
  auto gen = std::make_shared<GenerateArgs>();
  auto args = std::make_shared<ServeArgs>();
  model->add(cmd);
  gen->add(cmd, /*chat=*/true);
  cmd->add_option("--host", args->host, "Address to listen on (0.0.0.0: every interface)")->capture_default_str();
  cmd->add_option("--port", args->port, "Port to listen on (0: any free port, printed at start)")
      ->capture_default_str();
  cmd->add_option("--model-name", args->name, "The model's id in the API (default: the folder's name)");
  cmd->add_option("--api-key", args->api_key, "Answer only requests with 'Authorization: Bearer KEY'");
  cmd->footer(
      "The generation flags above are the defaults of every request; a request's own fields\n"
      "(max_tokens, temperature, top_p, top_k, min_p, seed, stop, presence_penalty,\n"
      "frequency_penalty, repetition_penalty, logit_bias, chat_template_kwargs) override them.\n"
      "A completion's prompt may be text or a list of token ids. \"stream\": true sends\n"
      "server-sent events as OpenAI's API does, with the usage last where stream_options asks.\n"
      "Log-probabilities: \"logprobs\": true and \"top_logprobs\": N (chat), \"logprobs\": N\n"
      "(completions), N up to 20; the model's own, before penalties and temperature. On a GPU\n"
      "they slow decoding, since each step's logits come back to the host.\n"
      "A completion's \"echo\": true puts the prompt before the text (and with logprobs, its\n"
      "tokens' scores first; max_tokens 0 scores the prompt alone), as evaluation harnesses ask.\n"
      "Requests take turns: one generation runs at a time. Tools and n > 1 are refused with\n"
      "a 400.\n\n"
      "Examples:\n"
      "  lmx serve /models/Qwen3-0.6B --port 8080 --temperature 0.7 --max-tokens 1024\n"
      "  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
      "    -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}], \"max_tokens\": 64}'\n"
      "  lmx serve /models/Llama-3.2-1B --adapter adapters --host 0.0.0.0 --api-key secret");
  cmd->callback([=] { run_serve(*model, *gen, *args); });
}

}  // namespace lmx::cli
