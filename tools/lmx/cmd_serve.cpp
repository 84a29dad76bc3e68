// `lmx serve MODEL`: the model behind an OpenAI-compatible HTTP API (openai.h), so that
// OpenAI's clients, LangChain, curl and the like can use it: /v1/chat/completions and
// /v1/completions, whole or streamed as server-sent events, /v1/models and /health.
//
// Requests go to the scheduler (serve_scheduler.h), whose thread alone uses the model: it
// runs each request alone or several together in one batch, and hands their tokens to the
// handlers' threads, which write the replies. A client that goes away mid-stream ends its
// generation within a decode step.
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
#include <utility>

#include "cli_util.h"
#include "commands.h"
#include "core/error.h"
#include "openai.h"
#include "serve_scheduler.h"

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
  Service(TextModel& model, std::string name, GenerateOptions defaults, int max_batch, int batch_wait_ms)
      : model_(model),
        name_(std::move(name)),
        defaults_(std::move(defaults)),
        scheduler_(model, max_batch, std::chrono::milliseconds(batch_wait_ms)) {}

  void mount(httplib::Server& svr) {
    svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const Scheduler::Load load = scheduler_.load();
      send_json(res, 200, {{"status", "ok"}, {"running", load.running}, {"queued", load.queued}});
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

  // Ends the generations under way within a decode step, and refuses the queued and later
  // ones: the server is stopping, and its threads are joined only once their requests end.
  void stop_generating() { scheduler_.stop(); }

 private:
  openai::Envelope envelope(bool chat) {
    return {std::string(chat ? "chatcmpl-" : "cmpl-") + std::to_string(started_) + "-" + std::to_string(++count_),
            name_, now()};
  }
  static int64_t now() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }

  void answer(const httplib::Request& req, httplib::Response& res, bool chat) {
    try {
      // A request with a list of prompts is a job a prompt: they queue together, and the
      // scheduler runs them as one batch where they may share one.
      std::vector<openai::Request> requests = openai::parse_request(req.body, chat, defaults_);
      if (requests[0].tools && tool_format_.empty())
        throw openai::ApiError{400,
                               "this model's chat template does not ask for tool calls in a form lmx serve reads "
                               "(hermes' <tool_call> or Llama 3.x's JSON); send the request without \"tools\"",
                               "invalid_request_error", "tools"};
      for (openai::Request& r : requests) openai::begin_call(r, tool_format_);
      const std::vector<std::shared_ptr<Job>> jobs = scheduler_.submit(std::move(requests));
      const openai::Envelope env = envelope(chat);
      if (jobs.size() == 1 && jobs[0]->request.stream) {
        const std::shared_ptr<Job> job = jobs[0];
        // The first tokens (or the end) before the reply starts, so that a prompt the model
        // refuses is an HTTP error, not an error inside a stream that began well.
        bool done = false;
        std::vector<Token> tokens = job->wait(done);
        if (tokens.empty() && job->error) throw *job->error;
        res.set_chunked_content_provider(
            "text/event-stream",
            [this, job, env, first = std::move(tokens), done](size_t, httplib::DataSink& sink) {
              stream(*job, env, first, done, sink);
              return true;
            },
            // A client gone before its stream began (the provider never ran) ends the generation too.
            [job](bool success) {
              if (!success) job->leave();
            });
        return;
      }
      std::vector<openai::Choice> choices;
      for (const auto& job : jobs) {
        try {
          choices.push_back(whole(*job));
        } catch (...) {  // one prompt failed: the reply is its error, and the others end
          for (const auto& other : jobs) other->leave();
          throw;
        }
      }
      send_json(res, 200, openai::completion(env, chat, choices));
    } catch (const openai::ApiError& e) {
      send_json(res, e.status, openai::error_body(e));
    } catch (const std::exception& e) {
      send_json(res, 500, openai::error_body({500, std::string("internal error: ") + e.what(), "server_error"}));
    }
  }

  // A job's whole reply: its text (after the prompt's, with echo) and scores, once it ends.
  // Throws its error.
  openai::Choice whole(Job& job) {
    std::vector<Token> tokens;
    for (bool done = false; !done;)
      for (Token& t : job.wait(done)) tokens.push_back(std::move(t));
    if (job.error) throw *job.error;
    const bool chat = job.request.chat;
    openai::Choice c{job.echo_text, job.metrics};
    for (const Token& t : tokens) c.text += t.text;
    if (job.request.tools) {  // read after the start the reply was given, if any
      ToolCallReply reply = parse_tool_calls(job.request.reply_start + c.text, tool_format_);
      c.text = std::move(reply.content);
      c.calls = named(std::move(reply.calls), job.request);
    }
    int64_t offset = 0;
    if (job.request.options.logprobs >= 0) {
      if (job.request.echo) c.scores = openai::logprobs(false, job.echoed, piece_, offset);
      const json generated = openai::logprobs(chat, listed(tokens, job.metrics, chat), piece_, offset);
      if (c.scores.is_null()) {
        c.scores = generated;
      } else {  // after the prompt's, list by list
        for (const auto& [key, values] : generated.items())
          c.scores[key].insert(c.scores[key].end(), values.begin(), values.end());
      }
    }
    return c;
  }

  // The events of one streamed reply: the role (chat), a delta per piece of text, the
  // finish reason, the usage where asked for, then [DONE]. An error after the first event
  // is sent as an event of its own with OpenAI's error object. A client that goes away
  // ends its generation (Job::leave).
  void stream(Job& job, const openai::Envelope& env, const std::vector<Token>& first, bool done,
              httplib::DataSink& sink) {
    const bool chat = job.request.chat;
    bool open = true;
    auto send = [&](const json& event) {
      const std::string line = "data: " + text_of(event) + "\n\n";
      open = open && sink.write(line.data(), line.size());
    };
    // With logprobs, a token whose text is held back (part of a character, or of a possible
    // stop string or tool call) has its scores sent with the next text.
    const bool scoring = job.request.options.logprobs >= 0;
    std::vector<Token> pending;
    int64_t offset = 0;
    auto text_event = [&](const std::string& text) {
      const json scores = scoring ? openai::logprobs(chat, pending, piece_, offset) : json(nullptr);
      pending.clear();
      send(openai::chunk(env, chat, chat ? json{{"content", text}} : json(text), "", scores));
    };
    // With tools, the reply so far, and how much of it went out as content: what may begin
    // a call waits for the end, where the calls are read.
    const bool tools = job.request.tools;
    std::string reply = job.request.reply_start;
    size_t sent = 0;
    auto piece = [&](const Token& t) {
      if (scoring) pending.push_back(t);
      if (!tools) {
        if (!t.text.empty()) text_event(t.text);
        return;
      }
      reply += t.text;
      const size_t free = tool_call_free_prefix(reply, tool_format_);
      if (free > sent) text_event(reply.substr(std::exchange(sent, free), free - sent));
    };
    if (chat) send(openai::chunk(env, chat, {{"role", "assistant"}, {"content", ""}}, ""));
    for (const Token& t : first) piece(t);
    while (!done && open)
      for (const Token& t : job.wait(done)) piece(t);
    if (!open) {
      job.leave();
      while (!done) job.wait(done);  // the generation ends within a step
    }
    if (job.error) {
      send(openai::error_body(*job.error));
    } else if (open) {
      const GenerateMetrics& m = job.metrics;
      std::vector<ToolCall> calls;
      if (tools) {  // the content held back, then the calls whole
        ToolCallReply read = parse_tool_calls(reply, tool_format_);
        if (read.content.size() > sent) text_event(read.content.substr(sent));
        calls = named(std::move(read.calls), job.request);
      }
      if (scoring && !listed(pending, m, chat).empty()) {  // the last tokens made no text
        pending.resize(listed(pending, m, chat).size());
        text_event("");
      }
      if (!calls.empty()) send(openai::chunk(env, chat, {{"tool_calls", openai::tool_calls(calls, true)}}, ""));
      const std::string why = calls.empty() ? openai::finish_reason(m.finish_reason) : "tool_calls";
      send(openai::chunk(env, chat, chat ? json::object() : json(""), why));
      if (job.request.include_usage) {
        json last = openai::chunk(env, chat, json::object(), "");
        last["choices"] = json::array();
        last["usage"] = openai::usage(m);
        send(last);
      }
    }
    if (open) sink.write("data: [DONE]\n\n", 14);
    sink.done();
  }

  // A reply's calls with their new ids; the first alone where the request asked for one at a time.
  static std::vector<ToolCall> named(std::vector<ToolCall> calls, const openai::Request& r) {
    if (!r.parallel_tool_calls && calls.size() > 1) calls.resize(1);
    for (ToolCall& c : calls) c.id = openai::call_id();
    return calls;
  }

  // The tokens whose scores a reply lists. Completions list every generated token, as vLLM
  // does, so that an echoed prompt's scores and the generation's line up with the usage's
  // counts: harnesses slice them by count (lm-eval drops the last entry, its one generated
  // token, whatever it is). Chat lists the tokens whose text the content carries: all but
  // an end-of-sequence or stop token that ended the generation.
  static std::span<const Token> listed(std::span<const Token> tokens, const GenerateMetrics& m, bool chat) {
    const bool control_last = m.finish_reason == "eos" || m.finish_reason == "stop_token";
    return chat && control_last && !tokens.empty() ? tokens.first(tokens.size() - 1) : tokens;
  }

  TextModel& model_;
  // A token's own text, for its scores. Called on the handlers' threads while the scheduler's
  // runs the model: detokenizing only reads the tokenizer, whose const methods are
  // thread-safe (text/tokenizer.h).
  const std::function<std::string(int32_t)> piece_ = [this](int32_t id) {
    return model_.detokenize({&id, 1}, false);
  };
  const std::string name_;
  const std::string tool_format_ = model_.info().tool_call_format;  // how replies to "tools" hold their calls
  const GenerateOptions defaults_;
  const int64_t started_ = now();
  std::atomic<uint64_t> count_{0};
  Scheduler scheduler_;
};

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");

