"""Fused kernels (installed as `postrain.kernels`).

`fused_logprobs` computes token log-probs, entropy and top-k over a large vocabulary without
materialising the `[N, V]` logits (chunked jnp or Pallas), with `naive_logprobs` as the reference.

This directory is the package `postrain.kernels` (see `setup.py`'s `package_dir`). Run from the
repository root, Python also finds it as a top-level `kernels`, the name of Hugging Face's
`kernels` package that `transformers` imports. When imported under that name, this file hands
the import to the installed `kernels` distribution (or raises a clear ImportError when none is
installed), so the checkout never shadows it.
"""

if __name__ == "kernels":  # imported as top-level `kernels` from a checkout: not this package
  import importlib.machinery
  import importlib.util
  import os
  import sys

  _here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
  _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
  if _spec is None or _spec.loader is None:
    raise ImportError(
      f"'kernels' resolved to postrain's {os.path.dirname(os.path.abspath(__file__))} because the "
      "repository root is on sys.path, and no other 'kernels' package is installed; postrain's "
      "kernels are imported as `postrain.kernels`"
    )
  _module = importlib.util.module_from_spec(_spec)
  sys.modules["kernels"] = _module  # the import system returns sys.modules["kernels"]
  _spec.loader.exec_module(_module)
else:
  from postrain.kernels._chunked import chunked_logprobs
  from postrain.kernels._fused import fused_logprobs
  from postrain.kernels._pallas import pallas_logprobs
  from postrain.kernels._reference import naive_logprobs

  __all__ = ["chunked_logprobs", "fused_logprobs", "naive_logprobs", "pallas_logprobs"]
