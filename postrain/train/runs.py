"""The public run API: a postrain run's config, tokenizer and model at its newest checkpoint.

  run = postrain.train.load_run("runs/default")
  run.config, run.tokenizer, run.model, run.step   # + run.task_data(): the run's problems

One code path reads a workdir for every consumer: the OPD teacher (`teacher.source="workdir"`),
`python -m postrain.train.generate`, `python -m postrain.select` and the experiments. The model is
rebuilt from the run's own `config.json` (named config and overrides, or the imported weights it
fine-tuned) and its parameters are read from the newest orbax checkpoint as host arrays, whatever
mesh wrote them (only the parameters: the optimiser state may have any structure).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from postrain import models


@dataclasses.dataclass
class Run:
  """A run loaded by `load_run`.

  Attributes:
    workdir: the run directory.
    config: the config the run recorded (`workdir/config.json`).
    tokenizer: the run's tokenizer (the one its token ids were trained with).
    model: the decoder with the parameters of checkpoint `step`.
    step: the newest checkpoint's step.
  """

  workdir: str
  config: mlc.ConfigDict
  tokenizer: Any
  model: nnx.Module
  step: int

  def task_data(self) -> Any:
    """The run's TaskData (its task's train / test problems from `workdir/data`, prompts)."""
    from postrain.train import _data

    return _data.load_task_data(self.config, self.workdir, tokenizer=self.tokenizer)


def read_config(workdir: str, *, what: str = "workdir") -> mlc.ConfigDict:
  """The config a postrain run recorded in `workdir/config.json` (`what` names the config key or
  argument that gave `workdir`, for the error)."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"{what}: no such directory {workdir!r}")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what}: {workdir!r} is not a postrain workdir (no config.json)")
  with open(path, encoding="utf-8") as f:
    return mlc.ConfigDict(json.load(f))


def run_tokenizer_path(workdir: str, *, what: str = "workdir") -> str | None:
  """The sentencepiece model a postrain run trained on its task corpus (None if it used another)."""
  cfg = read_config(workdir, what=what)
  if "tokenizer" in cfg and cfg.tokenizer.kind != "sentencepiece":
    return None
  if "tokenizer" in cfg and cfg.tokenizer.path:
    return cfg.tokenizer.path
  found = sorted(glob.glob(os.path.join(workdir, "tokenizer", "*.model")))
  if not found:
    raise FileNotFoundError(f"no trained tokenizer under {workdir!r}/tokenizer")
  return found[-1]


def default_tokenizer(config: mlc.ConfigDict) -> Any:
  """The student's tokenizer when the teacher is a postrain run with its own sentencepiece model
  and the student does not name one: the teacher's, so both read the same token ids (else None:
  the run trains or loads its own)."""
  t = config.teacher
  if (
    config.mode not in ("opd", "mopd")
    or t.source != "workdir"
    or config.tokenizer.kind != "sentencepiece"
    or config.tokenizer.path
    or t.vocab_map
  ):
    return None
  path = run_tokenizer_path(t.path, what="config.teacher.path")
  return None if path is None else models.tokenizers.SentencePieceTokenizer(path)


def run_tokenizer(config: mlc.ConfigDict, workdir: str) -> Any:
  """The tokenizer run `workdir` (with recorded `config`) used (a self-play run, whose config has
  no `tokenizer`: the sentencepiece model it trained in `workdir/tokenizer`)."""
  if "tokenizer" not in config:
    return models.tokenizers.SentencePieceTokenizer(run_tokenizer_path(workdir))
  tok = default_tokenizer(config)
  if tok is not None:
    return tok
  kind = config.tokenizer.kind
  if kind == "gguf":
    return models.tokenizers.from_gguf(config.tokenizer.path or config.model.path)
  if kind == "hf":
    return models.tokenizers.load_tokenizer(
      config.tokenizer.path or os.path.join(config.model.path, "tokenizer.json")
    )
  return models.tokenizers.SentencePieceTokenizer(run_tokenizer_path(workdir))


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the run's checkpoints, oldest first."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def restore_params(workdir: str, abstract_params: Any, *, what: str = "workdir") -> tuple[Any, int]:
  """The `params` of the newest checkpoint of a postrain run, in the structure of `abstract_params`.

  Only the parameters are read (the run's optimiser state may have any structure).
  """
  ckpt_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{what}: no checkpoint under {ckpt_dir!r}")
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


def checkpoint_meta(workdir: str, step: int) -> dict[str, Any]:
  """The metadata the trainer saved with checkpoint `step` of `workdir` (step, data position,
  the run's key, a LoRA run's `lora_base`)."""
  path = os.path.abspath(os.path.join(workdir, "checkpoints", str(step), "meta"))
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
    return dict(ckptr.restore(path))