struct ServeArgs {
  std::string host = "127.0.0.1", name, api_key;
  int port = 8080;
  int max_batch = 16;
  int batch_wait_ms = 0;
};

void run_serve(const ModelArgs& margs, const GenerateArgs& gen, ServeArgs args) {
  const GenerateOptions defaults = gen.options();  // its errors before the model loads
  auto model = margs.load();
  if (args.name.empty()) {  // the folder's name, "/models/Qwen3-0.6B/" included
    std::filesystem::path dir = std::filesystem::path(margs.dir).lexically_normal();
    if (dir.filename().empty()) dir = dir.parent_path();
    args.name = dir.filename().string();
  }
  Service service(*model, args.name, defaults, args.max_batch, args.batch_wait_ms);
  httplib::Server svr;
  // A thread a connection: enough for a full batch to wait on its tokens, and a few more.
  svr.new_task_queue = [threads = size_t(std::max(8, args.max_batch + 4))] { return new httplib::ThreadPool(threads); };
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
  cmd->add_option("--max-batch", args->max_batch,
                  "Most requests decoded together in one batch (1: one at a time, each with the prompt cache)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--batch-wait", args->batch_wait_ms,
                  "Milliseconds a request that finds the model idle waits for others to batch with "
                  "(0: none; a few help many clients that start together)")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000));
  cmd->footer(
      "The generation flags above are the defaults of every request; a request's own fields\n"
      "(max_tokens, temperature, top_p, top_k, min_p, seed, stop, presence_penalty,\n"
      "frequency_penalty, repetition_penalty, logit_bias, chat_template_kwargs) override them.\n"
      "A completion's prompt may be text, a list of token ids, or a list of either (a choice\n"
      "each, decoded together). \"stream\": true sends server-sent events as OpenAI's API\n"
      "does, with the usage last where stream_options asks (one prompt a streamed request).\n"
      "Log-probabilities: \"logprobs\": true and \"top_logprobs\": N (chat), \"logprobs\": N\n"
      "(completions), N up to 20; the model's own, before penalties and temperature. On a GPU\n"
      "scored requests run the fused step a token at a time (about 0.6-0.75 of the unscored\n"
      "speed).\n"
      "A completion's \"echo\": true puts the prompt before the text (and with logprobs, its\n"
      "tokens' scores first; max_tokens 0 scores the prompt alone), as evaluation harnesses ask.\n"
      "Requests that draw alike (the same temperature, top-k, top-p, min-p, penalties and logit\n"
      "bias) are decoded together, up to --max-batch, those with logprobs apart from those\n"
      "without. The batch is continuous: a request that comes while one decodes joins it at\n"
      "the next step (its prompt prefilled meanwhile) and is answered as soon as it ends; one\n"
      "that draws otherwise waits for the batch to end, and later requests wait behind it.\n"
      "With --max-batch 1 each request runs alone, with the prompt cache and the one-sequence\n"
      "step. --batch-wait lets a request that finds the model idle wait for others. Prompts to\n"
      "score (echo, max_tokens 0) are scored together whatever their options. Completions'\n"
      "logprobs list every generated token (an end-of-sequence too), so that echoed scores\n"
      "line up with the usage as harnesses such as lm-eval's local-completions read them.\n"
      "Chat takes \"tools\" where the model's template asks for calls as Qwen's <tool_call> or\n"
      "Llama 3.x's JSON (tool_choice \"auto\", \"none\", \"required\" or a named function): the\n"
      "template lists the tools, and the calls in the reply come back as \"tool_calls\"\n"
      "(finish_reason \"tool_calls\"); streamed, the text that may begin a call waits, and the\n"
      "calls come whole in one delta. Messages may carry an assistant's tool_calls and a tool's\n"
      "tool_call_id. A \"required\" or named tool_choice holds the reply to a call (to that\n"
      "function), its arguments to the function's parameters, as a json_schema reply is held;\n"
      "where the parameters use keywords the schema reader refuses, the call is begun for the\n"
      "model to complete instead (steered: a call that does not read as JSON comes back as text).\n"
      "response_format {\"type\": \"json_object\"} holds the reply to one JSON object, token by\n"
      "token, and {\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\"}} to the schema's\n"
      "instances, its properties in the schema's order (while one decodes, its batch runs a step\n"
      "at a time). A schema keyword that a reply could break unenforced (pattern, format, minimum,\n"
      "...) gets a 400 naming it and where it stands, as does n > 1.\n\n"
      "Examples:\n"
      "  lmx serve /models/Qwen3-0.6B --port 8080 --temperature 0.7 --max-tokens 1024\n"
      "  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
      "    -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}], \"max_tokens\": 64}'\n"
      "  lmx serve /models/Llama-3.2-1B --adapter adapters --host 0.0.0.0 --api-key secret");
  cmd->callback([=] { run_serve(*model, *gen, *args); });
}

}  // namespace lmx::cli
