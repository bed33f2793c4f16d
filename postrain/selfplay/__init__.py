"""`python -m postrain.selfplay`: proposer/solver self-play with the strict execution gate on or
off (arXiv 2605.22217), on the deterministic DSL (`configs/selfplay_dsl.py`) or on Python output
prediction (`configs/selfplay_python.py`). The host-side pieces (gate, sandbox, DSL, pool,
rewards, metrics) are in `postrain.tasks.selfplay`; this package is the runnable loop around
them. The Python task family's formats are in `postrain.selfplay.python_tasks`."""

from postrain.selfplay import _python_tasks as python_tasks
from postrain.selfplay._dsl_tasks import (
  canonical_answer,
  parse_proposal,
  proposer_prompt,
  random_program,
  seed_tasks,
  solver_prompt,
)
from postrain.selfplay._selfplay_loop import (
  LANGUAGES,
  SelfPlay,
  TaskFamily,
  gate_proposals,
  run,
  task_family,
  validate,
)

__all__ = [
  "LANGUAGES",
  "SelfPlay",
  "TaskFamily",
  "canonical_answer",
  "gate_proposals",
  "parse_proposal",
  "proposer_prompt",
  "python_tasks",
  "random_program",
  "run",
  "seed_tasks",
  "solver_prompt",
  "task_family",
  "validate",
]