def _check_lora_base(workdir: str, step: int, sha256: str, *, given: bool, what: str) -> None:
  """A LoRA run's adapters only fit the base they trained on: checkpoint `step` records the base's
  SHA-256 (`models.base_sha256`), compared here with the base about to be merged."""
  saved = checkpoint_meta(workdir, step).get("lora_base") or {}
  if saved.get("sha256") == sha256:
    return
  source = "the `base` given" if given else "the base its config builds"
  raise ValueError(
    f"{what}: the LoRA run {workdir!r} (checkpoint {step}) trained on the base {saved}, not on "
    f"{source} (SHA-256 {sha256[:16]}...); pass `load_run(..., base=)` the model it trained on "
    "(a run started with `Trainer(model=...)`, e.g. over an SFT run's model: that run's model)."
  )


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


def run_model(
  config: mlc.ConfigDict,
  vocab_size: int,
  *,
  model_name: str = "",
  overrides: dict[str, Any] | None = None,
  dtype: str = "",
  seed: int | None = None,
) -> nnx.Module:
  """The run's decoder with fresh parameters: its named config and overrides sized to its
  vocabulary (`model_name` replaces the named config and drops the run's overrides; `overrides`
  and `dtype` replace fields), or the imported weights it fine-tuned. (A self-play config has
  no `model.source` / `model.dtype`: scratch, float32.)"""
  dtype = dtype or config.model.get("dtype", "float32")
  if config.model.get("source", "scratch") != "scratch":
    loader = models.from_gguf if config.model.source == "gguf" else models.from_hf_dir
    _, model = loader(config.model.path, dtype=dtype)
    return model
  kw: dict[str, Any] = dict(vocab_size=vocab_size, dtype=dtype, param_dtype=dtype)
  kw.update({} if model_name else config.model.overrides.to_dict())
  kw.update(overrides or {})
  cfg = models.get_config(model_name or config.model.name, **kw)
  return models.Decoder(cfg, rngs=nnx.Rngs(config.seed if seed is None else seed))


def load_run(
  workdir: str,
  *,
  model_name: str = "",
  overrides: dict[str, Any] | None = None,
  dtype: str = "",
  what: str = "workdir",
  base: models.Decoder | None = None,
) -> Run:
  """Run `workdir`'s config, tokenizer and model at its newest checkpoint.

  Args:
    workdir: a postrain run directory (config.json, tokenizer/, checkpoints/).
    model_name, overrides, dtype: replace the run's model settings (`run_model`); rarely needed.
    what: the config key or argument naming `workdir`, for error messages.
    base: a LoRA run only: the frozen base it trained on, when that was not the model its config
      builds (a run started with `Trainer(config, workdir, model=...)`, e.g. RL with LoRA over an
      SFT run's model). Default: the base built from the run's config.

  Raises FileNotFoundError when the workdir has no config.json or no checkpoint; ValueError when a
  LoRA run's base (the SHA-256 its checkpoint records) is not the one given or built.
  """
  config = read_config(workdir, what=what)
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{what}: no checkpoint under {os.path.join(workdir, 'checkpoints')!r}")
  tokenizer = run_tokenizer(config, workdir)
  lora = config.model.get("lora", None)
  if lora is not None and lora.rank > 0:
    # A LoRA run: its base (the trainer's seed for a scratch model), the adapters from the
    # checkpoint, merged into a plain decoder.
    if base is None:
      model = run_model(config, tokenizer.vocab_size, dtype=dtype, seed=config.seed)
    else:
      model = nnx.clone(base)  # adapters are added in place: leave the caller's model alone
    _check_lora_base(
      workdir, steps[-1], models.base_sha256(model), given=base is not None, what=what
    )
    models.add_lora(
      model, rank=int(lora.rank), alpha=float(lora.alpha) or None, targets=tuple(lora.targets),
      seed=config.seed,
    )  # fmt: skip
    models.quantize_base(model, config.model.get("quantize", "none"))
    graphdef, abstract, rest = nnx.split(model, nnx.LoRAParam, ...)
    params, step = restore_params(workdir, abstract, what=what)
    merged = models.merge_lora(nnx.merge(graphdef, params, rest))
    return Run(workdir, config, tokenizer, merged, step)
  model = run_model(
    config,
    tokenizer.vocab_size,
    model_name=model_name,
    overrides=overrides,
    dtype=dtype,
    seed=0,
  )
  graphdef, abstract, rest = nnx.split(model, nnx.Param, ...)
  params, step = restore_params(workdir, abstract, what=what)
  return Run(workdir, config, tokenizer, nnx.merge(graphdef, params, rest), step)
