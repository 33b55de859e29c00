#!/usr/bin/env python3
"""The RPC protocol's overhead: `glm bench` with the whole model on one `glm rpc-server`
on loopback, against `glm bench` with the model local, same file, same threads.

    python scripts/bench/rpc.py MODEL.gguf [--glm PATH] [--rounds 2] [--reps 3]
        [--threads N] [-p 512] [-n 128]

Starts `glm rpc-server -t N` on a free loopback port, then alternates, round by round,
`glm bench MODEL -t N` (local CPU) and `glm bench MODEL --rpc 127.0.0.1:PORT -ngl all`
(every layer and the output on the server's CPU, driven over TCP). Reports the mean
tokens/s of each test over the rounds and the ratio remote / local. On loopback the
bytes cost almost nothing to move; what the ratio shows is the protocol's own work per
step (graph serialization, one round trip per call).

Standard library only. Nothing else should run on the machine meanwhile.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(glm, threads):
    port = free_port()
    proc = subprocess.Popen([glm, "rpc-server", "--port", str(port), "-t", str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("glm rpc-server did not start")


def bench(glm, model, args, extra):
    cmd = [glm, "bench", model, "-p", str(args.p), "-n", str(args.n), "-r", str(args.reps),
           "-t", str(args.threads), "-o", "json"] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {("pp" if r["n_prompt"] else "tg") + str(r["n_prompt"] or r["n_gen"]): r["avg_ts"]
            for r in json.loads(out)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--glm", default=os.path.expanduser("~/.cache/glm-target/release/glm"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("-p", type=int, default=512)
    parser.add_argument("-n", type=int, default=128)
    args = parser.parse_args()
    server, endpoint = start_server(args.glm, args.threads)
    results = {"local": {}, "rpc": {}}
    try:
        for round_index in range(args.rounds):
            for name, extra in [("local", []), ("rpc", ["--rpc", endpoint, "-ngl", "all"])]:
                for test, rate in bench(args.glm, args.model, args, extra).items():
                    results[name].setdefault(test, []).append(rate)
                print(f"round {round_index + 1}: {name} done", file=sys.stderr)
    finally:
        server.kill()
        server.wait()
    print(f"| test | local t/s | one RPC server on loopback t/s | ratio |")
    print(f"|---|---:|---:|---:|")
    for test in results["local"]:
        local = statistics.mean(results["local"][test])
        remote = statistics.mean(results["rpc"][test])
        print(f"| {test} | {local:.2f} | {remote:.2f} | {remote / local:.3f} |")


if __name__ == "__main__":
    main()
