#include "serve_scheduler.h"

#include <algorithm>
#include <cstdio>
#include <limits>

#include "core/error.h"

namespace lmx::cli {
namespace {

// A request that only scores its prompt (echo with no new tokens), as evaluation harnesses
// send their loglikelihood requests.
bool scores_only(const openai::Request& r) { return r.echo && r.options.max_tokens == 0; }
// Whether request r may decode in a batch led by `lead`: both generate, they draw alike, and
// both or neither want logprobs (scored steps run one at a time and read their scores back,
// which would slow the others). Requests that only score their prompts share a pass whatever
// their options. A reply held to JSON joins too: while one decodes, the steps run one at a
// time and its draws are made on the host.
bool joins(const openai::Request& r, const openai::Request& lead) {
  if (scores_only(r) != scores_only(lead)) return false;
  return scores_only(lead) ||
         (draws_alike(r.options, lead.options) && (r.options.logprobs >= 0) == (lead.options.logprobs >= 0));
}

}  // namespace

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

std::vector<std::shared_ptr<Job>> Scheduler::submit(std::vector<openai::Request> requests) {
  std::vector<std::shared_ptr<Job>> jobs;
  for (openai::Request& r : requests) jobs.push_back(std::make_shared<Job>(std::move(r)));
  {
    std::lock_guard lock(m_);
    if (stopping_) throw openai::ApiError{503, "the server is stopping", "server_error"};
    queue_.insert(queue_.end(), jobs.begin(), jobs.end());
  }
  cv_.notify_all();
  return jobs;
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
    const bool scores = scores_only(jobs[0]->request);
    const size_t first = jobs.size();
    if (scores)
      run_scores(jobs);
    else if (jobs.size() == 1 && max_batch_ == 1)
      run_alone(*jobs[0]);
    else
      run_batch(jobs);  // and those that joined it, added to jobs
    // A line a run: how many requests (and how many joined it), from when (seconds since
    // the server started), how many tokens, how long, and which decode step.
    int tokens = 0;
    for (const auto& job : jobs) tokens += scores ? job->metrics.prompt_tokens : job->metrics.generated_tokens;
    const std::string path = model_.metrics().decode_path;
    auto seconds = [](auto d) { return std::chrono::duration<double>(d).count(); };
    const char* what = jobs.size() == 1 ? "request" : scores ? "requests scored together" : "requests decoded together";
    const std::string joined = jobs.size() > first ? " (" + std::to_string(jobs.size() - first) + " joined)" : "";
    std::fprintf(stderr, "lmx serve: %zu %s%s at +%.3f s (%s): %d tokens in %.3f s\n", jobs.size(), what,
                 joined.c_str(), seconds(t0 - started_), path.empty() ? "no decode step" : path.c_str(), tokens,
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
  // How a request may share its run: joins().
  std::vector<std::shared_ptr<Job>> jobs{queue_.front()};
  queue_.pop_front();
  // Clients that start together reach the server a little apart: the first may wait for
  // the rest, rather than run alone while they queue behind it.
  running_ = jobs;
  if (max_batch_ > 1 && gather_.count() > 0) {
    cv_.wait_for(lock, gather_, [&] { return stopping_ || int(queue_.size()) + 1 >= max_batch_; });
    if (stopping_) {  // stop() refused the queue meanwhile; this one too
      jobs[0]->error = openai::ApiError{503, "the server is stopping", "server_error"};
      jobs[0]->finish();
      return {};
    }
  }
  const std::vector<std::shared_ptr<Job>> more = take_joining(jobs[0]->request, size_t(max_batch_) - 1, false);
  jobs.insert(jobs.end(), more.begin(), more.end());
  running_ = jobs;
  return jobs;
}

std::vector<std::shared_ptr<Job>> Scheduler::take_joining(const openai::Request& lead, size_t room, bool in_order) {
  std::vector<std::shared_ptr<Job>> jobs;
  for (auto it = queue_.begin(); it != queue_.end() && jobs.size() < room;) {
    if (in_order && !joins((*it)->request, lead)) break;
    if (joins((*it)->request, lead)) {
      jobs.push_back(*it);
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
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
    // The ids chat() and generate() would run, made once: echo scores them too.
    const std::vector<int32_t> ids = prompt_ids(r);
    for (const Token& t : model_.generate_ids(ids, r.options, job.stop_token())) job.push(t);
    job.metrics = model_.metrics();  // the stream has ended: its metrics are in
    job.error = stream_error();
    if (!job.error && r.echo) {
      Job* const one[] = {&job};
      echo(one, {&ids, 1});
    }
  } catch (const Error& e) {  // the model's checks of the request: a bad template variable, a long prompt
    job.error = openai::ApiError{400, e.what()};
  } catch (const std::exception& e) {
    job.error = openai::ApiError{500, std::string("internal error: ") + e.what(), "server_error"};
  }
}

std::vector<int32_t> Scheduler::prompt_ids(const openai::Request& r) const {
  return r.chat ? model_.chat_ids(r.messages, r.options) : r.prompt_ids.empty() ? model_.tokenize(r.prompt)
                                                                                 : r.prompt_ids;
}

void Scheduler::echo(std::span<Job* const> jobs, std::span<const std::vector<int32_t>> ids) {
  std::vector<Job*> scoring;
  std::vector<std::vector<int32_t>> texts;
  int top = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const openai::Request& r = jobs[i]->request;
    jobs[i]->echo_text = r.prompt_ids.empty() ? r.prompt : model_.detokenize(ids[i]);
    if (r.options.logprobs < 0) continue;
    scoring.push_back(jobs[i]);
    texts.push_back(ids[i]);
    top = std::max(top, r.options.logprobs);
  }
  if (scoring.empty()) return;
  // Scored together with the most alternatives any asks for: a shorter list is its head.
  std::vector<std::vector<Token>> scores = model_.score_batch(texts, top);
  for (size_t k = 0; k < scoring.size(); ++k) {
    const size_t keep = size_t(scoring[k]->request.options.logprobs);
    std::vector<Token>& echoed = scoring[k]->echoed;
    echoed.resize(1);
    echoed[0].id = texts[k].at(0);
    echoed[0].logprob = std::numeric_limits<float>::quiet_NaN();  // nothing before it scores it
    for (Token& t : scores[k]) {
      if (t.top_logprobs.size() > keep) t.top_logprobs.resize(keep);
      echoed.push_back(std::move(t));
    }
  }
}

Scheduler::Admitted Scheduler::admit(const std::vector<std::shared_ptr<Job>>& jobs) {
  Admitted a;
  for (const auto& job : jobs) {
    try {
      std::vector<int32_t> ids = prompt_ids(job->request);
      check_prompt(info_, ids);
      a.jobs.push_back(job.get());
      a.ids.push_back(std::move(ids));
    } catch (const Error& e) {  // a template error, a prompt past the context: answered at once
      job->error = openai::ApiError{400, e.what()};
      job->finish();
    }
  }
  return a;
}

namespace {

// Runs `work` for `jobs`; an error from it fails them all: 503 for a full device (the
// client may retry), 500 else.
template <class Work>
void for_all(std::span<Job* const> jobs, Work&& work) {
  try {
    work();
  } catch (const OutOfMemory& e) {
    for (Job* job : jobs) job->error = openai::ApiError{503, e.what(), "server_error"};
  } catch (const std::exception& e) {
    for (Job* job : jobs) job->error = openai::ApiError{500, e.what(), "server_error"};
  }
}

}  // namespace

void Scheduler::run_scores(const std::vector<std::shared_ptr<Job>>& jobs) {
  const Admitted a = admit(jobs);
  for (size_t i = 0; i < a.jobs.size(); ++i) {
    a.jobs[i]->metrics.prompt_tokens = int(a.ids[i].size());
    a.jobs[i]->metrics.finish_reason = "length";  // max_tokens 0
  }
  for_all(a.jobs, [&] { echo(a.jobs, a.ids); });
}

void Scheduler::run_batch(std::vector<std::shared_ptr<Job>>& jobs) {
  Admitted a = admit(jobs);  // then, by the batch's row numbers, the jobs that join too
  std::vector<GenerateOptions> options;
  for (Job* job : a.jobs) options.push_back(job->request.options);
  const std::vector<std::vector<int32_t>> first = a.ids;
  const openai::Request lead = jobs[0]->request;
  std::vector<bool> ended(a.jobs.size());  // by row: its job has finished
  // Continuous batching: requests that queue while the batch decodes join it, each in the
  // place of one that has ended, and each ends (its client answered) as soon as its row does.
  RowFeed feed;
  feed.max_rows = size_t(max_batch_);
  feed.join = [&](size_t room) {
    std::vector<std::shared_ptr<Job>> joining;
    {
      std::lock_guard lock(m_);
      if (stopping_) return std::vector<RowRequest>();
      // In order: once the oldest waiting request cannot join, none joins past it, so that
      // the batch ends and that one runs (a batch joined without end would starve it).
      joining = take_joining(lead, room, true);
      running_.insert(running_.end(), joining.begin(), joining.end());
    }
    jobs.insert(jobs.end(), joining.begin(), joining.end());
    Admitted more = admit(joining);  // a prompt that cannot run is answered at once
    if (more.jobs.size() < joining.size()) {
      std::lock_guard lock(m_);
      std::erase_if(running_, [&](const std::shared_ptr<Job>& j) {
        const bool refused = !std::count(more.jobs.begin(), more.jobs.end(), j.get());
        return refused && std::count(joining.begin(), joining.end(), j);
      });
    }
    std::vector<RowRequest> out;
    for (size_t i = 0; i < more.jobs.size(); ++i) {
      out.push_back({more.ids[i], more.jobs[i]->request.options});
      a.jobs.push_back(more.jobs[i]);
      a.ids.push_back(std::move(more.ids[i]));
      ended.push_back(false);
    }
    return out;
  };
  feed.done = [&](size_t row, BatchResult r) {
    Job& job = *a.jobs[row];
    GenerateMetrics& m = job.metrics;
    m.prompt_tokens = int(a.ids[row].size());
    m.generated_tokens = int(r.ids.size());
    m.finish_reason = r.finish_reason;
    if (r.error.starts_with("[memory]"))  // no room for it beside the batch: the client may retry
      job.error = openai::ApiError{503, r.error, "server_error"};
    else if (!r.error.empty())
      job.error = openai::ApiError{400, r.error};
    if (job.request.echo && !job.error) return;  // its prompt is scored after the batch
    ended[row] = true;
    job.finish();
    std::lock_guard lock(m_);
    std::erase_if(running_, [&](const std::shared_ptr<Job>& j) { return j.get() == &job; });
  };
  auto open = [&] {  // the rows' jobs not yet finished
    std::vector<Job*> out;
    for (size_t row = 0; row < a.jobs.size(); ++row)
      if (!ended[row]) out.push_back(a.jobs[row]);
    return out;
  };
  try {
    model_.generate_rows(first, options, [&](size_t row, const Token& t) {
      a.jobs[row]->push(t);
      return !a.jobs[row]->stop_token().stop_requested();
    }, &feed);
  } catch (const OutOfMemory& e) {
    for (Job* job : open()) job->error = openai::ApiError{503, e.what(), "server_error"};
  } catch (const std::exception& e) {
    for (Job* job : open()) job->error = openai::ApiError{500, e.what(), "server_error"};
  }
  // Then the prompts of those that ask for echo, scored together.
  std::vector<Job*> echoing;
  std::vector<std::vector<int32_t>> echoed;
  for (size_t row = 0; row < a.jobs.size(); ++row) {
    if (ended[row] || !a.jobs[row]->request.echo || a.jobs[row]->error) continue;
    echoing.push_back(a.jobs[row]);
    echoed.push_back(a.ids[row]);
  }
  for_all(echoing, [&] { echo(echoing, echoed); });
}

}  // namespace lmx::cli
