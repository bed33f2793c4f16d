"""Teacher models for on-policy distillation: another postrain run, imported weights, or an EMA copy.

`config.teacher.source`:
  * "workdir": the latest orbax checkpoint of another postrain run (`teacher.path` = its workdir),
    built from that run's own `config.json` (model name, overrides, tokenizer);
  * "hf" / "gguf": weights imported with `postrain.models.from_hf_dir` / `from_gguf`;
  * "ema": an exponential moving average of the student itself (MOPD self-distillation,
    rate 1 - `teacher.ema_decay`), initialised to the student when distillation starts;
  * "none": no teacher (modes "sft" and "rl").

Teacher and student must share a vocabulary, or `teacher.vocab_map` (an .npy of i32[V_s] student
id -> teacher id) must say how to translate; otherwise `check_vocab` raises before any compilation.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from postrain import losses, models

SOURCES = ("none", "workdir", "hf", "gguf", "ema")


def teacher_config() -> mlc.ConfigDict:
  """Defaults of `config.teacher`."""
  t = mlc.ConfigDict()
  t.source = "none"  # "none", "workdir", "hf", "gguf" or "ema"
  t.path = ""  # postrain workdir, HF checkpoint dir or GGUF file
  # For source="workdir": replace the model of the teacher run's config.json (rarely needed).
  t.model_name = ""
  t.overrides = mlc.ConfigDict()
  t.dtype = "float32"
  t.ema_decay = 0.95  # source="ema": θ_T <- decay θ_T + (1 - decay) θ (MOPD: rate 0.05)
  t.vocab_map = ""  # optional .npy i32[V_s]: student token id -> teacher token id
  return t


def _read_run_config(workdir: str) -> mlc.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"config.teacher.path: {workdir!r} is not a postrain workdir (no config.json)"
    )
  with open(path, encoding="utf-8") as f:
    return mlc.ConfigDict(json.load(f))


def run_tokenizer_path(workdir: str) -> str | None:
  """The sentencepiece model a postrain run trained on its task corpus (None if it used another)."""
  cfg = _read_run_config(workdir)
  if cfg.tokenizer.kind != "sentencepiece":
    return None
  if cfg.tokenizer.path:
    return cfg.tokenizer.path
  found = sorted(glob.glob(os.path.join(workdir, "tokenizer", "*.model")))
  if not found:
    raise FileNotFoundError(f"no trained tokenizer under {workdir!r}/tokenizer")
  return found[-1]


def default_tokenizer(config: mlc.ConfigDict) -> Any:
  """The student's tokenizer when the teacher is a postrain run with its own sentencepiece model
  and the student does not name one: the teacher's, so both read the same token ids."""
  t = config.teacher
  if (
    config.mode not in ("opd", "mopd")
    or t.source != "workdir"
    or config.tokenizer.kind != "sentencepiece"
    or config.tokenizer.path
    or t.vocab_map
  ):
    return None
  path = run_tokenizer_path(t.path)
  return None if path is None else models.tokenizers.SentencePieceTokenizer(path)


def restore_params(workdir: str, abstract_params: Any) -> tuple[Any, int]:
  """The `params` of the newest checkpoint of a postrain run, in the structure of `abstract_params`.

  Only the parameters are read (the run's optimiser state may have any structure).
  """
  ckpt_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
  steps = (
    sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []
  )
  if not steps:
    raise FileNotFoundError(f"config.teacher.path: no checkpoint under {ckpt_dir!r}")
  step = steps[-1]
  path = os.path.join(ckpt_dir, str(step), "state")
  with ocp.PyTreeCheckpointer() as ckptr:
    # Host arrays on every process, whatever devices wrote the run (a one-device run's arrays would
    # otherwise restore onto process 0's device only); the trainer then places them on its mesh.
    tree = ckptr.metadata(path).item_metadata.tree
    host = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    raw = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=host))
  pure = jax_tree_to_numpy(raw["params"])
  params = nnx.State(abstract_params)  # a copy we can fill
  nnx.replace_by_pure_dict(params, pure)
  return params, step


