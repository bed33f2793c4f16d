"""A fast GGUF (v2/v3, little-endian) header reader; tensor data stays memory-mapped.

`gguf.GGUFReader` builds a numpy view per metadata item, which takes ~10-20 s for the ~100k
vocabulary and merge strings of a 50k-token tokenizer; walking the header with `struct` takes a
fraction of a second. Dequantization is still `gguf.quants.dequantize`.
"""

from __future__ import annotations

import os
import struct
from typing import Any, NamedTuple

import numpy as np

_MAGIC = b"GGUF"
# GGUF metadata value types -> struct format (8: string, 9: array are handled separately).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # fmt: skip


class TensorInfo(NamedTuple):
  name: str
  shape: tuple[int, ...]  # numpy order (GGUF lists dims fastest-first)
  ggml_type: int
  offset: int  # absolute byte offset in the file


class GGUFFile:
  """`metadata` (dict of Python values), `tensors` (name -> TensorInfo), `dequantize(name)`."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    if os.path.getsize(self.path) < 24:
      raise ValueError(f"{self.path} is not a GGUF file (only {os.path.getsize(self.path)} bytes).")
    self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
    self._buf = memoryview(self._map)
    if bytes(self._buf[:4]) != _MAGIC:
      raise ValueError(f"{self.path} is not a GGUF file (bad magic).")
    try:
      self._read_header()
    except (struct.error, IndexError, OverflowError, MemoryError) as err:  # ran off the end
      raise ValueError(
        f"{self.path}: truncated GGUF file: its header ends past the file's "
        f"{len(self._buf)} bytes ({err}). Download or copy the file again."
      ) from None
    expected = max((i.offset + self._nbytes(i) for i in self.tensors.values()), default=0)
    if expected > len(self._buf):
      raise ValueError(
        f"{self.path}: truncated GGUF file, expected {expected} bytes, found {len(self._buf)}. "
        "Download or copy the file again."
      )

  @staticmethod
  def _nbytes(info: TensorInfo) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(info.ggml_type)]
    return int(np.prod(info.shape, dtype=np.int64)) // block * type_size

  def _read_header(self) -> None:
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", self._buf, 4)
    if version not in (2, 3):
      raise ValueError(
        f"{self.path}: GGUF version {version} is not supported (2 or 3, little-endian)."
      )
    self._pos = 24
    self.metadata: dict[str, Any] = {}
    for _ in range(n_kv):
      key = self._string()
      (kind,) = self._unpack("<I")
      self.metadata[key] = self._value(kind)
    infos = []
    for _ in range(n_tensors):
      name = self._string()
      (n_dims,) = self._unpack("<I")
      dims = self._unpack(f"<{n_dims}Q")
      kind, offset = self._unpack("<IQ")
      infos.append((name, tuple(reversed(dims)), kind, offset))
    align = int(self.metadata.get("general.alignment", 32))
    start = -(-self._pos // align) * align
    self.tensors = {n: TensorInfo(n, s, k, start + o) for n, s, k, o in infos}

  def _unpack(self, fmt: str) -> tuple:
    values = struct.unpack_from(fmt, self._buf, self._pos)
    self._pos += struct.calcsize(fmt)
    return values

  def _string(self) -> str:
    (n,) = self._unpack("<Q")
    s = bytes(self._buf[self._pos : self._pos + n]).decode("utf-8", errors="replace")
    self._pos += n
    return s

  def _value(self, kind: int) -> Any:
    if kind == 8:
      return self._string()
    if kind == 9:
      item, count = self._unpack("<IQ")
      if item in _SCALARS:  # numeric arrays in one unpack
        fmt = _SCALARS[item]
        return list(self._unpack(f"{fmt[0]}{count}{fmt[1]}"))
      return [self._value(item) for _ in range(count)]
    if kind not in _SCALARS:
      raise ValueError(f"{self.path}: unknown GGUF metadata type {kind}.")
    return self._unpack(_SCALARS[kind])[0]

  def dequantize(self, name: str) -> np.ndarray:
    """The tensor as float32 in numpy order ([out, in] for a weight matrix)."""
    from gguf import GGMLQuantizationType
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import dequantize

    info = self.tensors[name]
    qtype = GGMLQuantizationType(info.ggml_type)
    block, type_size = GGML_QUANT_SIZES[qtype]
    *rows, cols = info.shape
    if cols % block:
      raise ValueError(f"{self.path}: tensor {name!r} row of {cols} is not a multiple of {block}.")
    row_bytes = cols // block * type_size
    n_rows = int(np.prod(rows, dtype=np.int64))
    raw = self._map[info.offset : info.offset + n_rows * row_bytes].reshape(*rows, row_bytes)
    out = dequantize(raw, qtype)
    return np.asarray(out, np.float32).reshape(info.shape)
