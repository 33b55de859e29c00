#!/usr/bin/env python3
"""Throughput and latency of OpenAI-compatible servers under concurrent streaming clients.

    python scripts/bench/serve.py MODEL.gguf [--clients 1 4 8] [--parallel 4] [--tokens 64]
        [--llama-server PATH] [--rounds 3] [--threads N]

Starts `glm serve MODEL --parallel P` (and, with --llama-server, `llama-server -m MODEL
--parallel P` from the same llama.cpp source), then for each client count runs that many
clients at once, each streaming one chat completion of --tokens tokens (ignore_eos, greedy)
after the same short prompt. Servers are alternated round by round. Per run it records the
time to first token of every client, each client's generation rate (tokens after the first
over the time after the first) and the total rate (all generated tokens over the wall time
of the run). Reports medians over the rounds, and ratios: glm against llama-server, and
glm with N clients against glm with one (what batching buys).

Standard library only. Nothing else should run on the machine meanwhile.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

PROMPT = "Write a long story about a lighthouse keeper and the sea."


def start(cmd, ready_pattern, log_path):
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.2)
        text = open(log_path).read()
        found = re.search(ready_pattern, text)
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            sys.exit(f"{cmd[0]} exited:\n{text}")
    proc.kill()
    sys.exit(f"{cmd[0]} did not start in time")


def free_port():
    """A port nothing listens on now (llama-server does not take port 0)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_one(port, tokens, out):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({
        "model": "bench", "stream": True, "temperature": 0, "max_tokens": tokens,
        "ignore_eos": True, "messages": [{"role": "user", "content": PROMPT}],
        "chat_template_kwargs": {"enable_thinking": False},
    })
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    first = None
    pieces = 0
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        delta = json.loads(line[5:])["choices"]
        if delta and (delta[0]["delta"].get("content") or delta[0]["delta"].get("reasoning_content")):
            pieces += 1
            if first is None:
                first = time.perf_counter()
    done = time.perf_counter()
    out.append({"ttft": (first or done) - started, "after_first": done - (first or done), "pieces": pieces})


def run(port, clients, tokens):
    results = []
    threads = [threading.Thread(target=stream_one, args=(port, tokens, results)) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "ttft": statistics.median(r["ttft"] for r in results),
        "client_rate": statistics.median((tokens - 1) / max(r["after_first"], 1e-9) for r in results),
        "total_rate": clients * tokens / wall,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--glm", default=os.path.expanduser("~/.cache/glm-target/release/glm"))
    ap.add_argument("--llama-server")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    args = ap.parse_args()

    servers = {"glm": start(
        [args.glm, "serve", args.model, "--alias", "bench", "--port", "0", "--parallel", str(args.parallel),
         "-c", str(args.ctx), "-t", str(args.threads), "--queue", "64"],
        r"listening on http://[0-9.]+:(\d+)", "/tmp/glm-bench-serve.log")}
    if args.llama_server:
        servers["llama-server"] = start(
            [args.llama_server, "-m", args.model, "--port", str(free_port()), "--parallel", str(args.parallel),
             "-c", str(args.ctx * args.parallel), "-t", str(args.threads), "--jinja"],
            r"listening on http://[0-9.]+:(\d+)", "/tmp/llama-bench-serve.log")
    try:
        for _, port in servers.values():
            run(port, 1, 8)  # warm-up
        results = {name: {c: [] for c in args.clients} for name in servers}
        for _ in range(args.rounds):
            for clients in args.clients:
                for name, (_, port) in servers.items():
                    results[name][clients].append(run(port, clients, args.tokens))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()

    def med(name, clients, key):
        return statistics.median(r[key] for r in results[name][clients])

    print(f"model {os.path.basename(args.model)}, --parallel {args.parallel}, {args.tokens} tokens per client, "
          f"{args.rounds} rounds, {args.threads} threads\n")
    print("| server | clients | time to first token (s) | tokens/s per client | total tokens/s |")
    print("|---|---:|---:|---:|---:|")
    for name in servers:
        for c in args.clients:
            print(f"| {name} | {c} | {med(name, c, 'ttft'):.3f} | {med(name, c, 'client_rate'):.1f} "
                  f"| {med(name, c, 'total_rate'):.1f} |")
    print()
    base = args.clients[0]
    for c in args.clients[1:]:
        print(f"glm total tokens/s, {c} clients / {base}: {med('glm', c, 'total_rate') / med('glm', base, 'total_rate'):.2f}x")
    if "llama-server" in servers:
        for c in args.clients:
            print(f"glm / llama-server total tokens/s, {c} clients: "
                  f"{med('glm', c, 'total_rate') / med('llama-server', c, 'total_rate'):.3f}")


if __name__ == "__main__":
    main()
