"""Self-play task proposal with a strict execution gate (arXiv 2605.22217).

from postrain.tasks import selfplay
verdict = selfplay.execution_gate("def f(x):\n  return sorted(x)[::2]", "[3, 1, 2]")
pool, stats = selfplay.admit(selfplay.TaskPool(), [program], [inputs], [verdict])
r_solver = selfplay.self_consistency_reward(answers)        # f32[P, G]
r_proposer = selfplay.proposer_reward(selfplay.solver_accuracy(answers, labels))
"""

from postrain.tasks.selfplay._dsl import (
  OPERATORS,
  DslError,
  dsl_gate,
  evaluate,
  format_value,
  parse,
  parse_value,
  run_dsl,
)
from postrain.tasks.selfplay._gate import (
  GateVerdict,
  execution_gate,
  execution_gate_batch,
  leaky_gate,
  output_leaks,
)
from postrain.tasks.selfplay._loop_parts import (
  Task,
  TaskPool,
  admit,
  canonicalize,
  grounded_reward,
  is_trivial_output,
  majority_vote,
  proposer_reward,
  self_consistency_reward,
  selfplay_metrics,
  solver_accuracy,
)
from postrain.tasks.selfplay._sandbox import BANNED_MODULES, ExecResult, SandboxConfig, run_program

__all__ = [
  "BANNED_MODULES",
  "OPERATORS",
  "DslError",
  "ExecResult",
  "GateVerdict",
  "SandboxConfig",
  "Task",
  "TaskPool",
  "admit",
  "canonicalize",
  "dsl_gate",
  "evaluate",
  "execution_gate",
  "execution_gate_batch",
  "format_value",
  "grounded_reward",
  "is_trivial_output",
  "leaky_gate",
  "majority_vote",
  "output_leaks",
  "parse",
  "parse_value",
  "proposer_reward",
  "run_dsl",
  "run_program",
  "self_consistency_reward",
  "selfplay_metrics",
  "solver_accuracy",
]
