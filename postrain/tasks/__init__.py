"""Verifiable tasks: problems, prompts, answer extraction, deadline-guarded verifiers, reference
solutions, SCRL subproblem chains, tfds datasets, the task tokenizer and pass@k.

  task = tasks.get_task("chain_sum", min_terms=2, max_terms=4)
  problems = task.generate("train", 64, seed=0)          # "test" is disjoint by construction
  prompts = [tasks.format_prompt(p) for p in problems]
  rewards, stats = tasks.score_batch(task, problems, completions)   # f32[N], VerifierStats

This file is a plain list of re-exports (no `__all__`), one import per module, so the modules
owned by other engineers (smepo, selfplay, mopd) add their line without touching the rest.
"""

# ruff: noqa: F401 (re-exports)

from postrain.tasks._arith import evaluate_steps, format_number, parse_number
from postrain.tasks._extract import (
  EXTRACT_MODES,
  MAX_EXTRACT_CHARS,
  boxed_contents,
  clean_answer,
  extract_answer,
  extract_answer_line,
  extract_answer_source,
  extract_boxed,
  extract_last_number,
)
from postrain.tasks._gym import GYM_TASKS, ReasoningGymTask
from postrain.tasks._jsonl import JsonlTask, load_gsm8k_jsonl, numeric_score
from postrain.tasks._pass_at_k import pass_at_k
from postrain.tasks._problem import SPLITS, Problem, Task
from postrain.tasks._prompt_format import INSTRUCTIONS, format_prompt, sft_example
from postrain.tasks._registry import get_task
from postrain.tasks._scrl_chains import (
  COMPLETION_FORMATS,
  ScrlChain,
  Subproblem,
  extract_subproblem_answers,
  format_scrl_prompt,
  score_subproblems,
  score_subproblems_batch,
  scrl_chain,
  scrl_char_spans,
  scrl_prompt_text,
  scrl_reference_completion,
  token_span_ids,
)
from postrain.tasks._solutions import ANSWER_FORMATS, Step, reference_solution, reference_steps
from postrain.tasks._tokenizer import task_corpus, train_tokenizer
from postrain.tasks._verify import (
  VerifierPool,
  VerifierStats,
  default_pool,
  score_answers,
  score_batch,
)

# tensorflow_datasets and the self-play sandbox are heavy imports; load them on first use so that
# verifier workers (which import this package) start fast.
_LAZY = {
  name: "postrain.tasks._tfds"
  for name in [
    "PostrainTasks",
    "TaskBuilderConfig",
    "load_task_problems",
    "prepare_task_dataset",
    "problem_from_record",
    "problem_to_record",
  ]
}
_LAZY_MODULES = ("mopd", "selfplay", "smepo")


def __getattr__(name):
  import importlib

  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  if name in _LAZY_MODULES:
    return importlib.import_module(f"postrain.tasks.{name}")
  raise AttributeError(f"module 'postrain.tasks' has no attribute {name!r}")
