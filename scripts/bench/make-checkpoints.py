#!/usr/bin/env python3
"""Write the random-weight GLM checkpoints BENCHMARKS.md measures, and convert them to GGUF.

    python scripts/bench/make-checkpoints.py [--glm PATH] [MODEL ...]

Models (Hugging Face layout: bf16 safetensors in ~2 GB shards + index, config.json,
generation_config.json and the tokenizer files of the matching tests/fixtures model):

  glm4-1.75b       Glm4ForCausalLM, hidden 2048, FFN 6144, 24 layers, 16 heads, 2 KV heads,
                   vocabulary 151552 (1.75B parameters)
  glm47flash-moe   Glm4MoeLiteForCausalLM with GLM-4.7-Flash's per-layer dimensions
                   (hidden 2048, MLA q_lora 768 / kv_lora 512, nope 192 / rope 64 / v 256,
                   20 heads, dense FFN 10240, 64 experts of 1536, 4 used, 1 shared,
                   first layer dense, vocabulary 154880), 6 layers, no NextN layer
  glm45-moe-nextn  Glm4MoeForCausalLM with GLM-4.5-Air's per-layer dimensions (hidden 4096,
                   96 heads, 8 KV heads, head_dim 128, dense FFN 10944, experts of 1408,
                   8 used, 1 shared, first layer dense, no qk-norm, vocabulary 151552),
                   4 layers + 1 NextN (MTP) layer with its weights, 32 experts instead of
                   128 (--glm45-experts) so that the checkpoint stays near 8.6 GB

Only numpy is needed. Tensors are drawn and written one row block at a time, so memory
stays well under 2 GB whatever the model. A finished checkpoint has a marker file
holding its spec, and each GGUF a FILE.spec holding the spec it was converted from; a
second run skips what matches (--reconvert converts again, e.g. after a glm change).
Each checkpoint is converted with `glm convert DIR -o FILE --quant TYPE` into GGUF_DIR,
with --glm, or glm from ~/.cache/glm-target/release or PATH.

The weights are random but arranged so that greedy generation is predictable, which the
benchmarks need and which costs nothing in speed (the sizes and types are those of real
random weights):
  * every layer's matrices are small (std = 0.5/sqrt(fan_in)) and Glm4's post-sublayer
    norms are 0.1, so the residual stream stays close to the token's embedding (std 1);
  * the output head maps each token of a cycle C through the printable-ASCII tokens of the
    tokenizer to its successor in C (row succ(t) of lm_head is the embedding of t), so the
    model writes visible text (the padded vocabulary has 150k tokens that print nothing;
    the time-to-first-token measurement needs visible text) and never stops;
  * the NextN layer's eh_proj maps the embedding of token t to that of t for a fraction
    --mtp-acceptance of the tokens of C and to another token's for the rest, so the MTP
    draft is right about that often (with the hidden-state half small);
  * router weights have std 1/sqrt(hidden) and zero correction bias, so each token picks
    its own experts.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zlib

try:
    import numpy as np
except ImportError:
    sys.exit("make-checkpoints: numpy is missing; `python3 -m venv ~/.cache/glm-bench/venv && "
             "~/.cache/glm-bench/venv/bin/pip install numpy`, then run it with that Python")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "models")
BENCH_HOME = os.environ.get("GLM_BENCH_HOME", os.path.expanduser("~/.cache/glm-bench"))
SHARD_BYTES = 2_000_000_000
CHUNK_ELEMENTS = 1 << 24  # rows are drawn in blocks of about this many values
GAIN = 0.5  # std of a matrix = GAIN / sqrt(fan_in)
SPEC_VERSION = 1  # bump when the weights' construction changes

GLM47_FLASH = dict(hidden_size=2048, num_attention_heads=20, num_key_value_heads=20, q_lora_rank=768,
                   kv_lora_rank=512, qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256,
                   intermediate_size=10240, moe_intermediate_size=1536, n_routed_experts=64,
                   num_experts_per_tok=4, n_shared_experts=1, first_k_dense_replace=1,
                   routed_scaling_factor=1.8, vocab_size=154880, num_hidden_layers=6,
                   num_nextn_predict_layers=0)
GLM45_AIR = dict(hidden_size=4096, num_attention_heads=96, num_key_value_heads=8, head_dim=128,
                 intermediate_size=10944, moe_intermediate_size=1408, n_routed_experts=128,
                 num_experts_per_tok=8, n_shared_experts=1, first_k_dense_replace=1, use_qk_norm=False,
                 routed_scaling_factor=1.0, vocab_size=151552, num_hidden_layers=4,
                 num_nextn_predict_layers=1)
GLM4_DENSE = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=24, num_attention_heads=16,
                  num_key_value_heads=2, head_dim=128, vocab_size=151552, max_position_embeddings=32768)

MODELS = {
    "glm4-1.75b": dict(fixture="glm4-tiny", kind="dense", config=GLM4_DENSE, quants=["q4_k_m", "q8_0"]),
    "glm47flash-moe": dict(fixture="glm47flash-tiny", kind="mla", config=GLM47_FLASH, quants=["q4_k_m", "q8_0"]),
    "glm45-moe-nextn": dict(fixture="glm4moe-air-tiny", kind="moe", config=GLM45_AIR, quants=["q4_k_m"]),
}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]


# --------------------------------------------------------------------------------------
# Tensor list (hub checkpoint names)
# --------------------------------------------------------------------------------------

def layer_tensors(p, c, kind, moe, nextn):
    """[(name, shape, role)] of one decoder layer; role picks how values are drawn."""
    H = c["hidden_size"]
    out = [(p + "input_layernorm.weight", (H,), "norm")]
    a = p + "self_attn."
    if kind == "mla":
        nh, nope, rope, vd = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
        out += [(a + "q_a_proj.weight", (c["q_lora_rank"], H), "matrix"),
                (a + "q_a_layernorm.weight", (c["q_lora_rank"],), "norm"),
                (a + "q_b_proj.weight", (nh * (nope + rope), c["q_lora_rank"]), "matrix"),
                (a + "kv_a_proj_with_mqa.weight", (c["kv_lora_rank"] + rope, H), "matrix"),
                (a + "kv_a_layernorm.weight", (c["kv_lora_rank"],), "norm"),
                (a + "kv_b_proj.weight", (nh * (nope + vd), c["kv_lora_rank"]), "matrix"),
                (a + "o_proj.weight", (H, nh * vd), "matrix")]
    else:
        hd, nh, nkv = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
        for proj, n in (("q", nh), ("k", nkv), ("v", nkv)):
            out += [(a + f"{proj}_proj.weight", (n * hd, H), "matrix"), (a + f"{proj}_proj.bias", (n * hd,), "bias")]
        out.append((a + "o_proj.weight", (H, nh * hd), "matrix"))
        if c.get("use_qk_norm"):
            out += [(a + "q_norm.weight", (hd,), "norm"), (a + "k_norm.weight", (hd,), "norm")]
    out.append((p + "post_attention_layernorm.weight", (H,), "norm"))
    m = p + "mlp."
    if kind == "dense":  # Glm4: fused gate/up and sandwich norms
        I = c["intermediate_size"]  # noqa: E741
        out += [(m + "gate_up_proj.weight", (2 * I, H), "matrix"), (m + "down_proj.weight", (H, I), "matrix"),
                (p + "post_self_attn_layernorm.weight", (H,), "post_norm"),
                (p + "post_mlp_layernorm.weight", (H,), "post_norm")]
    elif moe:
        E, Im = c["n_routed_experts"], c["moe_intermediate_size"]
        Is = Im * c["n_shared_experts"]
        out += [(m + "gate.weight", (E, H), "router"), (m + "gate.e_score_correction_bias", (E,), "zeros_f32")]
        for e in range(E):
            out += [(m + f"experts.{e}.gate_proj.weight", (Im, H), "matrix"),
                    (m + f"experts.{e}.up_proj.weight", (Im, H), "matrix"),
                    (m + f"experts.{e}.down_proj.weight", (H, Im), "matrix")]
        out += [(m + "shared_experts.gate_proj.weight", (Is, H), "matrix"),
                (m + "shared_experts.up_proj.weight", (Is, H), "matrix"),
                (m + "shared_experts.down_proj.weight", (H, Is), "matrix")]
    else:
        I = c["intermediate_size"]  # noqa: E741
        out += [(m + "gate_proj.weight", (I, H), "matrix"), (m + "up_proj.weight", (I, H), "matrix"),
                (m + "down_proj.weight", (H, I), "matrix")]
    if nextn:
        out += [(p + "eh_proj.weight", (H, 2 * H), "eh_proj"), (p + "enorm.weight", (H,), "norm"),
                (p + "hnorm.weight", (H,), "norm"), (p + "shared_head.norm.weight", (H,), "norm")]
    return out


def model_tensors(c, kind):
    H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    out = [("model.embed_tokens.weight", (V, H), "embed")]
    first_moe = c.get("first_k_dense_replace", L)
    for i in range(L):
        out += layer_tensors(f"model.layers.{i}.", c, kind, i >= first_moe, False)
    for j in range(c.get("num_nextn_predict_layers", 0)):
        out += layer_tensors(f"model.layers.{L + j}.", c, kind, True, True)
    out += [("model.norm.weight", (H,), "norm"), ("lm_head.weight", (V, H), "head")]
    return out


# --------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------

def to_bf16(a):
    """float32 array -> uint16 bf16 bits, round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)


