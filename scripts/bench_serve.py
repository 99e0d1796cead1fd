#!/usr/bin/env python3
"""Load for an OpenAI-compatible server (`realm serve`, llama.cpp's
`llama-server`): CLIENTS threads each send REQUESTS text completions of
MAX_TOKENS tokens, one after another, and the run reports the generated
tokens per second over the whole run and the requests' mean latency.

Every request asks for the same work from either server: greedy decoding,
a fixed token count, and end-of-generation tokens banned by a logit bias
(`--ban`, ids as the model's vocabulary has them), so that no answer ends
early. The generated tokens are counted from each answer's `usage`.

Usage: scripts/bench_serve.py URL [--clients 8] [--requests 2]
       [--max-tokens 128] [--ban 0,2]
"""

import argparse
import json
import threading
import time
import urllib.request


def complete(url, prompt, max_tokens, ban):
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": {str(t): -100 for t in ban},
    }
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        answer = json.load(r)
    return answer["usage"]["completion_tokens"], time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2, help="per client")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ban", default="0,2", help="token ids to ban (end of generation)")
    a = ap.parse_args()
    ban = [int(t) for t in a.ban.split(",") if t]
    # One request first, not timed: both servers warm up.
    complete(a.url, "Hello", 4, ban)
    results, lock = [], threading.Lock()

    def client(c):
        for r in range(a.requests):
            prompt = f"Story {c}.{r}: Once upon a time"
            got = complete(a.url, prompt, a.max_tokens, ban)
            with lock:
                results.append(got)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(n for n, _ in results)
    latency = sum(s for _, s in results) / len(results)
    print(
        json.dumps(
            {
                "clients": a.clients,
                "requests": len(results),
                "completion_tokens": tokens,
                "seconds": round(wall, 3),
                "tokens_per_second": round(tokens / wall, 1),
                "mean_latency_s": round(latency, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
