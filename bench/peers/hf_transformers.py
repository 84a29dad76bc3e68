#!/usr/bin/env python3
"""The peer: the same workloads as `lmx bench`, through HF transformers on the same GPU
(or, with --device cpu, on the same CPU as `lmx bench --device cpu`).

decode:   batch B, a prompt of --prompt-len random ids, --gen-len greedy tokens with a
          static KV cache (generate(cache_implementation="static")), timed with CUDA events;
          the prompt's forward pass alone gives the time to first token. --sampled-batch B...
          adds decode_sampled at those batch sizes, the same with generate() drawing with
          --temperature, --top-k, --top-p, --min-p and --repetition-penalty (as `lmx bench
          --decode` with those options), in the same process (a second process would load
          and compile the model again).
classify: --prompts prompts of --classify-len tokens, last-position logits only
          (logits_to_keep=1), batches of --classify-batch.
prefill:  one prompt of --prefill-len tokens, last-position logits only.
Each workload is warmed up, then timed --repeat times; the median is reported. A workload
that fails records its error instead of ending the run. Prints one JSON object. Where NVML
answers, each entry also has the GPU's SM clock and power over its timed runs
(peer_sm_clock_mhz, peer_sm_clock_min_mhz, peer_power_w), as lmx bench reports its own: at
the board's power cap the clock, and with it the speed, falls.

--rendezvous DIR --processes N lets N of these processes (one per model) share the GPU
without disturbing each other's timings: each first runs every workload once (for decode,
torch.compile of each shape, most of the peer's time), then marks DIR/ready.NAME, waits
until N processes are marked, and times its workloads holding an exclusive lock on
DIR/lock. Only the compilation overlaps; every timed pass runs alone and is warmed up again
just before it. (A process that dies early must be marked by its caller, as
bench/run_gpu.sh does.)

--device cpu runs the model on the CPU in bf16 with torch's threads, times with the wall
clock, and decodes with transformers' default (dynamic) cache: a static cache there means
torch.compile's C++ build, which is not what a CPU user of transformers runs.

  python3 bench/peers/hf_transformers.py /tmp/lmx-bench-models/llama-3.2-1b --decode --classify --prefill
  python3 bench/peers/hf_transformers.py /tmp/lmx-bench-models/qwen3-0.6b --device cpu --decode --prompt-len 128 --gen-len 64
"""
import argparse
import ctypes
import fcntl
import json
import os
import platform
import statistics
import sys
import threading
import time

import torch
import transformers


