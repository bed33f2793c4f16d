"""Loading a scoring model for `python -m postrain.select`: a postrain workdir's latest orbax
checkpoint (model, tokenizer and task exactly as the run built them), or imported HF / GGUF
weights with their own tokenizer."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections as mlc
from flax import nnx

from postrain import tasks, train


@dataclasses.dataclass
class Scorer:
  """A scoring model split for jit (graphdef, params, rest) with the data it was trained on.

  Attributes:
    graphdef, params, rest: `nnx.split(model, nnx.Param, ...)`.
    data: the run's TaskData (tokenizer, prompt format, train/test problems); for imported
      weights, a TaskData with the model's tokenizer and plain prompts (`train`/`test` empty).
    step: the checkpoint's step (0 for imported weights).
  """

  graphdef: Any
  params: Any
  rest: Any
  data: train.TaskData
  step: int = 0

  @property
  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.params, self.rest)


def load_run_config(workdir: str) -> mlc.ConfigDict:
  """The config a postrain run recorded in `workdir/config.json`."""
  return train.runs.read_config(workdir, what="config.checkpoint")


def load_checkpoint(workdir: str) -> Scorer:
  """The model of a postrain run at its newest checkpoint (`postrain.train.load_run`: the run's
  tokenizer, task data in the workdir and model structure). Raises FileNotFoundError when the
  workdir has no config.json or no checkpoint."""
  run = train.load_run(workdir, what="config.checkpoint")
  graphdef, params, rest = nnx.split(run.model, nnx.Param, ...)
  return Scorer(graphdef, params, rest, run.task_data(), run.step)


def load_imported(source: str, path: str, *, tokenizer_path: str = "", dtype: str = "float32"):
  """A Scorer from HF safetensors (`source="hf"`, a checkpoint dir) or a GGUF file."""
  from postrain import models
  from postrain.models import tokenizers

  if not os.path.exists(path):
    raise FileNotFoundError(f"config.model.path: no such file or directory {path!r}")
  if source == "gguf":
    _, model = models.from_gguf(path, dtype=dtype)
    tok = tokenizers.from_gguf(tokenizer_path or path)
  else:
    _, model = models.from_hf_dir(path, dtype=dtype)
    tok = tokenizers.load_tokenizer(tokenizer_path or os.path.join(path, "tokenizer.json"))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  data = train.TaskData(
    task=tasks.get_task("jsonl", train=None), train=[], test=[], tokenizer=tok, chat_template=None
  )
  return Scorer(graphdef, params, rest, data, 0)
