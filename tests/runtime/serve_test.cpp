// `lmx serve`, run as a user runs it: the binary started on a free port and asked over HTTP
// as OpenAI's clients ask. Each reply is compared with the library's own answer to the same
// request (greedy and seeded sampling alike), whole and streamed; bad requests get OpenAI's
// error object with a status that says whose fault it is, and the server goes on.
#include <atomic>
#include <fstream>

#include "serve_util.h"

namespace lmx {
namespace {

using namespace test;

TEST(ServeTest, RepliesAsTheLibraryDoesWholeAndStreamed) {
  Served server("'" + kModel.string() + "' --device cpu --max-tokens 9");
  ASSERT_GT(server.port(), 0) << server.log();
  httplib::Client c = server.client();

  auto model = cpu_model();
  const std::vector<Message> chat{{"system", "You are terse."}, {"user", "Tell me about cats."}};
  GenerateOptions greedy;
  greedy.max_tokens = 12;
  const std::string want = model->chat(chat, greedy).text();
  const GenerateMetrics m = model->metrics();
  ASSERT_FALSE(want.empty());

  const json request = {{"model", "anything"},
                        {"messages", {{{"role", "system"}, {"content", "You are terse."}},
                                      {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Tell me "}},
                                                                      {{"type", "text"}, {"text", "about cats."}}}}}}},
                        {"max_tokens", 12}};
  const Reply whole = post(c, "/v1/chat/completions", request.dump());
  ASSERT_EQ(whole.status, 200) << whole.body.dump();
  EXPECT_EQ(whole.body["object"], "chat.completion");
  EXPECT_EQ(whole.body["model"], "qwen3-f32");
  EXPECT_EQ(whole.body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(whole.body["choices"][0]["message"]["content"], want);
  EXPECT_EQ(whole.body["choices"][0]["finish_reason"], m.finish_reason == "length" ? "length" : "stop");
  EXPECT_EQ(whole.body["usage"]["prompt_tokens"], m.prompt_tokens);
  EXPECT_EQ(whole.body["usage"]["completion_tokens"], m.generated_tokens);

  json streamed = request;
  streamed["stream"] = true;
  streamed["stream_options"] = {{"include_usage", true}};
  const std::vector<json> ev = events(c, "/v1/chat/completions", streamed);
  ASSERT_GE(ev.size(), 3u);
  EXPECT_EQ(ev.front()["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  for (size_t i = 0; i + 2 < ev.size(); ++i) {
    EXPECT_EQ(ev[i]["object"], "chat.completion.chunk");
    EXPECT_TRUE(ev[i]["choices"][0]["finish_reason"].is_null());
    text += ev[i]["choices"][0]["delta"]["content"].get<std::string>();
  }
  EXPECT_EQ(text, want);
  EXPECT_EQ(ev[ev.size() - 2]["choices"][0]["finish_reason"], whole.body["choices"][0]["finish_reason"]);
  EXPECT_EQ(ev.back()["usage"], whole.body["usage"]);
  EXPECT_TRUE(ev.back()["choices"].empty());

  // Seeded sampling with the extensions (top_k, min_p, repetition_penalty), a stop string and
  // a template variable: the library's tokens for the same options.
  GenerateOptions sampled;
  sampled.max_tokens = 16;
  sampled.temperature = 0.9f;
  sampled.top_k = 20;
  sampled.min_p = 0.01f;
  sampled.repeat_penalty = 1.1f;
  sampled.seed = 7;
  sampled.template_vars = {{"enable_thinking", "false"}};
  const std::string free_text = model->chat(chat, sampled).text();
  ASSERT_GE(free_text.size(), 4u);
  sampled.stop_strings = {free_text.substr(free_text.size() / 2, 2)};
  const std::string want_sampled = model->chat(chat, sampled).text();
  json s = {{"messages", request["messages"]}, {"max_tokens", 16}, {"temperature", 0.9}, {"top_k", 20},
            {"min_p", 0.01}, {"repetition_penalty", 1.1}, {"seed", 7}, {"stop", sampled.stop_strings},
            {"chat_template_kwargs", {{"enable_thinking", false}}}};
  const Reply r = post(c, "/v1/chat/completions", s.dump());
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["choices"][0]["message"]["content"], want_sampled);
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], "stop");

  // /v1/completions, with the server's --max-tokens 9 where the request sets none.
  GenerateOptions nine;
  nine.max_tokens = 9;
  const std::string want_text = model->generate("The cat sat on", nine).text();
  const Reply t = post(c, "/v1/completions", json{{"prompt", "The cat sat on"}}.dump());
  ASSERT_EQ(t.status, 200) << t.body.dump();
  EXPECT_EQ(t.body["object"], "text_completion");
  EXPECT_EQ(t.body["choices"][0]["text"], want_text);
  EXPECT_EQ(t.body["usage"]["completion_tokens"], model->metrics().generated_tokens);
  std::string streamed_text;
  for (const json& e : events(c, "/v1/completions", {{"prompt", {"The cat sat on"}}, {"stream", true}}))
    streamed_text += e["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(streamed_text, want_text);

  // Token ids as the prompt (vLLM's form), as generate_ids takes them.
  const std::vector<int32_t> ids{5, 17, 42, 99};
  const std::string want_ids = model->generate_ids(ids, nine).text();
  const Reply from_ids = post(c, "/v1/completions", json{{"prompt", ids}}.dump());
  ASSERT_EQ(from_ids.status, 200) << from_ids.body.dump();
  EXPECT_EQ(from_ids.body["choices"][0]["text"], want_ids);
  EXPECT_EQ(from_ids.body["usage"]["prompt_tokens"], 4);

  // Two clients at once take turns on the model, and each gets its own answer.
  GenerateOptions longer, twenty;  // the longer one is likely still running when the other comes
  longer.max_tokens = 200;
  twenty.max_tokens = 20;
  longer.ignore_eos = twenty.ignore_eos = true;
  const std::string want_a = model->generate("A dog", longer).text();
  const std::string want_b = model->generate("Blue sky", twenty).text();
  Reply a, b;
  std::thread other([&] {
    httplib::Client c2 = server.client();
    a = post(c2, "/v1/completions", json{{"prompt", "A dog"}, {"max_tokens", 200}, {"ignore_eos", true}}.dump());
  });
  b = post(c, "/v1/completions", json{{"prompt", "Blue sky"}, {"max_tokens", 20}, {"ignore_eos", true}}.dump());
  other.join();
  ASSERT_EQ(a.status, 200) << a.body.dump();
  ASSERT_EQ(b.status, 200) << b.body.dump();
  EXPECT_EQ(a.body["choices"][0]["text"], want_a);
  EXPECT_EQ(b.body["choices"][0]["text"], want_b);

  const auto models = c.Get("/v1/models");
  ASSERT_TRUE(models && models->status == 200);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "qwen3-f32");
  EXPECT_EQ(server.stop(), 0);
  EXPECT_NE(server.log().find("lmx serve: stopped"), std::string::npos) << server.log();
}