def from_bf16(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def rows_per_chunk(cols):
    return max(1, CHUNK_ELEMENTS // cols)


def normal_rows(seed, name, shape, lo, hi, std):
    """Rows lo..hi of a deterministic N(0, std) matrix, drawn in fixed row blocks."""
    cols = shape[1] if len(shape) == 2 else 1
    step = rows_per_chunk(cols)
    parts = []
    for chunk in range(lo // step, (hi - 1) // step + 1):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), chunk])
        a, b = chunk * step, min(shape[0], (chunk + 1) * step)
        block = rng.standard_normal((b - a, cols), dtype=np.float32)
        block *= std
        parts.append(block[max(lo, a) - a:min(hi, b) - a])
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def printable_cycle(tokenizer_path, seed):
    """Regular token ids whose text is printable ASCII with at least one visible character
    (no '<', '>': no tag can form), in a random cycle order."""
    with open(tokenizer_path, encoding="utf-8") as f:
        vocab = json.load(f)["model"]["vocab"]
    # byte-level BPE: each byte is one printable character; printable ASCII maps to itself
    ok = {chr(b) for b in range(0x21, 0x7F)} - {"<", ">"} | {"\u0120"}  # U+0120 stands for the space byte
    ids = sorted(i for text, i in vocab.items()
                 if all(ch in ok for ch in text) and any(ch != "\u0120" for ch in text))
    order = np.random.default_rng([seed, 1]).permutation(ids)
    return order


class Weights:
    """Draws every tensor of one checkpoint; the output head and eh_proj follow the cycle."""

    def __init__(self, c, kind, seed, cycle, acceptance):
        self.c, self.kind, self.seed = c, kind, seed
        self.cycle = cycle  # cycle[k] is followed by cycle[k+1]
        self.succ = {int(t): int(cycle[(k + 1) % len(cycle)]) for k, t in enumerate(cycle)}
        self.acceptance = acceptance
        H, V = c["hidden_size"], c["vocab_size"]
        self.embed_shape = (V, H)
        top = int(max(cycle)) + 1
        self.embed_top = from_bf16(to_bf16(normal_rows(seed, "model.embed_tokens.weight", self.embed_shape, 0, top, 1.0)))

    def rows(self, name, shape, role, lo, hi):
        """float32 rows lo..hi of the tensor (1-D tensors: lo=0, hi=1 gives all)."""
        if role in ("norm", "post_norm", "zeros_f32"):
            value = {"norm": 1.0, "post_norm": 0.1, "zeros_f32": 0.0}[role]
            return np.full((1, shape[0]), value, dtype=np.float32)
        if role == "bias":
            return normal_rows(self.seed, name, (1, shape[0]), 0, 1, 0.02)
        if role == "embed":
            return normal_rows(self.seed, name, shape, lo, hi, 1.0)
        if role == "router":
            return normal_rows(self.seed, name, shape, lo, hi, 1.0 / np.sqrt(shape[1]))
        if role == "matrix":
            return normal_rows(self.seed, name, shape, lo, hi, GAIN / np.sqrt(shape[1]))
        if role == "head":
            block = normal_rows(self.seed, name, shape, lo, hi, 0.01)
            for t, s in self.succ.items():
                if lo <= s < hi:
                    block[s - lo] = self.embed_top[t]
            return block
        if role == "eh_proj":
            return self.eh_proj(name, shape)[lo:hi]
        raise ValueError(role)

    def eh_proj(self, name, shape):
        """[H, 2H]: the first half (the embedding's) sends e_t to e_t for the accepted tokens
        and to another cycle token's embedding for the others; the second half is small."""
        if getattr(self, "_eh", None) is not None:
            return self._eh
        H = shape[0]
        ids = np.array(sorted(self.succ), dtype=np.int64)
        E = self.embed_top[ids].astype(np.float64)  # |C| x H
        rng = np.random.default_rng([self.seed, 2])
        targets = ids.copy()
        wrong = rng.random(len(ids)) >= self.acceptance
        # a wrong draft: the embedding of another cycle token (its successor differs)
        targets[wrong] = ids[(np.flatnonzero(wrong) + 1 + rng.integers(0, len(ids) - 1, wrong.sum())) % len(ids)]
        T = self.embed_top[targets].astype(np.float64)
        # M e_s = t_s for every s in C: M = T^T (E E^T)^-1 E
        M = T.T @ np.linalg.solve(E @ E.T, E)
        out = np.empty((H, 2 * H), dtype=np.float32)
        out[:, :H] = M
        out[:, H:] = normal_rows(self.seed, name, (H, H), 0, H, GAIN / np.sqrt(2 * H))
        self._eh = out
        return out


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

def plan_shards(tensors):
    shards, cur, size = [], [], 0
    for t in tensors:
        n = int(np.prod(t[1])) * (4 if t[2] == "zeros_f32" else 2)
        if cur and size + n > SHARD_BYTES:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += n
    return shards + [cur] if cur else shards


def write_shard(path, tensors, weights):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, role in tensors:
        n = int(np.prod(shape)) * (4 if role == "zeros_f32" else 2)
        header[name] = {"dtype": "F32" if role == "zeros_f32" else "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape, role in tensors:
            if len(shape) == 1:
                a = weights.rows(name, shape, role, 0, 1)
                f.write(a.astype(np.float32).tobytes() if role == "zeros_f32" else to_bf16(a).tobytes())
                continue
            step = rows_per_chunk(shape[1])
            for lo in range(0, shape[0], step):
                f.write(to_bf16(weights.rows(name, shape, role, lo, min(shape[0], lo + step))).tobytes())
    os.replace(tmp, path)
    return offset


def spec_of(name, model, args):
    c = dict(model["config"])
    if name == "glm45-moe-nextn":
        c["n_routed_experts"] = args.glm45_experts
        c["num_hidden_layers"] = args.glm45_layers
    if name == "glm47flash-moe":
        c["num_hidden_layers"] = args.flash_layers
    spec = {"version": SPEC_VERSION, "seed": args.seed, "config": c, "gain": GAIN}
    if c.get("num_nextn_predict_layers"):
        spec["mtp_acceptance"] = args.mtp_acceptance
    return spec


def marker_matches(out_dir, spec):
    """The checkpoint was finished with this spec (its weights may have been pruned since)."""
    try:
        with open(os.path.join(out_dir, ".glm-bench-complete")) as f:
            return f.read() == json.dumps(spec, sort_keys=True)
    except OSError:
        return False


def checkpoint_complete(out_dir, spec):
    """The marker holds this spec and every shard the index names is there."""
    if not marker_matches(out_dir, spec):
        return False
    try:
        with open(os.path.join(out_dir, "model.safetensors.index.json")) as f:
            shards = set(json.load(f)["weight_map"].values())
    except (OSError, ValueError, KeyError):
        return False
    return all(os.path.exists(os.path.join(out_dir, s)) for s in shards)


def gguf_path(gguf_dir, name, quant):
    return os.path.join(gguf_dir, f"{name}-{quant.upper()}.gguf")


def gguf_current(path, spec):
    """The GGUF exists and was converted from a checkpoint with this spec (its .spec file)."""
    try:
        with open(path + ".spec") as f:
            return os.path.exists(path) and f.read() == json.dumps(spec, sort_keys=True)
    except OSError:
        return False


def write_checkpoint(name, model, spec, out_dir):
    marker = os.path.join(out_dir, ".glm-bench-complete")
    want = json.dumps(spec, sort_keys=True)
    if checkpoint_complete(out_dir, spec):
        print(f"{name}: checkpoint complete in {out_dir}", flush=True)
        return
    t0 = time.time()
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    fixture = os.path.join(FIXTURES, model["fixture"])
    for f in TOKENIZER_FILES:
        if os.path.exists(os.path.join(fixture, f)):
            shutil.copy(os.path.join(fixture, f), os.path.join(out_dir, f))
    with open(os.path.join(fixture, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config.update(spec["config"])
    config["initializer_range"] = 0.02
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    c = spec["config"]
    cycle = printable_cycle(os.path.join(out_dir, "tokenizer.json"), spec["seed"])
    weights = Weights(c, model["kind"], spec["seed"], cycle, spec.get("mtp_acceptance", 1.0))
    tensors = model_tensors(c, model["kind"])
    shards = plan_shards(tensors)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, start=1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(os.path.join(out_dir, fname), shard, weights)
        weight_map.update({t[0]: fname for t in shard})
        print(f"{name}: wrote {fname} ({total / 1e9:.2f} GB so far)", flush=True)
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        f.write("\n")
    params = sum(int(np.prod(t[1])) for t in tensors)
    with open(marker, "w") as f:
        f.write(want)
    print(f"{name}: {params / 1e9:.3f}B parameters, {total / 1e9:.2f} GB in {len(shards)} shard(s), "
          f"{len(cycle)}-token output cycle, {time.time() - t0:.0f} s", flush=True)


def find_glm(explicit):
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/glm-target"))
    candidate = os.path.join(target, "release", "glm")
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("glm")


def convert(glm, name, ckpt, out, quant, spec):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    t0 = time.time()
    cmd = ["nice", "-n", "19", glm, "convert", ckpt, "-o", out, "--quant", quant, "--force"]
    print("+ " + " ".join(cmd), flush=True)
    if os.path.exists(out + ".spec"):
        os.remove(out + ".spec")
    subprocess.run(cmd, check=True)
    with open(out + ".spec", "w") as f:
        f.write(json.dumps(spec, sort_keys=True))
    print(f"{name}: {out} {os.path.getsize(out) / 1e9:.2f} GB in {time.time() - t0:.0f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=list(MODELS), help=f"any of {', '.join(MODELS)} [default: all]")
    ap.add_argument("--out", default=os.path.join(BENCH_HOME, "checkpoints"), help="checkpoint folder")
    ap.add_argument("--gguf-dir", default=os.path.join(BENCH_HOME, "gguf"), help="GGUF folder")
    ap.add_argument("--glm", help="glm binary for the conversions [default: ~/.cache/glm-target/release/glm]")
    ap.add_argument("--no-convert", action="store_true", help="only write the checkpoints")
    ap.add_argument("--quant", action="append", help="convert to these presets instead of each model's default")
    ap.add_argument("--prune", action="store_true", help="delete each checkpoint's weights once converted")
    ap.add_argument("--reconvert", action="store_true", help="convert again even if the GGUFs are up to date")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--flash-layers", type=int, default=6)
    ap.add_argument("--glm45-layers", type=int, default=4, help="trunk layers (the NextN layer comes on top)")
    ap.add_argument("--glm45-experts", type=int, default=32)
    ap.add_argument("--mtp-acceptance", type=float, default=0.8,
                    help="fraction of tokens whose NextN draft is right (greedy)")
    args = ap.parse_args()
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        sys.exit(f"make-checkpoints: unknown model(s) {unknown}; choose from {list(MODELS)}")
    glm = None if args.no_convert else find_glm(args.glm)
    if not args.no_convert and not glm:
        sys.exit("make-checkpoints: glm not found; pass --glm PATH or --no-convert")
    for name in args.models:
        model = MODELS[name]
        ckpt = os.path.join(args.out, name)
        spec = spec_of(name, model, args)
        outs = [(q, gguf_path(args.gguf_dir, name, q)) for q in args.quant or model["quants"]]
        todo = [(q, out) for q, out in outs if args.reconvert or not gguf_current(out, spec)]
        if args.no_convert or todo:
            write_checkpoint(name, model, spec, ckpt)
        if not args.no_convert:
            for quant, out in outs:
                if (quant, out) in todo:
                    convert(glm, name, ckpt, out, quant, spec)
                else:
                    print(f"{name}: {out} is up to date", flush=True)
        if args.prune:
            pruned = [f for f in os.listdir(ckpt) if f.endswith(".safetensors")]
            for f in pruned:
                os.remove(os.path.join(ckpt, f))
            if pruned:
                print(f"{name}: deleted the checkpoint's {len(pruned)} weight files (--prune)", flush=True)

if __name__ == "__main__":
    main()
