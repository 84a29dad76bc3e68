// The model's side of `lmx serve`: requests queue for the one model, and a thread of the
// scheduler's own runs them. With --max-batch above 1, requests that generate run in a
// batch (TextModel::generate_rows) that others drawing alike join while it decodes
// (continuous batching): each is prefilled as it comes and answered as soon as its row
// ends, and on a GPU 2-8 sequences decode in about the time of one. With --max-batch 1
// every request runs alone (a Stream: the prompt cache, and on a GPU the fused one-sequence
// step). Requests that only score their prompts (echo with
// max_tokens 0, as evaluation harnesses send them) are scored together
// (TextModel::score_batch). No HTTP here (cmd_serve.cpp); tokens go to each request's Job.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <thread>
#include <vector>

#include "lmx/lmx.h"
#include "openai.h"

namespace lmx::cli {

// One request, from the queue to its last token.
class Job {
 public:
  explicit Job(openai::Request r) : request(std::move(r)) {}
  const openai::Request request;

  // The HTTP side. Waits for tokens or the end and takes the tokens that came since the
  // last call; `done` once none will follow (then the fields below are set).
  std::vector<Token> wait(bool& done);
  // The client has gone: the generation ends within a decode step.
  void leave() { stop_.request_stop(); }

  std::optional<openai::ApiError> error;  // the request failed (before or after its first token)
  GenerateMetrics metrics;                // its own usage and finish reason
  std::string echo_text;                  // "echo": the prompt's text,
  std::vector<Token> echoed;              // and with logprobs its tokens, scored (the first: NaN)

  // The scheduler's side.
  std::stop_token stop_token() const { return stop_.get_token(); }
  void push(const Token& t);
  void finish();

 private:
  std::stop_source stop_;
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<Token> new_;
  bool done_ = false;
};

class Scheduler {
 public:
  // Up to `max_batch` requests that draw alike run as one batch (1: each alone). A request
  // that finds the model idle waits up to `gather` for others to share its batch.
  Scheduler(TextModel& model, int max_batch, std::chrono::milliseconds gather = {});
  ~Scheduler();  // stop(), then waits for the thread
  // Queues requests (a reply's prompts) together, so that they may share a batch; throws
  // openai::ApiError (503) once the server is stopping.
  std::vector<std::shared_ptr<Job>> submit(std::vector<openai::Request> requests);
  // Ends the generations under way within a decode step and refuses the queued ones.
  void stop();
  struct Load {
    size_t running = 0, queued = 0;  // requests
  };
  Load load();

 private:
  void loop();
  // The next requests to run: the oldest, and the others queued that may share its batch.
  std::vector<std::shared_ptr<Job>> take();
  // Takes up to `room` queued requests that may decode in a batch led by `lead`, oldest
  // first (joins()); `in_order`: none past the first that may not. m_ held.
  std::vector<std::shared_ptr<Job>> take_joining(const openai::Request& lead, size_t room, bool in_order);
  // Both leave finishing their jobs to loop() (a job refused before its batch finishes at once).
  void run_alone(Job& job);
  // `jobs` and the requests that join them while they decode (continuous batching, added
  // to jobs); each job finishes as its row ends (with echo, once the batch has).
  void run_batch(std::vector<std::shared_ptr<Job>>& jobs);
  // Requests that only score their prompts (echo, max_tokens 0), in one TextModel::score_batch.
  void run_scores(const std::vector<std::shared_ptr<Job>>& jobs);
  // The jobs whose prompts can run, with their ids; each other job fails alone (400), at once.
  struct Admitted {
    std::vector<Job*> jobs;
    std::vector<std::vector<int32_t>> ids;
  };
  Admitted admit(const std::vector<std::shared_ptr<Job>>& jobs);
  // "echo": each job's prompt text (ids[i] its tokens), and where asked its tokens' scores,
  // the prompts scored together.
  void echo(std::span<Job* const> jobs, std::span<const std::vector<int32_t>> ids);
  std::vector<int32_t> prompt_ids(const openai::Request& r) const;  // the ids the request runs
  // The model's reason for ending a stream early, as the HTTP error it is; none for a
  // normal end or a client that left.
  std::optional<openai::ApiError> stream_error() const;

  TextModel& model_;
  const ModelInfo info_;
  const int max_batch_;
  const std::chrono::milliseconds gather_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::shared_ptr<Job>> running_;  // stopped by stop()
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace lmx::cli