// A reply's scores against the library's tokens: chat's {token, logprob, bytes,
// top_logprobs} entries, each token's bytes its own text.
void expect_chat_scores(const json& content, const std::vector<Token>& want, const TextModel& model) {
  ASSERT_EQ(content.size(), want.size()) << content.dump();
  auto bytes_of = [](const std::string& s) {
    json out = json::array();
    for (char ch : s) out.push_back(static_cast<unsigned char>(ch));
    return out;
  };
  for (size_t i = 0; i < want.size(); ++i) {
    const json& e = content[i];
    EXPECT_EQ(e["bytes"], bytes_of(model.detokenize({&want[i].id, 1}))) << i;
    EXPECT_EQ(float(e["logprob"].get<double>()), want[i].logprob) << i;
    ASSERT_EQ(e["top_logprobs"].size(), want[i].top_logprobs.size()) << i;
    for (size_t j = 0; j < want[i].top_logprobs.size(); ++j) {
      const auto [id, lp] = want[i].top_logprobs[j];
      EXPECT_EQ(e["top_logprobs"][j]["bytes"], bytes_of(model.detokenize({&id, 1}))) << i << ", " << j;
      EXPECT_EQ(float(e["top_logprobs"][j]["logprob"].get<double>()), lp) << i << ", " << j;
    }
  }
}

