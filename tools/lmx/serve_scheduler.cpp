#include "serve_scheduler.h"

#include <algorithm>
#include <cstdio>
#include <limits>

#include "core/error.h"

namespace lmx::cli {

std::vector<Token> Job::wait(bool& done) {
  std::unique_lock lock(m_);
  cv_.wait(lock, [&] { return !new_.empty() || done_; });
  done = done_;
  return std::exchange(new_, {});
}

void Job::push(const Token& t) {
  {
    std::lock_guard lock(m_);
    new_.push_back(t);
  }
  cv_.notify_all();
}

void Job::finish() {
  {
    std::lock_guard lock(m_);
    done_ = true;
  }
  cv_.notify_all();
}

Scheduler::Scheduler(TextModel& model, int max_batch, std::chrono::milliseconds gather)
    : model_(model), info_(model.info()), max_batch_(std::max(1, max_batch)), gather_(gather),
      thread_([this] { loop(); }) {}

Scheduler::~Scheduler() {
  stop();
  thread_.join();
}

std::shared_ptr<Job> Scheduler::submit(openai::Request request) {
  auto job = std::make_shared<Job>(std::move(request));
  {
    std::lock_guard lock(m_);
    if (stopping_) throw openai::ApiError{503, "the server is stopping", "server_error"};
    queue_.push_back(job);
  }
  cv_.notify_all();
  return job;
}

void Scheduler::stop() {
  std::deque<std::shared_ptr<Job>> refused;
  {
    std::lock_guard lock(m_);
    stopping_ = true;
    refused.swap(queue_);
    for (const auto& job : running_) job->leave();
  }
  cv_.notify_all();
  for (const auto& job : refused) {
    job->error = openai::ApiError{503, "the server is stopping", "server_error"};
    job->finish();
  }
}

Scheduler::Load Scheduler::load() {
  std::lock_guard lock(m_);
  return {running_.size(), queue_.size()};
}

void Scheduler::loop() {
  for (;;) {
    std::vector<std::shared_ptr<Job>> jobs = take();
    if (jobs.empty()) return;  // stopping
    const auto t0 = std::chrono::steady_clock::now();
    if (jobs.size() == 1)
      run_alone(*jobs[0]);
    else
      run_batch(jobs);
    // A line a run: how many requests, from when (seconds since the server started), how
    // many tokens, how long, and which decode step.
    int tokens = 0;
    for (const auto& job : jobs) tokens += job->metrics.generated_tokens;
    const std::string path = model_.metrics().decode_path;
    auto seconds = [](auto d) { return std::chrono::duration<double>(d).count(); };
    std::fprintf(stderr, "lmx serve: %zu %s at +%.3f s (%s): %d tokens in %.3f s\n", jobs.size(),
                 jobs.size() == 1 ? "request" : "requests decoded together", seconds(t0 - started_),
                 path.empty() ? "no decode step" : path.c_str(), tokens,
                 seconds(std::chrono::steady_clock::now() - t0));
    for (const auto& job : jobs) job->finish();  // after the line: a client that reads the log finds it
    std::lock_guard lock(m_);
    running_.clear();
  }
}

std::vector<std::shared_ptr<Job>> Scheduler::take() {
  std::unique_lock lock(m_);
  cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
  if (stopping_) return {};
  // A request with logprobs or echo runs alone: its scores need each step's logits, which
  // the batched step keeps on the device.
  auto batchable = [](const Job& j) { return j.request.options.logprobs < 0 && !j.request.echo; };
  std::vector<std::shared_ptr<Job>> jobs{queue_.front()};
  queue_.pop_front();
  // Clients that start together reach the server a little apart: the first may wait for
  // the rest, rather than run alone while they queue behind it.
  running_ = jobs;
  if (batchable(*jobs[0]) && max_batch_ > 1 && gather_.count() > 0) {
    cv_.wait_for(lock, gather_, [&] { return stopping_ || int(queue_.size()) + 1 >= max_batch_; });
    if (stopping_) {  // stop() refused the queue meanwhile; this one too
      jobs[0]->error = openai::ApiError{503, "the server is stopping", "server_error"};
      jobs[0]->finish();
      return {};
    }
  }
  if (batchable(*jobs[0])) {
    for (auto it = queue_.begin(); it != queue_.end() && int(jobs.size()) < max_batch_;) {
      if (batchable(**it) && draws_alike((*it)->request.options, jobs[0]->request.options)) {
        jobs.push_back(*it);
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
  }
  running_ = jobs;
  return jobs;
}

std::optional<openai::ApiError> Scheduler::stream_error() const {
  const std::error_code e = model_.err();
  if (!e || e == Errc::cancelled) return std::nullopt;
  if (e == Errc::invalid_input) return openai::ApiError{400, model_.err_message()};
  if (e == Errc::out_of_memory) return openai::ApiError{503, model_.err_message(), "server_error"};
  return openai::ApiError{500, model_.err_message(), "server_error"};
}

void Scheduler::run_alone(Job& job) {
  const openai::Request& r = job.request;
  try {
    std::optional<Stream> stream;
    if (r.chat)
      stream.emplace(model_.chat(r.messages, r.options, job.stop_token()));
    else if (!r.prompt_ids.empty())
      stream.emplace(model_.generate_ids(r.prompt_ids, r.options, job.stop_token()));
    else
      stream.emplace(model_.generate(r.prompt, r.options, job.stop_token()));
    for (const Token& t : *stream) job.push(t);
    stream.reset();
    job.metrics = model_.metrics();
    job.error = stream_error();
    if (!job.error && r.echo) echo(job);
  } catch (const Error& e) {  // the model's checks of the request: a bad template variable, a long prompt
    job.error = openai::ApiError{400, e.what()};
  } catch (const std::exception& e) {
    job.error = openai::ApiError{500, std::string("internal error: ") + e.what(), "server_error"};
  }
}

void Scheduler::echo(Job& job) {
  const openai::Request& r = job.request;
  const std::vector<int32_t> ids = r.prompt_ids.empty() ? model_.tokenize(r.prompt) : r.prompt_ids;
  job.echo_text = r.prompt_ids.empty() ? r.prompt : model_.detokenize(ids);
  if (r.options.logprobs < 0) return;
  job.echoed.resize(1);
  job.echoed[0].id = ids.at(0);
  job.echoed[0].logprob = std::numeric_limits<float>::quiet_NaN();  // nothing before it scores it
  for (Token& t : model_.score_ids(ids, r.options.logprobs)) job.echoed.push_back(std::move(t));
}

void Scheduler::run_batch(std::vector<std::shared_ptr<Job>>& jobs) {
  // Each request's prompt ids; one the model refuses (a template error, a prompt past the
  // context) fails alone, before the batch.
  std::vector<std::shared_ptr<Job>> rows;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<GenerateOptions> options;
  for (const auto& job : jobs) {
    const openai::Request& r = job->request;
    try {
      std::vector<int32_t> ids = r.chat               ? model_.chat_ids(r.messages, r.options)
                                 : r.prompt_ids.empty() ? model_.tokenize(r.prompt)
                                                        : r.prompt_ids;
      check_prompt(info_, ids);
      prompts.push_back(std::move(ids));
      options.push_back(r.options);
      rows.push_back(job);
    } catch (const Error& e) {
      job->error = openai::ApiError{400, e.what()};
      job->finish();
    }
  }
  try {
    const std::vector<BatchResult> out = model_.generate_rows(prompts, options, [&](size_t row, const Token& t) {
      rows[row]->push(t);
      return !rows[row]->stop_token().stop_requested();
    });
    for (size_t i = 0; i < rows.size(); ++i) {
      GenerateMetrics& m = rows[i]->metrics;
      m.prompt_tokens = int(prompts[i].size());
      m.generated_tokens = int(out[i].ids.size());
      m.finish_reason = out[i].finish_reason;
      if (!out[i].error.empty()) rows[i]->error = openai::ApiError{400, out[i].error};
    }
  } catch (const OutOfMemory& e) {
    for (const auto& job : rows) job->error = openai::ApiError{503, e.what(), "server_error"};
  } catch (const std::exception& e) {
    for (const auto& job : rows) job->error = openai::ApiError{500, e.what(), "server_error"};
  }
}

}  // namespace lmx::cli
