#!/usr/bin/env python3
"""Benchmark driver for BENCHMARKS.md: glm against llama.cpp's own tools, same machine,
same threads, same run, alternated A/B.

    python scripts/bench/run.py --glm GLM --llama-bench LB --llama-completion LC [--quick]

Inputs: the GGUFs that make-checkpoints.py writes (GGUF_DIR/<model>-<TYPE>.gguf) and the
tools that build-reference-tools.sh builds. Sections (each can be skipped with --skip):

  bench      `glm bench FILE -p 512 -n 128 -r R -t T --output json` against
             `llama-bench -m FILE -p 512 -n 128 -r R -t T -o json`, ROUNDS alternated rounds
             (the tool that goes first alternates too); ratio glm / llama-bench of the mean
             tokens/s per test (pp512, tg128), with the per-round ratios.
  bandwidth  generation speed as a fraction of the machine's memory read bandwidth:
             bytes read per token (gguf_sizes.py) x tg128 tokens/s / bandwidth.
  run        `glm run FILE --raw -p PROMPT -n 128 --ignore-eos --temp 0 -t T -c 4096`
             against `llama-completion -m FILE -p PROMPT -n 128 --ignore-eos --temp 0 -t T
             -c 4096 -no-cnv --no-display-prompt`: wall time from process start to exit
             (model load included) and time to first token (process start to the first
             visible byte on stdout), alternated, ROUNDS rounds, medians and ratios.
  mtp        on the NextN model, alternated: `glm bench -p 0 -n 128` with and without
             --mtp (tg tokens/s, speedup), and `glm run` with --mtp-on / --mtp-off
             (generation tokens/s, speedup, wall time, acceptance rate read from glm's
             stderr with --mtp-regex).

The report (markdown) is printed, written to OUT_DIR/report-<time>.md with the raw
measurements beside it as JSON, and with --update FILE put between the markers
`<!-- bench-results:begin -->` and `<!-- bench-results:end -->` of FILE (BENCHMARKS.md).
Run it on an otherwise idle machine; every child process inherits this one's priority.
"""

import argparse
import datetime
import json
import os
import platform
import re
import select
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_sizes  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH_HOME = os.environ.get("GLM_BENCH_HOME", os.path.expanduser("~/.cache/glm-bench"))
PROMPT = ("The old lighthouse keeper climbed the stairs every evening to light the lamp, and "
          "while the ships passed far below he wrote down the names of the ones he could read. "
          "One night a small boat without a name came close to the rocks, and")
