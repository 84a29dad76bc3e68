#!/usr/bin/env python3
"""Load on an OpenAI-compatible server: N clients at once, each asking for completions.

Works against `lmx serve` and any other server with /v1/completions (vLLM, llama.cpp's
server; `transformers serve` with --chat), so the same load measures lmx and a peer.
Standard library only. Prints one JSON object: the clients, the requests, the tokens
generated (as the replies' usage counts them), the wall time, the aggregate tokens a second
and the median and worst request latency.

--lengths gives the requests mixed lengths (client k's request i asks for entry k + i, in
turn), as a server's users do: that is what continuous batching is for, a short request that
comes while long ones decode joins them and is answered in its own time. The output then
also has the mean latency by length.

  bench/serve_load.py --url http://127.0.0.1:8080 --clients 8 --requests 2 --max-tokens 256
"""
import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request


def ask(url, path, body, timeout):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        reply = json.load(r)
    usage = reply.get("usage") or {}
    return time.perf_counter() - t0, usage.get("completion_tokens", 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--model", default="", help="the request's model field (some servers need it)")
    p.add_argument("--clients", type=int, default=8, help="requests in flight at once")
    p.add_argument("--requests", type=int, default=1, help="requests each client sends, one after another")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--lengths", default="", help="max_tokens in turn, e.g. 16,256,64 (in place of --max-tokens)")
    p.add_argument("--json-every", type=int, default=0,
                   help="every Nth request (client k's request i where (k + i) %% N == 0) held to a JSON object "
                        "(response_format json_object)")
    p.add_argument("--prompt", default="The history of the printing press begins")
    p.add_argument("--chat", action="store_true", help="ask /v1/chat/completions (for servers without /v1/completions)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--spans", action="store_true", help="also list each request's start and end (s from the start)")
    a = p.parse_args()

    lengths = [int(x) for x in a.lengths.split(",")] if a.lengths else [a.max_tokens]
    latencies, tokens, errors, spans, by_length = [], [], [], [], {}
    lock = threading.Lock()

    def client(k):
        for i in range(a.requests):
            text = f"{a.prompt} ({k}.{i})"
            n_max = lengths[(k + i) % len(lengths)]
            body = {"max_tokens": n_max, "temperature": 0}
            if a.json_every and (k + i) % a.json_every == 0:
                body["response_format"] = {"type": "json_object"}
            if a.chat:
                body["messages"] = [{"role": "user", "content": text}]
            else:
                body.update(prompt=text, ignore_eos=True)
            if a.model:
                body["model"] = a.model
            try:
                t_ask = time.perf_counter() - t0
                dt, n = ask(a.url, "/v1/chat/completions" if a.chat else "/v1/completions", body, a.timeout)
                with lock:
                    latencies.append(dt)
                    tokens.append(n)
                    spans.append((round(t_ask, 4), round(t_ask + dt, 4)))
                    by_length.setdefault(n_max, []).append(dt)
            except Exception as e:  # noqa: BLE001 - reported, not raised
                with lock:
                    errors.append(str(e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out = {"clients": a.clients, "requests": len(latencies), "errors": errors[:3], "tokens": sum(tokens),
           "wall_s": round(wall, 4), "tok_per_s": round(sum(tokens) / wall, 1) if wall > 0 else 0,
           "median_latency_s": round(statistics.median(latencies), 4) if latencies else None,
           "max_latency_s": round(max(latencies), 4) if latencies else None}
    if a.lengths:
        out["mean_latency_s_by_max_tokens"] = {n: round(statistics.mean(v), 4) for n, v in sorted(by_length.items())}
    if a.spans:
        out["spans_s"] = sorted(spans)
    print(json.dumps(out))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