class Readings:
    """The GPU's SM clock and power, read through NVML every 5 ms by a thread while timed runs
    go (`with READINGS:`), summed until take() hands their means over. Reads nothing where
    NVML is missing. The NVML calls go through ctypes, which lets go of the interpreter lock
    while they run, so the timed work is not held up."""

    POWER_NOW = 186  # NVML_FI_DEV_POWER_INSTANT, milliwatts

    class Field(ctypes.Structure):  # nvmlFieldValue_t
        _fields_ = [("id", ctypes.c_uint), ("scope", ctypes.c_uint), ("timestamp", ctypes.c_longlong),
                    ("latency_us", ctypes.c_longlong), ("type", ctypes.c_int), ("result", ctypes.c_int),
                    ("value", ctypes.c_ulonglong)]

    def __init__(self):
        self.nvml = self.handle = None
        self.samples = []
        try:
            nvml = ctypes.CDLL("libnvidia-ml.so.1")
            handle = ctypes.c_void_p()
            # NVML numbers GPUs as the driver does; the peer runs on the first visible one.
            if nvml.nvmlInit_v2() == 0 and nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) == 0:
                self.nvml, self.handle = nvml, handle
        except OSError:
            pass

    def read(self):
        mhz, mw = ctypes.c_uint(), ctypes.c_uint()
        if self.nvml.nvmlDeviceGetClockInfo(self.handle, 1, ctypes.byref(mhz)) != 0:  # NVML_CLOCK_SM
            return None
        f = self.Field(id=self.POWER_NOW)
        if self.nvml.nvmlDeviceGetFieldValues(self.handle, 1, ctypes.byref(f)) == 0 and f.result == 0 and f.type == 1:
            watts = (f.value & 0xFFFFFFFF) / 1000  # an unsigned int in the value union
        elif self.nvml.nvmlDeviceGetPowerUsage(self.handle, ctypes.byref(mw)) == 0:  # a second's mean
            watts = mw.value / 1000
        else:
            return None
        return mhz.value, watts

    def __enter__(self):
        self.stop = threading.Event()
        if self.nvml is not None:
            def loop():
                while not self.stop.is_set():
                    r = self.read()
                    if r:
                        self.samples.append(r)
                    self.stop.wait(0.005)
            self.thread = threading.Thread(target=loop, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.nvml is not None:
            self.thread.join()

    def take(self):
        """The means since the last take(), as peer_* fields; none without samples."""
        samples, self.samples = self.samples, []
        if not samples:
            return {}
        return {"peer_sm_clock_mhz": round(sum(m for m, _ in samples) / len(samples)),
                "peer_sm_clock_min_mhz": min(m for m, _ in samples),
                "peer_power_w": round(sum(w for _, w in samples) / len(samples), 1)}


READINGS = Readings()
ON_CUDA = True  # main() sets it from --device: CUDA events, or the wall clock on the CPU


def timed(fn, warmup, repeat):
    for _ in range(warmup):
        fn()
    times = []
    if not ON_CUDA:  # the CPU: the wall clock around each call
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    with READINGS:
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def rendezvous(folder, name, processes, timeout_s=900):
    """Marks this process warm, waits for all `processes` marks, then takes the timing lock.

    Returns the lock's open file; the lock is held until the process ends."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, f"ready.{name}"), "w").close()
    deadline = time.monotonic() + timeout_s
    while sum(f.startswith("ready.") for f in os.listdir(folder)) < processes:
        if time.monotonic() > deadline:  # a peer that never marked: time anyway, say so
            print(f"hf_transformers.py: {processes} processes expected in {folder}, not all came; timing anyway",
                  file=sys.stderr)
            break
        time.sleep(0.2)
    lock = open(os.path.join(folder, "lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--decode", action="store_true")
    ap.add_argument("--classify", action="store_true")
    ap.add_argument("--prefill", action="store_true")
    ap.add_argument("--score", action="store_true",
                    help="--prompts texts of --prompt-len tokens: every token's log-probability, "
                         "--score-batch texts a forward pass")
    ap.add_argument("--score-batch", type=int, default=32)
    ap.add_argument("--batch", type=int, nargs="*", default=[1])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=1024)
    ap.add_argument("--classify-len", type=int, default=32)
    ap.add_argument("--classify-batch", type=int, default=1024)
    ap.add_argument("--prefill-len", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--min-p", type=float, default=0.0)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--sampled-batch", type=int, nargs="*", default=[])
    ap.add_argument("--rendezvous", metavar="DIR", help="compile alongside other processes, time alone (above)")
    ap.add_argument("--processes", type=int, default=1, help="how many processes meet at --rendezvous")
    args = ap.parse_args()
    if args.sampled_batch and args.temperature <= 0 and args.repetition_penalty == 1:
        ap.error("--sampled-batch needs --temperature above 0 or a --repetition-penalty")
    # Every option given explicitly, so that the model's generation_config.json decides nothing.
    greedy = dict(do_sample=False)
    sampling = dict(do_sample=args.temperature > 0, repetition_penalty=args.repetition_penalty)
    if args.temperature > 0:
        sampling.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        min_p=args.min_p if args.min_p > 0 else None)
    global ON_CUDA
    dev = args.device
    ON_CUDA = dev == "cuda"
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, device_map=dev)
    model.eval()
    vocab = model.config.vocab_size
    peer = f"transformers {transformers.__version__}"
    cache = dict(cache_implementation="static") if dev == "cuda" else {}
    results = []
    g = torch.Generator(device=dev).manual_seed(0)

    def run(entry, fn):
        READINGS.take()  # none left over from the compilation passes
        try:
            entry.update(fn())
            entry.update(READINGS.take())
        except Exception as e:  # one failing workload (say, out of memory) must not end the run
            entry["error"] = f"{type(e).__name__}: {e}"[:300]
        results.append(entry)
        if dev == "cuda":
            torch.cuda.empty_cache()

    jobs = []  # (entry, measure, the calls it times): measure() returns the entry's figures

    with torch.inference_mode():
        if args.decode:
            runs = [(b, greedy) for b in args.batch] + [(b, sampling) for b in args.sampled_batch]
            for b, options in runs:
                ids = torch.randint(0, vocab, (b, args.prompt_len), device=dev, generator=g)

                def gen(ids=ids, options=options):
                    return model.generate(ids, max_new_tokens=args.gen_len, min_new_tokens=args.gen_len,
                                          pad_token_id=0, **cache, **options)

                def first(ids=ids):  # the prompt's forward pass: the time to first token
                    return model(ids, logits_to_keep=1)

                def decode(b=b, gen=gen, first=first):
                    total = timed(gen, args.warmup, args.repeat)
                    prefill = timed(first, args.warmup, args.repeat)
                    return {"peer_tok_per_s": b * (args.gen_len - 1) / max(total - prefill, 1e-9),
                            "peer_time_to_first_token_s": prefill}
                entry = {"workload": "decode" if options is greedy else "decode_sampled", "batch": b,
                         "prompt_len": args.prompt_len, "gen_len": args.gen_len,
                         "peer": peer + (" (static cache)" if cache else " (dynamic cache)")}
                if options is sampling:
                    entry["peer_sampling"] = {k: v for k, v in sampling.items() if k != "do_sample"}
                jobs.append((entry, decode, [gen, first]))
        if args.classify:
            ids = torch.randint(0, vocab, (args.classify_batch, args.classify_len), device=dev, generator=g)

            def classify_once(ids=ids):
                # Every batch is queued before any answer is read back, as lmx bench does.
                picks = [model(ids, logits_to_keep=1).logits.argmax(-1)
                         for _ in range(0, args.prompts, args.classify_batch)]
                torch.cat(picks).cpu()
            jobs.append(({"workload": "classify", "batch": args.prompts, "prompt_len": args.classify_len, "peer": peer},
                         lambda: {"peer_prompts_per_s": args.prompts / timed(classify_once, args.warmup, args.repeat)},
                         [classify_once]))
        if args.score:
            ids = torch.randint(0, vocab, (args.prompts, args.prompt_len), device=dev, generator=g)

            def score_once(ids=ids):
                # As an evaluation harness scores loglikelihoods: the log-softmax over the
                # vocabulary in float at every position, each next token's entry kept.
                picks = []
                for i in range(0, args.prompts, args.score_batch):
                    batch = ids[i:i + args.score_batch]
                    logp = torch.log_softmax(model(batch).logits[:, :-1].float(), dim=-1)
                    picks.append(logp.gather(-1, batch[:, 1:, None])[..., 0])
                torch.cat(picks).cpu()
            jobs.append(({"workload": "score", "batch": args.prompts, "prompt_len": args.prompt_len, "peer": peer,
                          "peer_score_batch": args.score_batch},
                         lambda: {"peer_tok_per_s": args.prompts * args.prompt_len
                                  / timed(score_once, args.warmup, args.repeat)},
                         [score_once]))
        if args.prefill:
            ids = torch.randint(0, vocab, (1, args.prefill_len), device=dev, generator=g)

            def prefill_once(ids=ids):
                return model(ids, logits_to_keep=1).logits.argmax(-1).cpu()
            jobs.append(({"workload": "prefill", "batch": 1, "prompt_len": args.prefill_len, "peer": peer},
                         lambda: {"peer_tok_per_s": args.prefill_len / timed(prefill_once, args.warmup, args.repeat)},
                         [prefill_once]))

        lock = None
        if args.rendezvous:  # compile every shape now, beside the other processes
            for _, _, calls in jobs:
                for call in calls:
                    try:
                        call()
                    except Exception:  # the timed pass meets it again and records it
                        pass
                if dev == "cuda":
                    torch.cuda.empty_cache()
            lock = rendezvous(args.rendezvous, os.path.basename(os.path.normpath(args.model)), args.processes)
        for entry, measure, _ in jobs:
            run(entry, measure)
    where = ({"gpu": torch.cuda.get_device_name()} if dev == "cuda" else
             {"cpu": cpu_name(), "threads": torch.get_num_threads()})
    print(json.dumps({"model": args.model, **where, "peer": peer, "results": results}))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


if __name__ == "__main__":
    main()
