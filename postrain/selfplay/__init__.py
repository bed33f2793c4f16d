"""`python -m postrain.selfplay`: proposer/solver self-play on the DSL with the strict execution
gate on or off (arXiv 2605.22217). The host-side pieces (gate, DSL, pool, rewards, metrics) are
in `postrain.tasks.selfplay`; this package is the runnable loop around them."""

from postrain.selfplay._dsl_tasks import (
  canonical_answer,
  parse_proposal,
  proposer_prompt,
  random_program,
  seed_tasks,
  solver_prompt,
)
from postrain.selfplay._run import SelfPlay, gate_proposals, run, validate

__all__ = [
  "SelfPlay",
  "canonical_answer",
  "gate_proposals",
  "parse_proposal",
  "proposer_prompt",
  "random_program",
  "run",
  "seed_tasks",
  "solver_prompt",
  "validate",
]
