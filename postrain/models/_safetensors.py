"""Minimal safetensors reader/writer on numpy memmaps (bfloat16 included, no torch).

The `safetensors` package's numpy backend rejects bfloat16; the format is simple enough to read
directly: an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the data.
Reading maps the file and returns per-tensor views, so no whole-checkpoint copy is made.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Sequence

import ml_dtypes
import numpy as np

_DTYPES = {
  "F64": np.dtype(np.float64),
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "I64": np.dtype(np.int64),
  "I32": np.dtype(np.int32),
  "I16": np.dtype(np.int16),
  "I8": np.dtype(np.int8),
  "U8": np.dtype(np.uint8),
  "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
  """Lazy view of one .safetensors file: `names()`, `shape(name)`, `get(name) -> np.ndarray`."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    with open(self.path, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(n))
    self.metadata = header.pop("__metadata__", None) or {}
    self._header = header
    self._offset = 8 + n
    self._map = np.memmap(self.path, dtype=np.uint8, mode="r")

  def names(self) -> list[str]:
    return list(self._header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._header[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    info = self._header[name]
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}.")
    begin, end = info["data_offsets"]
    raw = self._map[self._offset + begin : self._offset + end]
    return raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def save_file(
  tensors: Sequence[tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]],
  path: str | os.PathLike,
  metadata: dict[str, str] | None = None,
) -> None:
  """Writes (name, shape, dtype, produce) entries; each array is produced only when written."""
  header, offset = {}, 0
  for name, shape, dtype, _ in tensors:
    dtype = np.dtype(dtype)
    if dtype not in _NAMES:
      raise ValueError(f"Cannot save tensor {name!r} with dtype {dtype} as safetensors.")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {
      "dtype": _NAMES[dtype],
      "shape": list(shape),
      "data_offsets": [offset, offset + nbytes],
    }
    offset += nbytes
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype, produce in tensors:
      x = np.ascontiguousarray(produce(), dtype=dtype)
      if x.shape != tuple(shape):
        raise ValueError(f"Tensor {name!r}: produced shape {x.shape}, declared {tuple(shape)}.")
      f.write(x.tobytes())