TEST(ServeTest, LogprobsAreTheLibrarysScoresWholeAndStreamed) {
  Served server("'" + kModel.string() + "' --device cpu");
  ASSERT_GT(server.port(), 0) << server.log();
  httplib::Client c = server.client();
  auto model = cpu_model();

  // Chat, sampled (the scores stay the model's own), whole and streamed.
  const std::vector<Message> chat{{"user", "Name three colours."}};
  GenerateOptions o;
  o.max_tokens = 14;
  o.temperature = 0.8f;
  o.seed = 3;
  o.logprobs = 3;
  std::vector<Token> want;
  for (const Token& t : model->chat(chat, o)) want.push_back(t);
  std::string want_text;
  for (const Token& t : want) want_text += t.text;
  const std::string reason = model->metrics().finish_reason;
  if (reason == "eos" || reason == "stop_token") want.pop_back();  // not part of the reply's text

  const json request = {{"messages", {{{"role", "user"}, {"content", "Name three colours."}}}}, {"max_tokens", 14},
                        {"temperature", 0.8}, {"seed", 3}, {"logprobs", true}, {"top_logprobs", 3}};
  const Reply whole = post(c, "/v1/chat/completions", request.dump());
  ASSERT_EQ(whole.status, 200) << whole.body.dump();
  EXPECT_EQ(whole.body["choices"][0]["message"]["content"], want_text);
  expect_chat_scores(whole.body["choices"][0]["logprobs"]["content"], want, *model);

  json streamed = request;
  streamed["stream"] = true;
  json content = json::array();
  for (const json& e : events(c, "/v1/chat/completions", streamed)) {
    const json& scores = e["choices"][0]["logprobs"];
    if (scores.is_null()) continue;
    EXPECT_FALSE(scores["content"].empty()) << "a chunk with scores lists some";
    for (const json& entry : scores["content"]) content.push_back(entry);
  }
  // The same tokens, scored again: the server's prompt cache now holds the prompt but its
  // last token, so the scores may differ from the first run's in the last bits.
  const json& first = whole.body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), first.size());
  for (size_t i = 0; i < content.size(); ++i) {
    EXPECT_EQ(content[i]["bytes"], first[i]["bytes"]) << i;
    EXPECT_NEAR(content[i]["logprob"].get<double>(), first[i]["logprob"].get<double>(), 1e-5) << i;
    ASSERT_EQ(content[i]["top_logprobs"].size(), first[i]["top_logprobs"].size()) << i;
  }

  // Without logprobs: null.
  json plain = request;
  plain.erase("logprobs");
  plain.erase("top_logprobs");
  const Reply bare = post(c, "/v1/chat/completions", plain.dump());
  ASSERT_EQ(bare.status, 200);
  EXPECT_TRUE(bare.body["choices"][0]["logprobs"].is_null());

  // An end-of-sequence token (id 2, forced by a bias) ends the reply: its text is not in the
  // reply, and neither are its scores.
  json ended = request;
  ended["logit_bias"] = {{"2", 100}};
  const Reply eos = post(c, "/v1/chat/completions", ended.dump());
  ASSERT_EQ(eos.status, 200) << eos.body.dump();
  EXPECT_EQ(eos.body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(eos.body["usage"]["completion_tokens"], 1);
  EXPECT_EQ(eos.body["choices"][0]["logprobs"]["content"], json::array());
  ended["stream"] = true;
  for (const json& e : events(c, "/v1/chat/completions", ended)) {
    if (!e["choices"].empty()) {
      EXPECT_TRUE(e["choices"][0]["logprobs"].is_null()) << e.dump();
    }
  }

  // Completions: tokens, token_logprobs, top_logprobs (text to logprob) and text offsets.
  GenerateOptions g;
  g.max_tokens = 10;
  g.ignore_eos = true;
  g.logprobs = 2;
  std::vector<Token> wt;
  for (const Token& t : model->generate("The cat sat on", g)) wt.push_back(t);
  const json creq = {{"prompt", "The cat sat on"}, {"max_tokens", 10}, {"ignore_eos", true}, {"logprobs", 2}};
  const Reply comp = post(c, "/v1/completions", creq.dump());
  ASSERT_EQ(comp.status, 200) << comp.body.dump();
  const json& lp = comp.body["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), wt.size()) << lp.dump();
  int64_t offset = 0;
  for (size_t i = 0; i < wt.size(); ++i) {
    EXPECT_EQ(float(lp["token_logprobs"][i].get<double>()), wt[i].logprob) << i;
    EXPECT_EQ(lp["text_offset"][i], offset) << i;
    const std::string token = lp["tokens"][i].get<std::string>();  // valid UTF-8: its code points
    offset += std::count_if(token.begin(), token.end(), [](char ch) { return (ch & 0xC0) != 0x80; });
    EXPECT_LE(lp["top_logprobs"][i].size(), 2u);
    const std::string best = model->detokenize({&wt[i].top_logprobs[0].first, 1});
    EXPECT_EQ(float(lp["top_logprobs"][i][best].get<double>()), wt[i].top_logprobs[0].second) << i;
  }
  json cstream = creq;
  cstream["stream"] = true;
  json tokens = json::array(), offsets = json::array();
  for (const json& e : events(c, "/v1/completions", cstream)) {
    const json& scores = e["choices"][0]["logprobs"];
    if (scores.is_null()) continue;
    for (const json& t : scores["tokens"]) tokens.push_back(t);
    for (const json& t : scores["text_offset"]) offsets.push_back(t);
  }
  EXPECT_EQ(tokens, lp["tokens"]);
  EXPECT_EQ(offsets, lp["text_offset"]);

  // Echo, as evaluation harnesses score text: token ids in, max_tokens 0, the prompt's scores
  // out (the first token's null: nothing before it scores it).
  const std::vector<int32_t> ids{5, 17, 42, 99, 7, 311};
  const std::vector<Token> want_scores = model->score_ids(ids, 1);
  const Reply scoring =
      post(c, "/v1/completions", json{{"prompt", ids}, {"echo", true}, {"max_tokens", 0}, {"logprobs", 1}}.dump());
  ASSERT_EQ(scoring.status, 200) << scoring.body.dump();
  const json& sc = scoring.body["choices"][0];
  EXPECT_EQ(sc["text"], model->detokenize(ids));
  EXPECT_EQ(scoring.body["usage"]["prompt_tokens"], 6);
  EXPECT_EQ(scoring.body["usage"]["completion_tokens"], 0);
  ASSERT_EQ(sc["logprobs"]["tokens"].size(), ids.size()) << sc.dump();
  EXPECT_TRUE(sc["logprobs"]["token_logprobs"][0].is_null());
  EXPECT_TRUE(sc["logprobs"]["top_logprobs"][0].is_null());
  for (size_t i = 1; i < ids.size(); ++i) {
    EXPECT_EQ(float(sc["logprobs"]["token_logprobs"][i].get<double>()), want_scores[i - 1].logprob) << i;
    EXPECT_EQ(sc["logprobs"]["top_logprobs"][i].size(), 1u) << i;
  }
  // Echo with new tokens: the prompt's text and scores, then the generation's.
  GenerateOptions three = g;
  three.max_tokens = 3;
  const std::string generated = model->generate("The cat sat on", three).text();
  const std::vector<int32_t> prompt = model->tokenize("The cat sat on");
  const Reply both = post(c, "/v1/completions", json{{"prompt", "The cat sat on"}, {"echo", true}, {"max_tokens", 3},
                                                     {"ignore_eos", true}, {"logprobs", 2}}.dump());
  ASSERT_EQ(both.status, 200) << both.body.dump();
  EXPECT_EQ(both.body["choices"][0]["text"], "The cat sat on" + generated);
  const json& bl = both.body["choices"][0]["logprobs"];
  ASSERT_EQ(bl["tokens"].size(), prompt.size() + 3) << bl.dump();
  EXPECT_TRUE(bl["token_logprobs"][0].is_null());
  // Greedy, so the tokens of the run above; the server's prompt cache held this prompt, so
  // the scores may differ in the last bits.
  for (size_t i = 0; i < 3; ++i)
    EXPECT_NEAR(bl["token_logprobs"][prompt.size() + i].get<double>(), wt[i].logprob, 1e-5) << i;
  for (size_t i = 1; i < bl["text_offset"].size(); ++i) EXPECT_GE(bl["text_offset"][i], bl["text_offset"][i - 1]);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// GET /health's counts, once they are `running` and `queued` (up to 2 minutes).
bool wait_for_load(httplib::Client& c, int running, int queued) {
  for (int i = 0; i < 1200; ++i) {
    const auto r = c.Get("/health");
    if (r && r->status == 200) {
      const json h = json::parse(r->body);
      if (h["running"] == running && h["queued"] == queued) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// Continuous batching: requests that draw alike join a batch under way and are answered as
// their rows end, each as it would be alone; one that draws otherwise waits for the batch.
TEST(ServeTest, RequestsThatDrawAlikeJoinTheBatchUnderWay) {
  Served server("'" + kModel.string() + "' --device cpu --context 16384");
  ASSERT_GT(server.port(), 0) << server.log();
  httplib::Client c = server.client();
  auto model = cpu_model(16384);

  // A long stream holds the model until its client leaves; meanwhile five requests come.
  std::atomic<bool> release{false};
  std::thread holder([&] {
    httplib::Client c0 = server.client();
    httplib::Request r;
    r.method = "POST";
    r.path = "/v1/completions";
    r.set_header("Content-Type", "application/json");
    r.body = json{{"prompt", "Hold"}, {"max_tokens", 16000}, {"ignore_eos", true}, {"stream", true}}.dump();
    r.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return !release; };
    httplib::Response ignored;
    httplib::Error error;
    c0.send(r, ignored, error);
  });
  ASSERT_TRUE(wait_for_load(c, 1, 0));

  struct Ask {
    json body;
    GenerateOptions options;
    bool chat = false;
    Reply reply;
    std::string want;
  };
  std::vector<Ask> asks(5);
  const std::vector<Message> hello{{"user", "Hello there"}};
  const char* prompts[] = {"The cat", "A long road", "Blue", "", "Seven seas"};
  const int lengths[] = {12, 20, 7, 9, 10};
  for (size_t i = 0; i < asks.size(); ++i) {
    Ask& a = asks[i];
    a.options.max_tokens = lengths[i];
    a.options.ignore_eos = true;
    a.chat = i == 3;
    a.body = {{"max_tokens", lengths[i]}, {"ignore_eos", true}};
    if (a.chat)
      a.body["messages"] = {{{"role", "user"}, {"content", "Hello there"}}};
    else
      a.body["prompt"] = prompts[i];
  }
  asks[2].body["stream"] = true;  // a streamed reply in the batch
  asks[2].body["stream_options"] = {{"include_usage", true}};
  // The last draws otherwise (seeded sampling): it waits, and runs on its own after the batch.
  asks[4].options.temperature = 0.9f;
  asks[4].options.seed = 5;
  asks[4].body["temperature"] = 0.9;
  asks[4].body["seed"] = 5;
  for (Ask& a : asks)
    a.want = a.chat ? model->chat(hello, a.options).text()
                    : model->generate(a.body["prompt"].get<std::string>(), a.options).text();

  std::vector<std::thread> clients;
  for (Ask& a : asks) {
    clients.emplace_back([&] {
      httplib::Client ci = server.client();
      const std::string path = a.chat ? "/v1/chat/completions" : "/v1/completions";
      if (!a.body.contains("stream")) {
        a.reply = post(ci, path, a.body.dump());
        return;
      }
      // A streamed one, its events gathered into the shape of a whole reply.
      json text = "", reason, usage;
      for (const json& e : events(ci, path, a.body)) {
        if (e.contains("usage") && !e["usage"].is_null()) usage = e["usage"];
        if (e["choices"].empty()) continue;
        text = text.get<std::string>() + e["choices"][0]["text"].get<std::string>();
        if (!e["choices"][0]["finish_reason"].is_null()) reason = e["choices"][0]["finish_reason"];
      }
      a.reply = {200, {{"choices", {{{"text", text}, {"finish_reason", reason}}}}, {"usage", usage}}};
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // in this order
  }
  // The four that draw alike end while the long stream goes on.
  for (size_t i = 0; i < 4; ++i) clients[i].join();
  EXPECT_TRUE(wait_for_load(c, 1, 1)) << "the long stream should run and the sampled request wait";
  // One that draws alike but comes after the sampled one waits behind it: the batch takes
  // no request past the oldest waiting, so that it ends and that one runs.
  Reply late;
  std::thread latecomer([&] {
    httplib::Client ci = server.client();
    late = post(ci, "/v1/completions", asks[0].body.dump());
  });
  EXPECT_TRUE(wait_for_load(c, 1, 2)) << "a later request should not join past the sampled one";
  release = true;
  holder.join();
  clients[4].join();
  latecomer.join();
  ASSERT_EQ(late.status, 200) << late.body.dump();
  EXPECT_EQ(late.body["choices"][0]["text"], asks[0].want);
  for (size_t i = 0; i < asks.size(); ++i) {
    const Reply& r = asks[i].reply;
    ASSERT_EQ(r.status, 200) << i << ": " << r.body.dump();
    const json& choice = r.body["choices"][0];
    EXPECT_EQ(asks[i].chat ? choice["message"]["content"] : choice["text"], asks[i].want) << i;
    EXPECT_EQ(r.body["usage"]["completion_tokens"], lengths[i]) << i;
    EXPECT_EQ(choice["finish_reason"], "length") << i;
  }
  EXPECT_TRUE(server.logged("lmx serve: 5 requests decoded together (4 joined)")) << server.log();
  EXPECT_TRUE(server.logged("lmx serve: 1 request at")) << server.log();
  EXPECT_TRUE(wait_for_load(c, 0, 0));
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(ServeTest, BatchWaitGathersClientsThatStartTogether) {
  // The first request to find the model idle waits (here up to 9 s) until the batch is full.
  Served server("'" + kModel.string() + "' --device cpu --max-batch 3 --batch-wait 9000");
  ASSERT_GT(server.port(), 0) << server.log();
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> clients;
  std::vector<Reply> replies(3);
  for (size_t i = 0; i < replies.size(); ++i)
    clients.emplace_back([&, i] {
      httplib::Client c = server.client();
      replies[i] = post(c, "/v1/completions", json{{"prompt", "Hi " + std::to_string(i)}, {"max_tokens", 5}}.dump());
    });
  for (std::thread& t : clients) t.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const Reply& r : replies) EXPECT_EQ(r.status, 200) << r.body.dump();
  EXPECT_TRUE(server.logged("lmx serve: 3 requests decoded together")) << server.log();
  EXPECT_LT(seconds, 7) << "a full batch should not wait out --batch-wait";
  EXPECT_EQ(server.stop(), 0);
}

// Requests that only score their prompts (echo, max_tokens 0), as a harness sends them all
// at once, share one forward pass whatever their logprobs; one whose prompt cannot run is
// refused alone.
TEST(ServeTest, PromptsToScoreAreScoredTogether) {
  Served server("'" + kModel.string() + "' --device cpu --max-batch 4 --batch-wait 9000");
  ASSERT_GT(server.port(), 0) << server.log();
  auto model = cpu_model();
  struct Ask {
    json prompt;
    int top;
    Reply reply;
  };
  std::vector<Ask> asks = {{"The cat sat on the mat", 0, {}},
                           {json::array({5, 17, 42, 99, 7, 311, 12}), 3, {}},
                           {"Blue", 1, {}},
                           {json::array({1, 99999}), 2, {}}};
  std::vector<std::thread> clients;
  for (Ask& a : asks)
    clients.emplace_back([&] {
      httplib::Client c = server.client();
      a.reply = post(c, "/v1/completions",
                     json{{"prompt", a.prompt}, {"echo", true}, {"max_tokens", 0}, {"logprobs", a.top}}.dump());
    });
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i + 1 < asks.size(); ++i) {
    const Ask& a = asks[i];
    ASSERT_EQ(a.reply.status, 200) << i << ": " << a.reply.body.dump();
    const std::vector<int32_t> ids =
        a.prompt.is_string() ? model->tokenize(a.prompt.get<std::string>()) : a.prompt.get<std::vector<int32_t>>();
    const std::vector<Token> want = model->score_ids(ids, a.top);
    const json& lp = a.reply.body["choices"][0]["logprobs"];
    ASSERT_EQ(lp["tokens"].size(), ids.size()) << i;
    EXPECT_EQ(a.reply.body["usage"]["prompt_tokens"], ids.size()) << i;
    for (size_t p = 1; p < ids.size(); ++p) {
      // Batched and alone, the same math over other shapes.
      EXPECT_NEAR(lp["token_logprobs"][p].get<double>(), want[p - 1].logprob, 1e-4) << i << ", token " << p;
      ASSERT_EQ(lp["top_logprobs"][p].size(), size_t(a.top)) << i << ", token " << p;
    }
  }
  EXPECT_EQ(asks[3].reply.status, 400) << asks[3].reply.body.dump();
  EXPECT_NE(asks[3].reply.body.dump().find("outside the vocabulary"), std::string::npos) << asks[3].reply.body.dump();
  EXPECT_TRUE(server.logged("lmx serve: 4 requests scored together")) << server.log();
  EXPECT_EQ(server.stop(), 0);
}

// OpenAI's batch form: "prompt" a list of texts or id lists, a choice each, decoded in one
// batch; a prompt the model refuses fails the request.
TEST(ServeTest, AListOfPromptsIsAChoiceEachDecodedTogether) {
  Served server("'" + kModel.string() + "' --device cpu");
  ASSERT_GT(server.port(), 0) << server.log();
  httplib::Client c = server.client();
  auto model = cpu_model();
  GenerateOptions o;
  o.max_tokens = 6;
  o.ignore_eos = true;
  const std::vector<int32_t> ids = {5, 17, 42};
  const std::string want[] = {model->generate("The cat", o).text(), model->generate_ids(ids, o).text(),
                              model->generate("Blue", o).text()};
  const int prompt_tokens = int(model->tokenize("The cat").size() + ids.size() + model->tokenize("Blue").size());
  const Reply r = post(c, "/v1/completions",
                       json{{"prompt", {json("The cat"), json(ids), json("Blue")}}, {"max_tokens", 6},
                            {"ignore_eos", true}}.dump());
  ASSERT_EQ(r.status, 200) << r.body.dump();
  ASSERT_EQ(r.body["choices"].size(), 3u) << r.body.dump();
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r.body["choices"][i]["index"], i);
    EXPECT_EQ(r.body["choices"][i]["text"], want[i]) << i;
    EXPECT_EQ(r.body["choices"][i]["finish_reason"], "length") << i;
  }
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 18);
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], prompt_tokens);
  EXPECT_TRUE(server.logged("lmx serve: 3 requests decoded together")) << server.log();

  const Reply bad = post(c, "/v1/completions", json{{"prompt", {json("The cat"), json({1, 99999})}}}.dump());
  EXPECT_EQ(bad.status, 400) << bad.body.dump();
  EXPECT_NE(bad.body.dump().find("outside the vocabulary"), std::string::npos) << bad.body.dump();
  // With logprobs, the prompts are decoded together too, each choice with its own scores.
  GenerateOptions scored = o;
  scored.max_tokens = 4;
  scored.logprobs = 2;
  const Reply lp = post(c, "/v1/completions",
                        json{{"prompt", {"The cat", "Blue"}}, {"max_tokens", 4}, {"ignore_eos", true},
                             {"logprobs", 2}}.dump());
  ASSERT_EQ(lp.status, 200) << lp.body.dump();
  const char* texts[] = {"The cat", "Blue"};
  for (size_t i = 0; i < 2; ++i) {
    std::vector<Token> want;
    for (const Token& t : model->generate(texts[i], scored)) want.push_back(t);
    const json& got = lp.body["choices"][i]["logprobs"];
    ASSERT_EQ(got["token_logprobs"].size(), want.size()) << got.dump();
    for (size_t k = 0; k < want.size(); ++k) {
      EXPECT_NEAR(got["token_logprobs"][k].get<double>(), want[k].logprob, 1e-4) << i << ", token " << k;
      EXPECT_EQ(got["top_logprobs"][k].size(), 2u) << i << ", token " << k;
    }
  }
  EXPECT_TRUE(server.logged("lmx serve: 2 requests decoded together")) << server.log();
  // A list of one is the prompt alone.
  const Reply one =
      post(c, "/v1/completions", json{{"prompt", {"Blue"}}, {"max_tokens", 6}, {"ignore_eos", true}}.dump());
  ASSERT_EQ(one.status, 200) << one.body.dump();
  EXPECT_EQ(one.body["choices"][0]["text"], want[2]);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

// lm-eval's loglikelihood request (its local-completions model): a list of prompts, echo,
// max_tokens 1, logprobs 1, temperature 0. The prompts are decoded together; each choice
// lists its prompt's scores and then its one generated token's, whatever that token is (an
// end-of-sequence included), since the harness drops the last entry by count.
TEST(ServeTest, LoglikelihoodRequestsAsHarnessesSendThem) {
  Served server("'" + kModel.string() + "' --device cpu");
  ASSERT_GT(server.port(), 0) << server.log();
  httplib::Client c = server.client();
  auto model = cpu_model();
  const std::vector<std::string> prompts = {"The capital of France is Paris", "Two plus two is four", "Blue"};
  json request = {{"prompt", prompts}, {"echo", true},       {"max_tokens", 1},
                  {"logprobs", 1},      {"temperature", 0}, {"seed", 1234}};
  for (bool forced_eos : {false, true}) {
    GenerateOptions one;
    one.max_tokens = 1;
    one.logprobs = 1;
    if (forced_eos) {  // the end-of-sequence token (id 2) generated: still listed
      one.logit_bias = {{2, 100.0f}};
      request["logit_bias"] = {{"2", 100}};
    }
    const Reply r = post(c, "/v1/completions", request.dump());
    ASSERT_EQ(r.status, 200) << r.body.dump();
    ASSERT_EQ(r.body["choices"].size(), prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      const std::vector<int32_t> ids = model->tokenize(prompts[i]);
      const std::vector<Token> want = model->score_ids(ids, 1);
      std::vector<Token> next;
      for (const Token& t : model->generate_ids(ids, one)) next.push_back(t);
      ASSERT_EQ(next.size(), 1u);
      const json& lp = r.body["choices"][i]["logprobs"];
      const std::string at = prompts[i] + (forced_eos ? ", forced end" : "");
      ASSERT_EQ(lp["token_logprobs"].size(), ids.size() + 1) << at << ": " << lp.dump();
      EXPECT_TRUE(lp["token_logprobs"][0].is_null()) << at;
      for (size_t p = 1; p < ids.size(); ++p) {
        EXPECT_NEAR(lp["token_logprobs"][p].get<double>(), want[p - 1].logprob, 1e-4) << at << ", token " << p;
        ASSERT_EQ(lp["top_logprobs"][p].size(), 1u) << at;
      }
      EXPECT_NEAR(lp["token_logprobs"][ids.size()].get<double>(), next[0].logprob, 1e-4) << at;
      if (forced_eos) {
        EXPECT_EQ(next[0].id, 2) << at;
        EXPECT_EQ(r.body["choices"][i]["finish_reason"], "stop") << at;
      }
    }
  }
  EXPECT_TRUE(server.logged("lmx serve: 3 requests decoded together")) << server.log();
  EXPECT_EQ(server.stop(), 0) << server.log();
}

TEST(ServeTest, BadRequestsGetOpenAIsErrorObjectAndTheServerGoesOn) {
  Served server("'" + kModel.string() + "' --device cpu --api-key sesame --model-name tiny");
  ASSERT_GT(server.port(), 0) << server.log();
  httplib::Client c = server.client();
  const httplib::Headers key{{"Authorization", "Bearer sesame"}};
  const json hi = {{"role", "user"}, {"content", "hi"}};

  struct Case {
    std::string path, body;
    int status;
    std::string param, says;
  };
  const Case cases[] = {
      {"/v1/chat/completions", "{\"messages\": [", 400, "", "not valid JSON"},
      {"/v1/chat/completions", "{\"messages\": [], \"temperature\": 1e999}", 400, "", "not valid JSON"},
      {"/v1/chat/completions", "[1, 2]", 400, "", "must be a JSON object"},
      {"/v1/chat/completions", "{}", 400, "messages", "non-empty list"},
      {"/v1/chat/completions", json{{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}.dump(), 400,
       "messages[0].role", "must be system, developer, user, assistant or tool"},
      {"/v1/chat/completions", json{{"messages", {hi}}, {"n", 2}}.dump(), 400, "n", "'n' must be 1"},
      {"/v1/chat/completions", json{{"messages", {hi}}, {"tools", json::array({json::object()})}}.dump(), 400,
       "tools[0]", "must be {\"type\": \"function\""},
      // The fixture's template lists no tools.
      {"/v1/chat/completions",
       json{{"messages", {hi}}, {"tools", {{{"type", "function"}, {"function", {{"name", "f"}}}}}}}.dump(), 400,
       "tools", "does not ask for tool calls"},
      {"/v1/chat/completions", json{{"messages", {hi}}, {"temperature", "hot"}}.dump(), 400, "temperature",
       "must be a number"},
      {"/v1/chat/completions", json{{"messages", {hi}}, {"max_tokens", 0}}.dump(), 400, "max_tokens",
       "must be in [1,"},
      {"/v1/chat/completions", json{{"messages", {hi}}, {"logit_bias", {{"x", 1}}}}.dump(), 400, "logit_bias",
       "keys must be token ids"},
      {"/v1/chat/completions", json{{"messages", {hi}}, {"top_logprobs", 2}}.dump(), 400, "top_logprobs",
       "needs \"logprobs\": true"},
      {"/v1/chat/completions", json{{"messages", {hi}}, {"logprobs", true}, {"top_logprobs", 21}}.dump(), 400,
       "top_logprobs", "must be in [0, 20]"},
      {"/v1/completions", json{{"prompt", "x"}, {"logprobs", true}}.dump(), 400, "logprobs", "must be an integer"},
      {"/v1/completions", json{{"prompt", 5}}.dump(), 400, "prompt", "must be a text"},
      {"/v1/completions", json{{"prompt", {"a", 5}}}.dump(), 400, "prompt", "must be a text"},
      {"/v1/completions", json{{"prompt", {"a", "b"}}, {"stream", true}}.dump(), 400, "prompt", "takes one prompt"},
      {"/v1/completions", json{{"prompt", {1, 99999}}}.dump(), 400, "", "outside the vocabulary"},
      {"/v1/completions", json{{"prompt", "x"}, {"echo", true}, {"stream", true}}.dump(), 400, "echo",
       "whole replies only"},
      {"/v1/chat/completions", json{{"messages", {hi}}, {"echo", true}}.dump(), 400, "echo", "completions field"},
      {"/v1/completions", json{{"prompt", "x"}, {"max_tokens", 0}}.dump(), 400, "max_tokens", "must be in [1,"},
      {"/v1/completions", json{{"prompt", std::string(3000, 'a') + " " + std::string(3000, 'b')}}.dump(), 400, "",
       "context length"},
      {"/v1/embeddings", "{}", 404, "", "no such endpoint"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.path + " " + k.body.substr(0, 80));
    const Reply r = post(c, k.path, k.body, key);
    EXPECT_EQ(r.status, k.status);
    ASSERT_TRUE(r.body.contains("error")) << r.body.dump();
    EXPECT_NE(r.body["error"]["message"].get<std::string>().find(k.says), std::string::npos) << r.body.dump();
    if (!k.param.empty()) {
      EXPECT_EQ(r.body["error"]["param"], k.param);
    }
  }
  const Reply no_key = post(c, "/v1/chat/completions", json{{"messages", {hi}}}.dump());
  EXPECT_EQ(no_key.status, 401);
  EXPECT_EQ(no_key.body["error"]["type"], "authentication_error");
  const auto health = c.Get("/health");  // open without the key, for load balancers
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);

  // A client that leaves mid-stream ends its generation and frees the model for the next.
  httplib::Request leaving;
  leaving.method = "POST";
  leaving.path = "/v1/chat/completions";
  leaving.headers = key;
  leaving.set_header("Content-Type", "application/json");
  leaving.body = json{{"messages", {hi}}, {"max_tokens", 200}, {"ignore_eos", true}, {"stream", true}}.dump();
  leaving.content_receiver = [](const char*, size_t, uint64_t, uint64_t) { return false; };
  httplib::Response ignored;
  httplib::Error error;
  c.send(leaving, ignored, error);

  const Reply fine =
      post(c, "/v1/chat/completions", json{{"messages", {hi}}, {"max_tokens", 3}, {"ignore_eos", true}}.dump(), key);
  EXPECT_EQ(fine.status, 200) << fine.body.dump();
  EXPECT_EQ(fine.body["model"], "tiny");
  EXPECT_EQ(fine.body["usage"]["completion_tokens"], 3);
  EXPECT_EQ(server.stop(), 0) << server.log();
}

}  // namespace
}  // namespace lmx
