#!/usr/bin/env python3
"""Conversion speed at GLM's real vocabulary: one-pass `glm convert --quant q4_k_m` from
the BF16 checkpoint against `llama-quantize` alone on the BF16 GGUF of the same model
(llama.cpp's second step, built from the llama.cpp source glm links), and, when a Python
with llama.cpp's converter's requirements is given, against the whole two-step path
(`convert_hf_to_gguf.py --outtype bf16`, then `llama-quantize`).

    python scripts/bench/convert.py [--glm PATH] [--llama-quantize PATH] [--rounds 3]
        [--threads 2] [--models glm4-1.75b glm47flash-moe]
        [--converter-python PY --converter-dir SDIST/vendor/llama.cpp] [--update BENCHMARKS.md]

The checkpoints are those of scripts/bench/make-checkpoints.py (run it first with
--no-convert; glm4-1.75b: vocabulary 151552, 3.5 GB of BF16; glm47flash-moe: 154880,
7.8 GB). The BF16 GGUF llama-quantize reads is `glm convert --quant bf16` of the same
checkpoint (the same tensors convert_hf_to_gguf.py writes). Each round runs the two
sides one after the other, the order swapped every round (A B, B A, ...); each side's
input is read right before its step (so that both start from a warm page cache) and a
`sync` lets the previous step's writes land. Each step runs under /usr/bin/time for its
wall time, CPU time and peak resident memory. Reported: the mean wall time of each side,
the ratio glm / llama-quantize per round and overall, the ratio of CPU time, and the
peak memory. Outputs are deleted after each step.

Standard library only. Nothing else should run on the machine meanwhile.
"""

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import update_file  # noqa: E402  (the results section writer the benchmarks share)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BENCH_HOME = os.environ.get("GLM_BENCH_HOME", os.path.expanduser("~/.cache/glm-bench"))
MARK_BEGIN, MARK_END = "<!-- convert-results:begin -->", "<!-- convert-results:end -->"


def timed(cmd, log, threads):
    """Runs cmd (glm's conversion threads set to `threads`); returns (seconds, peak MiB,
    CPU seconds)."""
    stats = log + ".time"
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    # The previous step's output is on its way to disk; let it land first, so that no
    # step pays for another's writes.
    os.sync()
    with open(log, "w") as out:
        result = subprocess.run(["/usr/bin/time", "-f", "%e %M %U %S", "-o", stats] + cmd,
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        with open(log) as fh:
            tail = fh.read()[-2000:]
        sys.exit(f"convert.py: {' '.join(cmd)} failed:\n{tail}")
    with open(stats) as fh:
        secs, kib, user, system = fh.read().split()[-4:]
    return float(secs), int(kib) / 1024, float(user) + float(system)


def warm(paths):
    """Reads every file once, so that both sides find their input in the page cache."""
    for path in paths:
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass


def files_under(folder):
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n))]


def measure_model(args, model, work):
    checkpoint = os.path.join(args.checkpoints, model)
    if not os.path.exists(os.path.join(checkpoint, "model.safetensors.index.json")) and \
            not os.path.exists(os.path.join(checkpoint, "model.safetensors")):
        sys.exit(f"convert.py: no checkpoint at {checkpoint}; run scripts/bench/make-checkpoints.py "
                 f"{model} --no-convert first")
    bf16 = os.path.join(work, f"{model}-BF16.gguf")
    print(f"{model}: writing the BF16 GGUF llama-quantize reads", file=sys.stderr)
    timed([args.glm, "convert", checkpoint, "--quant", "bf16", "-o", bf16, "--force"],
          os.path.join(work, "bf16.log"), args.threads)
    inputs = {"glm": files_under(checkpoint), "llama": [bf16]}
    glm_out = os.path.join(work, "glm-Q4_K_M.gguf")
    llama_out = os.path.join(work, "llama-Q4_K_M.gguf")
    sides = {
        "glm": [args.glm, "convert", checkpoint, "--quant", "q4_k_m", "-o", glm_out, "--force"],
        "llama": [args.llama_quantize, bf16, llama_out, "Q4_K_M", str(args.threads)],
    }
    times = {"glm": [], "llama": []}
    peaks = {"glm": [], "llama": []}
    cpu = {"glm": [], "llama": []}
    for round_index in range(args.rounds):
        order = ["glm", "llama"] if round_index % 2 == 0 else ["llama", "glm"]
        for side in order:
            # Each side's input is read right before its step: with both inputs and the
            # outputs near the machine's memory, the other side's step may have pushed
            # part of it out of the page cache.
            warm(inputs[side])
            secs, peak, cpu_secs = timed(sides[side], os.path.join(work, f"{side}.log"), args.threads)
            times[side].append(secs)
            peaks[side].append(peak)
            cpu[side].append(cpu_secs)
            for out in (glm_out, llama_out):
                if os.path.exists(out):
                    os.remove(out)
            print(f"{model} round {round_index + 1}: {side} {secs:.1f} s, {peak:.0f} MiB", file=sys.stderr)
    result = {
        "model": model,
        "checkpoint_gb": sum(os.path.getsize(p) for p in files_under(checkpoint)) / 1e9,
        "glm": times["glm"], "llama": times["llama"],
        "glm_peak": max(peaks["glm"]), "llama_peak": max(peaks["llama"]),
        "ratios": [g / q for g, q in zip(times["glm"], times["llama"])],
        "cpu_ratio": statistics.mean(cpu["glm"]) / statistics.mean(cpu["llama"]),
    }
    os.remove(bf16)
    if args.converter_python:
        secs, peak, _ = timed([args.converter_python, os.path.join(ROOT, "benches", "hf_convert_bf16.py"),
                            args.converter_dir, checkpoint, os.path.join(work, "hf-BF16.gguf")],
                           os.path.join(work, "hf.log"), args.threads)
        os.remove(os.path.join(work, "hf-BF16.gguf"))
        result["hf_convert"] = (secs, peak)
    return result


