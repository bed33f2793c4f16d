"""The training stack: configs, the SFT / RL loop, checkpoints and metrics.

python -m postrain.train --config configs/default.py --workdir runs/default

The public surface (code outside postrain/train/ imports these, never a `postrain.train._x`):
  * runs: `train`, `Trainer`, `build_model`; `load_run(workdir)` -> `Run` (config, tokenizer,
    model at the newest checkpoint); `base_config`, `validate`;
  * algorithms: `algorithms.REGISTRY` (the RL losses by name), `algorithms.ADVANTAGES`;
  * stages: `stages.REGISTRY` (the optional stages of the RL step: place, config section,
    checks), `stages.Stage`, `stages.use` (a user's stage in a config file);
  * the RL step: `rl_step(state, parts, problems)` over a `TrainState` with its fixed
    `RLStepParts`, the typed update batch `RLBatch`;
  * step builders: `make_optimizer`, `make_state_update` (`update(state, batch, *extra) ->
    (state, aux)`), `make_update` (the same over separate params / optimiser state), `rl_loss`
    with its static `RLSpec`, `sft_loss`, `make_logprob_fn`, `lora_dropout_kwargs` (LoRA
    adapter dropout of an update);
  * data and rollouts: `TaskData`, `load_task_data`, `sft_batch`, `step_problems`,
    `sample_rollouts`, `score_rollouts`, `rl_batch`, `evaluate`;
  * files: `Checkpointer`, `abstract_like`, `check_workdir_config`, `MetricsWriter`, `read_jsonl`.
"""

from postrain.train import algorithms, stages
from postrain.train._checkpoint import Checkpointer, abstract_like, check_workdir_config
from postrain.train._data import TaskData, load_task_data, sft_batch, step_problems
from postrain.train._memory import analyse as analyse_memory
from postrain.train._metrics_log import MetricsWriter, read_jsonl
from postrain.train._rl_step import RLStepParts, rl_batch, rl_step
from postrain.train._rollout import evaluate
from postrain.train._rollout import generate as sample_rollouts
from postrain.train._rollout import score as score_rollouts
from postrain.train._trainer import Trainer, build_model, train
from postrain.train._types import RLBatch, TrainState
from postrain.train._update import (
  RLSpec,
  lora_dropout_kwargs,
  make_logprob_fn,
  make_optimizer,
  make_state_update,
  make_update,
  rl_counts,
  rl_loss,
  sft_loss,
)
from postrain.train.config import base_config, validate
from postrain.train.runs import Run, load_run

__all__ = [
  "Checkpointer",
  "MetricsWriter",
  "RLBatch",
  "RLSpec",
  "RLStepParts",
  "Run",
  "TaskData",
  "TrainState",
  "Trainer",
  "abstract_like",
  "algorithms",
  "analyse_memory",
  "base_config",
  "build_model",
  "check_workdir_config",
  "evaluate",
  "load_run",
  "load_task_data",
  "lora_dropout_kwargs",
  "make_logprob_fn",
  "make_optimizer",
  "make_state_update",
  "make_update",
  "read_jsonl",
  "rl_batch",
  "rl_counts",
  "rl_loss",
  "rl_step",
  "sample_rollouts",
  "score_rollouts",
  "sft_batch",
  "sft_loss",
  "stages",
  "step_problems",
  "train",
  "validate",
]
