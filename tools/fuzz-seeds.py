#!/usr/bin/env python3
"""Regenerates fuzz/seeds/checkpoint and fuzz/seeds/cli from a small generated model, quantized and
converted to every flavour by the nvfp4 binary (argv[1]). Seeds: FLAGS + file (see fuzz/bodies/)."""
import json, os, struct, subprocess, sys, tempfile

BIN = sys.argv[1]
ROOT = os.path.join(os.path.dirname(__file__), "..", "fuzz", "seeds")
TENSORS = [  # name, dtype, shape: the shapes of tests/checkpoint_common's model, scaled down
    ("model.layers.0.mlp.up_proj.weight", "BF16", [32, 32]),
    ("model.layers.0.mlp.down_proj.weight", "F16", [16, 32]),
    ("model.layers.0.self_attn.q_proj.weight", "F32", [20, 32]),
    ("model.layers.0.self_attn.q_proj.bias", "F32", [20]),
    ("model.norm.weight", "BF16", [32]),
    ("lm_head.weight", "BF16", [16, 32]),
    ("model.odd.weight", "BF16", [8, 24]),
    ("model.step", "I64", [1]),
]
SIZE = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8}

def elem(dtype, i):
    x = ((i * 37) % 101 - 50) / 16.0
    if dtype == "F32":
        return struct.pack("<f", x)
    if dtype == "BF16":
        return struct.pack("<f", x)[2:]
    if dtype == "F16":
        return struct.pack("<e", x)
    return struct.pack("<q", i)

def dense(path):
    header, data = {}, b""
    for name, dt, shape in TENSORS:
        n = 1
        for d in shape:
            n *= d
        b = b"".join(elem(dt, i) for i in range(n))
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)

def framed(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return b[8:8 + n] + b"\0" + b[8 + n:]

def seed(target, name, flags, body):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    open(os.path.join(ROOT, target, name), "wb").write(bytes([flags]) + body)

with tempfile.TemporaryDirectory() as t:
    d = os.path.join(t, "dense.safetensors")
    dense(d)
    files = {"dense": d}
    mo = os.path.join(t, "modelopt.safetensors")
    subprocess.run([BIN, "quantize", d, "-o", mo], check=True, stdout=subprocess.DEVNULL)
    files["modelopt"] = mo
    for fl in ["compressed-tensors", "comfy"]:
        p = os.path.join(t, fl + ".safetensors")
        subprocess.run([BIN, "convert", mo, "-o", p, "--to", fl], check=True, stdout=subprocess.DEVNULL)
        files[fl] = p
    seed("checkpoint", "dense-raw", 0, open(d, "rb").read())
    for i, (k, p) in enumerate(files.items()):
        seed("checkpoint", k + "-framed", 1, framed(p))
        # Framed, and written through: convert/dequantize/quantize chosen by the flags' high bits.
        seed("checkpoint", k + "-write", 1 | 2 | ((i + 4) % 5) << 2, framed(p))
    seed("checkpoint", "empty-header", 1, b"{}\0")
    # cli: a valid index over the two fixed shards of fuzz/bodies/cli.rs, with a config.json.
    wm = {"model.layers.0.mlp.up_proj.weight": "model-00001-of-00002.safetensors",
          "model.norm.weight": "model-00001-of-00002.safetensors",
          "model.layers.0.self_attn.q_proj.weight": "model-00002-of-00002.safetensors",
          "lm_head.weight": "model-00002-of-00002.safetensors"}
    index = json.dumps({"metadata": {"total_size": 5184}, "weight_map": wm}).encode()
    config = json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 32,
                         "quantization_config": {"quant_method": "fp8"}}).encode()
    seed("cli", "index-config", 0, index + b"\0" + config)
    seed("cli", "index-file-no-config", 1, index + b"\0")
    seed("cli", "index-quantize", 2 | (4 << 2), index + b"\0" + config)
    seed("cli", "index-convert", 1 | 2, index + b"\0" + config)
    seed("cli", "missing-shard", 0, json.dumps({"weight_map": {"x": "model-00003-of-00003.safetensors"}}).encode() + b"\0")
    seed("cli", "bad-shard-name", 0, json.dumps({"weight_map": {"x": "../model-00001-of-00002.safetensors"}}).encode() + b"\0")