def report(args, results):
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [f"Measured {when} on {cpu}, {os.cpu_count()} logical CPUs; {args.threads} threads for both "
             f"(`RAYON_NUM_THREADS` for glm, the thread argument of llama-quantize); {args.rounds} alternated "
             f"rounds; inputs in the page cache.", "",
             "| model | checkpoint | `glm convert --quant q4_k_m` | `llama-quantize` BF16 → Q4_K_M | "
             "**ratio glm / llama-quantize** | per-round ratios | CPU time ratio | "
             "peak memory glm / llama-quantize |",
             "|---|---:|---:|---:|---:|---|---:|---|"]
    for r in results:
        glm_mean, llama_mean = statistics.mean(r["glm"]), statistics.mean(r["llama"])
        lines.append(f"| {r['model']} | {r['checkpoint_gb']:.2f} GB | {glm_mean:.1f} s | {llama_mean:.1f} s | "
                     f"**{glm_mean / llama_mean:.3f}** | {', '.join(f'{x:.3f}' for x in r['ratios'])} | "
                     f"{r['cpu_ratio']:.3f} | {r['glm_peak']:.0f} MiB / {r['llama_peak']:.0f} MiB |")
    two_step = [r for r in results if "hf_convert" in r]
    if two_step:
        lines += ["", "| model | `convert_hf_to_gguf.py --outtype bf16` | + `llama-quantize` = two-step | "
                  "**ratio glm / two-step** |", "|---|---:|---:|---:|"]
        for r in two_step:
            hf, _ = r["hf_convert"]
            total = hf + statistics.mean(r["llama"])
            lines.append(f"| {r['model']} | {hf:.1f} s | {total:.1f} s | "
                         f"**{statistics.mean(r['glm']) / total:.3f}** |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glm", default=os.path.expanduser("~/.cache/glm-target/release/glm"))
    ap.add_argument("--llama-quantize", default=os.path.join(BENCH_HOME, "llama.cpp/build/bin/llama-quantize"))
    ap.add_argument("--checkpoints", default=os.path.join(BENCH_HOME, "checkpoints"))
    ap.add_argument("--models", nargs="+", default=["glm4-1.75b", "glm47flash-moe"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", default=None, help="scratch folder for the GGUFs [default: a temporary one "
                    "beside the checkpoints]")
    ap.add_argument("--converter-python", help="a Python with torch, transformers, safetensors and numpy "
                    "(tests/fixtures/requirements.txt), for the two-step path's first step")
    ap.add_argument("--converter-dir", help="with --converter-python: vendor/llama.cpp of the unpacked "
                    "llama-cpp-python 0.3.36 sdist (convert_hf_to_gguf.py and gguf-py)")
    ap.add_argument("--update", metavar="FILE", help="write the results between the markers of FILE")
    args = ap.parse_args()
    for tool in (args.glm, args.llama_quantize):
        if not os.access(tool, os.X_OK):
            sys.exit(f"convert.py: {tool} is not there; see BENCHMARKS.md (Reproduce)")
    if args.converter_python and not os.path.isfile(os.path.join(args.converter_dir or "", "convert_hf_to_gguf.py")):
        sys.exit("convert.py: --converter-python needs --converter-dir with convert_hf_to_gguf.py")
    work = args.work or tempfile.mkdtemp(prefix="convert-bench-", dir=BENCH_HOME)
    os.makedirs(work, exist_ok=True)
    results = [measure_model(args, model, work) for model in args.models]
    text = report(args, results)
    print(text)
    if args.update:
        update_file(args.update, text, MARK_BEGIN, MARK_END)


if __name__ == "__main__":
    main()