def jax_tree_to_numpy(tree: Any) -> Any:
  """Orbax's nested dicts as nnx pure dicts: `{"value": x}` variable leaves unwrapped."""
  if isinstance(tree, dict):
    if set(tree) == {"value"} and not isinstance(tree["value"], dict):
      return np.asarray(tree["value"])
    return {_key(k): jax_tree_to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def _key(k: Any) -> Any:
  """Orbax stores integer pytree keys (layer indices) as strings."""
  return int(k) if isinstance(k, str) and k.isdigit() else k


def build_teacher(
  config: mlc.ConfigDict, *, student_vocab: int
) -> tuple[nnx.Module, np.ndarray | None, dict[str, Any]]:
  """The frozen teacher for sources "workdir", "hf" and "gguf": (model, vocab_map, info).

  The vocabularies are compared (`check_vocab`) before any teacher weights are built or loaded
  where the vocabulary size is known from a config file (workdir runs, HF directories).
  """
  t = config.teacher
  if not os.path.exists(t.path):
    raise FileNotFoundError(f"config.teacher.path: no such file or directory {t.path!r}")
  if t.source == "hf":
    with open(os.path.join(t.path, "config.json"), encoding="utf-8") as f:
      vmap = check_vocab(student_vocab, int(json.load(f)["vocab_size"]), vocab_map_path=t.vocab_map)
    _, model = models.from_hf_dir(t.path, dtype=t.dtype)
    return model, vmap, {}
  if t.source == "gguf":
    _, model = models.from_gguf(t.path, dtype=t.dtype)
    return model, check_vocab(student_vocab, vocab_size(model), vocab_map_path=t.vocab_map), {}
  run = _read_run_config(t.path)
  if run.model.source != "scratch":  # a run that fine-tuned imported weights
    loader = models.from_gguf if run.model.source == "gguf" else models.from_hf_dir
    _, model = loader(run.model.path, dtype=t.dtype)
    vmap = check_vocab(student_vocab, vocab_size(model), vocab_map_path=t.vocab_map)
  else:
    tok_path = run_tokenizer_path(t.path)
    if tok_path is None:
      raise ValueError(f"config.teacher.path: cannot tell the vocabulary of run {t.path!r}")
    vocab = models.tokenizers.SentencePieceTokenizer(tok_path).vocab_size
    overrides = {} if t.model_name else dict(run.model.overrides.to_dict())
    overrides.update(t.overrides.to_dict())
    kw = dict(vocab_size=vocab, dtype=t.dtype, param_dtype=t.dtype)
    kw.update(overrides)
    cfg = models.get_config(t.model_name or run.model.name, **kw)
    # Compare vocabularies before building anything (and long before any compilation).
    vmap = check_vocab(student_vocab, cfg.vocab_size, vocab_map_path=t.vocab_map)
    model = models.Decoder(cfg, rngs=nnx.Rngs(0))
  graphdef, abstract, rest = nnx.split(model, nnx.Param, ...)
  params, step = restore_params(t.path, abstract)
  return nnx.merge(graphdef, params, rest), vmap, {"teacher_step": step}


def vocab_size(model: nnx.Module) -> int:
  return int(model.cfg.vocab_size)


def load_vocab_map(path: str) -> np.ndarray | None:
  if not path:
    return None
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.teacher.vocab_map: no such file {path!r}")
  return np.asarray(np.load(path))


def check_vocab(student_vocab: int, teacher_vocab: int, *, vocab_map_path: str = "") -> Any:
  """Raises ValueError when the vocabularies differ and no map is given; returns the map or None.

  Uses `losses.match_vocab` on zero-size stand-ins, so the check is the loss's own rule.
  """
  vocab_map = load_vocab_map(vocab_map_path)
  try:
    losses.match_vocab(
      np.zeros((1, 1, student_vocab), np.float32),
      np.zeros((1, 1, teacher_vocab), np.float32),
      student_to_teacher=None if vocab_map is None else vocab_map.astype(np.int32),
    )
  except (ValueError, TypeError) as err:
    raise ValueError(
      f"config.teacher: teacher vocabulary ({teacher_vocab}) does not match the student's "
      f"({student_vocab}) and config.teacher.vocab_map does not translate it: {err}"
    ) from None
  return vocab_map
