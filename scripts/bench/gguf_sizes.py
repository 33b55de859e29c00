"""Bytes a GGUF model reads per generated token, from the file's tensor table.

Only the header is parsed (no dependency): a tensor's size is the distance from its data
offset to the next tensor's (alignment padding, under 32 bytes, included).

What one generated token reads: every weight tensor once, except
  * token_embd: one row (the token's embedding);
  * routed expert tensors (*_exps): expert_used_count / expert_count of them;
  * the NextN/MTP layers (blk.N.* with N >= block_count - nextn_predict_layers): nothing,
    since plain generation does not run them.
The KV cache and activations are not counted (small at the short contexts measured).
"""

import os
import re
import struct

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class _Reader:
    def __init__(self, f):
        self.f = f

    def unpack(self, fmt):
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def string(self):
        return self.f.read(self.unpack("<Q")).decode("utf-8", errors="replace")

    def value(self, vtype):
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALAR:
                size = struct.calcsize(_SCALAR[etype])
                self.f.seek(size * count, os.SEEK_CUR)  # arrays are not needed, only skipped
                return None
            return [self.value(etype) for _ in range(count)]
        return self.unpack(_SCALAR[vtype])


def read_header(path):
    """(metadata dict without arrays, [(name, shape, type, size_bytes)])."""
    with open(path, "rb") as f:
        r = _Reader(f)
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = r.unpack("<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        meta = {}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = r.value(r.unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = r.string()
            shape = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
            ggml_type, offset = r.unpack("<I"), r.unpack("<Q")
            infos.append((name, shape, ggml_type, offset))
        alignment = meta.get("general.alignment", 32)
        data_start = -(-f.tell() // alignment) * alignment
    data_size = os.path.getsize(path) - data_start
    order = sorted(range(len(infos)), key=lambda i: infos[i][3])
    sizes = {}
    for k, i in enumerate(order):
        end = infos[order[k + 1]][3] if k + 1 < len(order) else data_size
        sizes[i] = end - infos[i][3]
    return meta, [(n, s, t, sizes[i]) for i, (n, s, t, _) in enumerate(infos)]


def bytes_per_token(path):
    """{"total": file tensor bytes, "per_token": bytes read per generated token, ...}."""
    meta, tensors = read_header(path)
    arch = meta.get("general.architecture", "")
    blocks = meta.get(f"{arch}.block_count", 0)
    nextn = meta.get(f"{arch}.nextn_predict_layers", 0) or 0
    experts = meta.get(f"{arch}.expert_count", 0) or 0
    used = meta.get(f"{arch}.expert_used_count", 0) or 0
    total = per_token = mtp = 0
    for name, shape, _, size in tensors:
        total += size
        m = re.match(r"blk\.(\d+)\.", name)
        if m and nextn and int(m.group(1)) >= blocks - nextn:
            mtp += size
            continue
        if name.startswith("token_embd."):
            per_token += size / shape[-1]  # one row of [n_embd, n_vocab]
        elif "_exps." in name and experts:
            per_token += size * used / experts
        else:
            per_token += size
    return {"architecture": arch, "total": total, "per_token": per_token, "mtp_layers": mtp,
            "experts": experts, "experts_used": used}


if __name__ == "__main__":
    import json
    import sys

    for p in sys.argv[1:]:
        print(p, json.dumps(bytes_per_token(p)))