MARK_BEGIN, MARK_END = "<!-- bench-results:begin -->", "<!-- bench-results:end -->"
GLM_STATS = re.compile(r"prompt: (\d+) tokens, ([\d.]+) tok/s \| generation: (\d+) tokens, ([\d.]+) tok/s")
LC_PROMPT = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
LC_EVAL = re.compile(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs")

errors = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_capture(cmd, timeout):
    """Runs cmd; returns (seconds, first visible stdout byte seconds or None, stdout, stderr, rc)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, bufsize=0)
        first, out = None, []
        deadline = t0 + timeout
        while True:
            ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.perf_counter()))
            if not ready:  # no output until the deadline
                p.kill()
                break
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            if first is None and chunk.strip():
                first = time.perf_counter() - t0
            out.append(chunk)
        try:
            rc = p.wait(timeout=max(1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        total = time.perf_counter() - t0
        err.seek(0)
        return total, first, b"".join(out).decode("utf-8", "replace"), err.read().decode("utf-8", "replace"), rc


def checked(what, cmd, timeout):
    log("+ " + shlex.join(cmd))
    total, first, out, err, rc = run_capture(cmd, timeout)
    if rc != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        errors.append(f"{what}: exit status {rc}: {shlex.join(cmd)}\n{tail}")
        log(f"FAILED ({what}), exit status {rc}:\n{tail}")
        return None
    return total, first, out, err


def warm_page_cache(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# --------------------------------------------------------------------------------------
# bench: glm bench vs llama-bench
# --------------------------------------------------------------------------------------

def test_name(rec):
    if rec.get("n_gen", 0) == 0:
        return f"pp{rec['n_prompt']}"
    if rec.get("n_prompt", 0) == 0:
        return f"tg{rec['n_gen']}"
    return f"pp{rec['n_prompt']}+tg{rec['n_gen']}"


def bench_records(what, cmd, timeout):
    res = checked(what, cmd, timeout)
    if res is None:
        return None
    try:
        records = json.loads(res[2])
    except json.JSONDecodeError as e:
        errors.append(f"{what}: stdout is not JSON ({e}): {res[2][:300]!r}")
        return None
    return {test_name(r): r for r in records}


def bench_section(args, files, data):
    rows = []
    for model, qtype, path in files:
        glm_cmd = [args.glm, "bench", path, "-p", str(args.n_prompt), "-n", str(args.n_gen), "-r", str(args.reps),
                   "-t", str(args.threads), "--output", "json"] + shlex.split(args.glm_bench_args)
        lb_cmd = [args.llama_bench, "-m", path, "-p", str(args.n_prompt), "-n", str(args.n_gen), "-r", str(args.reps),
                  "-t", str(args.threads), "-o", "json"] + shlex.split(args.llama_bench_args)
        if args.self_test:
            glm_cmd = lb_cmd
        warm_page_cache(path)
        rounds = []
        for r in range(args.rounds):
            order = [("glm", glm_cmd), ("llama", lb_cmd)]
            if r % 2:
                order.reverse()
            got = {}
            for who, cmd in order:
                got[who] = bench_records(f"{who} bench {model} {qtype} round {r + 1}", cmd, args.timeout)
            rounds.append(got)
        data.setdefault("bench", []).append({"model": model, "type": qtype, "rounds": rounds})
        tests = sorted({t for g in rounds for side in g.values() if side for t in side}, key=lambda t: t[:2] != "pp")
        for t in tests:
            g = [rd["glm"][t]["avg_ts"] for rd in rounds if rd["glm"] and t in rd["glm"]]
            lb = [rd["llama"][t]["avg_ts"] for rd in rounds if rd["llama"] and t in rd["llama"]]
            paired = [rd["glm"][t]["avg_ts"] / rd["llama"][t]["avg_ts"] for rd in rounds
                      if rd["glm"] and rd["llama"] and t in rd["glm"] and t in rd["llama"]]
            pair = [rd for rd in rounds if rd["glm"] and rd["llama"] and t in rd["glm"] and t in rd["llama"]]
            mismatch = [k for k in ("n_threads", "n_batch", "n_ubatch", "type_k", "type_v", "flash_attn")
                        if pair and k in pair[0]["glm"][t] and k in pair[0]["llama"][t]
                        and pair[0]["glm"][t][k] != pair[0]["llama"][t][k]]
            rows.append(dict(model=model, type=qtype, test=t, glm=mean(g), glm_sd=sd(g), llama=mean(lb), llama_sd=sd(lb),
                             ratio=mean(g) / mean(lb) if g and lb else None, paired=paired, mismatch=mismatch))
    return rows


# --------------------------------------------------------------------------------------
# run: glm run vs llama-completion, end to end and time to first token
# --------------------------------------------------------------------------------------

def glm_run_cmd(args, path, extra=()):
    return ([args.glm, "run", path, "--raw", "-p", args.prompt, "-n", str(args.n_gen), "--ignore-eos", "--temp", "0",
             "-t", str(args.threads), "-c", str(args.ctx)] + list(extra) + shlex.split(args.glm_run_args))


def completion_cmd(args, path):
    return ([args.llama_completion, "-m", path, "-p", args.prompt, "-n", str(args.n_gen), "--ignore-eos", "--temp", "0",
             "-t", str(args.threads), "-c", str(args.ctx), "-no-cnv", "--no-display-prompt"]
            + shlex.split(args.completion_args))


def parse_glm_run(err):
    m = GLM_STATS.search(err)
    if not m:
        return {}
    return {"prompt_tokens": int(m[1]), "prompt_tps": float(m[2]), "gen_tokens": int(m[3]), "gen_tps": float(m[4])}


def parse_completion(err):
    out = {}
    m = LC_PROMPT.search(err)
    if m:
        out["prompt_tokens"] = int(m[2])
        out["prompt_tps"] = 1000 * int(m[2]) / float(m[1]) if float(m[1]) else None
    m = LC_EVAL.search(err)
    if m:
        out["gen_tokens"] = int(m[2]) + 1  # the first token is sampled from the prompt's logits
        out["gen_tps"] = 1000 * int(m[2]) / float(m[1]) if float(m[1]) else None
    return out


def run_section(args, files, data):
    rows = []
    for model, qtype, path in files:
        cmds = {"glm": glm_run_cmd(args, path), "llama": completion_cmd(args, path)}
        warm_page_cache(path)
        samples = {"glm": [], "llama": []}
        texts = {}
        for r in range(args.run_rounds):
            order = ["glm", "llama"] if r % 2 == 0 else ["llama", "glm"]
            for who in order:
                res = checked(f"{who} run {model} {qtype} round {r + 1}", cmds[who], args.timeout)
                if res is None:
                    continue
                total, first, out, err = res
                stats = parse_glm_run(err) if who == "glm" else parse_completion(err)
                samples[who].append({"wall_s": total, "ttft_s": first, **stats})
                texts.setdefault(who, out.strip())
        data.setdefault("run", []).append({"model": model, "type": qtype, "samples": samples,
                                           "commands": {k: shlex.join(v) for k, v in cmds.items()}})
        g, lb = samples["glm"], samples["llama"]
        rows.append(dict(
            model=model, type=qtype,
            glm_wall=median(s["wall_s"] for s in g), llama_wall=median(s["wall_s"] for s in lb),
            glm_ttft=median(s["ttft_s"] for s in g if s["ttft_s"] is not None),
            llama_ttft=median(s["ttft_s"] for s in lb if s["ttft_s"] is not None),
            glm_tokens=g[0].get("prompt_tokens") if g else None, llama_tokens=lb[0].get("prompt_tokens") if lb else None,
            glm_gen=g[0].get("gen_tokens") if g else None, llama_gen=lb[0].get("gen_tokens") if lb else None,
            same_text=(texts.get("glm") == texts.get("llama")) if len(texts) == 2 else None))
    return rows


# --------------------------------------------------------------------------------------
# mtp: glm run with and without MTP on the NextN model
# --------------------------------------------------------------------------------------

def mtp_section(args, data):
    path = os.path.join(args.gguf_dir, f"{args.mtp_model}-{args.mtp_type.upper()}.gguf")
    if not os.path.exists(path):
        errors.append(f"mtp: {path} is missing (make-checkpoints.py glm45-moe-nextn)")
        return []
    warm_page_cache(path)
    tg = f"tg{args.n_gen}"
    bench_cmds = {who: [args.glm, "bench", path, "-p", "0", "-n", str(args.n_gen), "-r", str(args.reps),
                        "-t", str(args.threads), "--output", "json"] + shlex.split(extra)
                  for who, extra in (("off", ""), ("on", args.mtp_bench_on))}
    bench = {"off": [], "on": []}
    for r in range(args.rounds):
        for who in (["off", "on"] if r % 2 == 0 else ["on", "off"]):
            recs = bench_records(f"mtp bench {who} round {r + 1}", bench_cmds[who], args.timeout)
            if recs and tg in recs:
                bench[who].append(recs[tg]["avg_ts"])
    run_cmds = {"off": glm_run_cmd(args, path, shlex.split(args.mtp_off)),
                "on": glm_run_cmd(args, path, shlex.split(args.mtp_on))}
    regex = re.compile(args.mtp_regex)
    samples = {"off": [], "on": []}
    for r in range(args.run_rounds):
        for who in (["off", "on"] if r % 2 == 0 else ["on", "off"]):
            res = checked(f"mtp run {who} round {r + 1}", run_cmds[who], args.timeout)
            if res is None:
                continue
            total, first, out, err = res
            s = {"wall_s": total, **parse_glm_run(err)}
            m = regex.search(err)
            if m and regex.groups >= 2:  # drafted, accepted
                s["drafted"], s["accepted"] = int(m.group(1)), int(m.group(2))
                s["acceptance"] = s["accepted"] / s["drafted"] if s["drafted"] else None
            elif m:  # one number: a fraction, or a percentage
                value = float(m.group(1))
                s["acceptance"] = value / 100 if value > 1 or "%" in m.group(0) else value
            else:
                s["stderr_tail"] = err.strip().splitlines()[-3:]
            samples[who].append(s)
    data["mtp"] = {"file": path, "bench": bench, "samples": samples,
                   "commands": {f"bench {k}": shlex.join(v) for k, v in bench_cmds.items()}
                   | {f"run {k}": shlex.join(v) for k, v in run_cmds.items()}}
    off, on = samples["off"], samples["on"]
    off_tps, on_tps = median(s.get("gen_tps") for s in off), median(s.get("gen_tps") for s in on)
    b_off, b_on = mean(bench["off"]), mean(bench["on"])
    wall_off, wall_on = median(s["wall_s"] for s in off), median(s["wall_s"] for s in on)
    drafted, accepted = sum(s.get("drafted", 0) for s in on), sum(s.get("accepted", 0) for s in on)
    acceptance = accepted / drafted if drafted else median(s.get("acceptance") for s in on)
    return [dict(model=args.mtp_model, type=args.mtp_type.upper(), bench_off=b_off, bench_on=b_on,
                 bench_speedup=b_on / b_off if b_on and b_off else None, off_tps=off_tps, on_tps=on_tps,
                 speedup=on_tps / off_tps if on_tps and off_tps else None,
                 acceptance=acceptance,
                 wall_ratio=wall_on / wall_off if wall_on and wall_off else None)]


# --------------------------------------------------------------------------------------
# helpers and report
# --------------------------------------------------------------------------------------

def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def sd(xs):
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def f(x, digits=2, suffix=""):
    return "–" if x is None else f"{x:.{digits}f}{suffix}"


def measure_bandwidth(args):
    if args.bandwidth:
        return float(args.bandwidth), "given"
    out = subprocess.run([os.path.join(HERE, "bandwidth.sh"), str(args.threads)], check=True,
                         capture_output=True, text=True).stdout.strip()
    return float(out.split()[0]), out


def machine():
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    return f"{cpu}, {os.cpu_count()} logical CPUs, {mem / 2**20:.0f} GiB RAM, Linux {platform.release()}"


def tool_version(cmd):
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (res.stdout + res.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def report(args, data, bench, run, mtp, bw):
    lines = [f"Measured {data['date']} on {data['machine']}; {args.threads} threads for every tool; "
             f"glm: `{data['glm_version']}`; llama.cpp tools: build `{data.get('llama_build', '?')}`; "
             f"memory read bandwidth {f(bw[0], 1)} GB/s ({bw[1]}).", ""]
    if bench:
        lines += [f"### `glm bench` vs `llama-bench` ({args.rounds} alternated rounds x {args.reps} repetitions)", "",
                  "| model | type | test | glm t/s | llama-bench t/s | ratio | per-round ratios |",
                  "|---|---|---|---:|---:|---:|---|"]
        for r in bench:
            note = f" (differs: {', '.join(r['mismatch'])})" if r["mismatch"] else ""
            lines.append(f"| {r['model']} | {r['type']} | {r['test']} | {f(r['glm'])} ± {f(r['glm_sd'])} | "
                         f"{f(r['llama'])} ± {f(r['llama_sd'])} | **{f(r['ratio'], 3)}** | "
                         f"{', '.join(f(x, 3) for x in r['paired'])}{note} |")
        lines.append("")
        tg = [r for r in bench if r["test"].startswith("tg")]
        if tg and bw[0]:
            lines += ["### Generation speed as a fraction of memory bandwidth", "",
                      "| model | type | MB read per token | glm tg t/s | glm GB/s | glm fraction | llama-bench fraction |",
                      "|---|---|---:|---:|---:|---:|---:|"]
            for r in tg:
                b = data["sizes"][f"{r['model']}-{r['type']}"]["per_token"]
                gbs = lambda tps: None if tps is None else tps * b / 1e9  # noqa: E731
                lines.append(f"| {r['model']} | {r['type']} | {b / 1e6:.0f} | {f(r['glm'])} | {f(gbs(r['glm']))} | "
                             f"{f(gbs(r['glm']) and gbs(r['glm']) / bw[0], 3)} | "
                             f"{f(gbs(r['llama']) and gbs(r['llama']) / bw[0], 3)} |")
            lines.append("")
    if run:
        lines += [f"### `glm run` vs `llama-completion`, {args.n_gen} tokens, load included ({args.run_rounds} "
                  "alternated rounds, medians)", "",
                  "| model | type | prompt tokens (glm / lc) | glm s | llama-completion s | ratio | "
                  "glm TTFT s | llama-completion TTFT s | TTFT ratio | same text |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in run:
            ratio = r["glm_wall"] / r["llama_wall"] if r["glm_wall"] and r["llama_wall"] else None
            tratio = r["glm_ttft"] / r["llama_ttft"] if r["glm_ttft"] and r["llama_ttft"] else None
            same = {True: "yes", False: "no", None: "–"}[r["same_text"]]
            lines.append(f"| {r['model']} | {r['type']} | {r['glm_tokens']} / {r['llama_tokens']} | {f(r['glm_wall'])} | "
                         f"{f(r['llama_wall'])} | **{f(ratio, 3)}** | {f(r['glm_ttft'])} | {f(r['llama_ttft'])} | "
                         f"{f(tratio, 3)} | {same} |")
        lines.append("")
    if mtp:
        lines += [f"### MTP (NextN) speculative decoding, greedy: `glm bench` tg{args.n_gen} ({args.rounds} alternated "
                  f"rounds) and `glm run` ({args.run_rounds} alternated rounds, medians)", "",
                  "| model | type | bench t/s without MTP | with MTP | speedup | run t/s without MTP | with MTP | "
                  "speedup | acceptance | run wall time ratio |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mtp:
            lines.append(f"| {r['model']} | {r['type']} | {f(r['bench_off'])} | {f(r['bench_on'])} | "
                         f"**{f(r['bench_speedup'], 3)}** | {f(r['off_tps'])} | {f(r['on_tps'])} | "
                         f"**{f(r['speedup'], 3)}** | {f(r['acceptance'], 3)} | {f(r['wall_ratio'], 3)} |")
        lines.append("")
    if errors:
        lines += ["### Errors", ""] + [f"- {e.splitlines()[0]}" for e in errors] + [""]
    return "\n".join(lines)


def update_file(path, text, begin=MARK_BEGIN, end=MARK_END):
    """Replaces what lies between the markers `begin` and `end` of the file by `text`."""
    with open(path, encoding="utf-8") as fh:
        doc = fh.read()
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path} lacks the markers {begin} / {end}")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{begin}\n{text}\n{end}{tail}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glm", default=os.path.expanduser("~/.cache/glm-target/release/glm"))
    ap.add_argument("--llama-bench", default=os.path.join(BENCH_HOME, "llama.cpp/build/bin/llama-bench"))
    ap.add_argument("--llama-completion", default=os.path.join(BENCH_HOME, "llama.cpp/build/bin/llama-completion"))
    ap.add_argument("--gguf-dir", default=os.path.join(BENCH_HOME, "gguf"))
    ap.add_argument("--models", nargs="+", default=["glm4-1.75b", "glm47flash-moe"])
    ap.add_argument("--types", nargs="+", default=["Q4_K_M", "Q8_0"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds of the bench section")
    ap.add_argument("--run-rounds", type=int, default=5, help="alternated rounds of the run and mtp sections")
    ap.add_argument("--reps", type=int, default=5, help="repetitions inside each glm bench / llama-bench call")
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--skip", nargs="*", default=[], choices=["bench", "run", "mtp"])
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 round, -r 2, glm4-1.75b Q4_K_M only, 1 run round, no MTP")
    ap.add_argument("--self-test", action="store_true", help="run llama-bench on both sides of the bench section")
    ap.add_argument("--bandwidth", help="GB/s; measured with bandwidth.sh when not given")
    ap.add_argument("--glm-bench-args", default="", help="extra arguments for glm bench")
    ap.add_argument("--llama-bench-args", default="", help="extra arguments for llama-bench")
    ap.add_argument("--glm-run-args", default="", help="extra arguments for glm run")
    ap.add_argument("--completion-args", default="", help="extra arguments for llama-completion")
    ap.add_argument("--mtp-model", default="glm45-moe-nextn")
    ap.add_argument("--mtp-type", default="Q4_K_M")
    ap.add_argument("--mtp-on", default="--mtp", help="glm run arguments that turn MTP on")
    ap.add_argument("--mtp-bench-on", default="--mtp", help="glm bench arguments that turn MTP on")
    ap.add_argument("--mtp-off", default="--no-mtp", help="glm run arguments that turn MTP off")
    ap.add_argument("--mtp-regex", default=r"mtp: (\d+) drafted, (\d+) accepted",
                    help="regex on glm run's stderr: two groups (drafted, accepted tokens), or one "
                         "(the acceptance as a fraction or a percentage)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per command")
    ap.add_argument("--out-dir", default=os.path.join(BENCH_HOME, "results"))
    ap.add_argument("--update", metavar="FILE", help="put the report between FILE's bench-results markers")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.reps, args.run_rounds = 1, 2, 1
        args.models, args.types = ["glm4-1.75b"], ["Q4_K_M"]
        args.skip = sorted(set(args.skip) | {"mtp"})

    need = [("--llama-bench", args.llama_bench)] if "bench" not in args.skip else []
    need += [("--llama-completion", args.llama_completion)] if "run" not in args.skip else []
    need += [("--glm", args.glm)] if not (args.self_test and set(args.skip) >= {"run", "mtp"}) else []
    for flag, tool in need:
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"run.py: {tool} is not an executable ({flag}); see BENCHMARKS.md")
    files = []
    for model in args.models:
        for qtype in args.types:
            path = os.path.join(args.gguf_dir, f"{model}-{qtype.upper()}.gguf")
            if not os.path.exists(path):
                raise SystemExit(f"run.py: {path} is missing; run scripts/bench/make-checkpoints.py first")
            files.append((model, qtype.upper(), path))

    data = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(),
            "glm_version": tool_version([args.glm, "--version"]) if os.access(args.glm, os.X_OK) else "?",
            "args": vars(args), "sizes": {}}
    for model, qtype, path in files:
        data["sizes"][f"{model}-{qtype}"] = gguf_sizes.bytes_per_token(path)
    bw = measure_bandwidth(args)
    log(f"bandwidth: {bw[1]}")
    bench = bench_section(args, files, data) if "bench" not in args.skip else []
    for entry in data.get("bench", []):
        for rd in entry["rounds"]:
            for rec in (rd.get("llama") or {}).values():
                data.setdefault("llama_build", f"{rec.get('build_commit')} ({rec.get('build_number')})")
    run = run_section(args, files, data) if "run" not in args.skip else []
    mtp = mtp_section(args, data) if "mtp" not in args.skip else []
    data["errors"] = errors

    text = report(args, data, bench, run, mtp, bw)
    print(text)
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, "report-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    with open(stem + ".md", "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    with open(stem + ".json", "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, default=str)
    log(f"report: {stem}.md, raw data: {stem}.json")
    if args.update:
        update_file(args.update, text)
        log(f"updated {args.update}")
    if errors:
        log("\n".join(errors))
        sys.exit(1)


if __name__ == "__main__":
    main()
