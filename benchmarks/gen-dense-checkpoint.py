#!/usr/bin/env python3
"""Writes the dense bf16 checkpoint that BENCHMARKS.md times `nvfp4 quantize` on.

64 tensors [4096, 4096] bf16 (2.15 GB) of random bytes whose high byte is mapped into
exponents 0x3C..0x3F with the sign kept, so every value is finite (|x| within about 2^-7..2^1).
Usage: gen-dense-checkpoint.py OUT.safetensors [TENSORS]
"""
import json
import os
import struct
import sys

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
rows = cols = 4096
size = rows * cols * 2
# High byte of a bf16 is sign + 7 exponent bits; keep the sign and the exponent's low two bits, and
# pin the rest so no value is Inf/NaN.
table = bytes((b & 0x83) | 0x3C for b in range(256))
header = {
    f"model.layers.{i}.mlp.proj.weight": {
        "dtype": "BF16",
        "shape": [rows, cols],
        "data_offsets": [i * size, (i + 1) * size],
    }
    for i in range(n)
}
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
tmp = out + ".partial"
with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(h)))
    f.write(h)
    for _ in range(n):
        d = bytearray(os.urandom(size))
        d[1::2] = d[1::2].translate(table)
        f.write(d)
os.replace(tmp, out)
