"""The strict execution gate of self-play RL and its leaky relaxation (arXiv 2605.22217 §2.2).

  F_ε(τ) = 1 if exec_valid(τ) else Bernoulli(ε)

exec_valid: the proposed program runs on its input without crashing, within the time and memory
limits, without touching the sandbox guard, twice with the same output (determinism), and its
text does not simply contain the output (an "output leak": the task is answerable by reading).
ε = `leak_rate` is the paper's gate-relaxation knob: ε = 0 is the strict gate, ε = 1 admits
every parsed proposal. The output-leak check is an extra filter of this library (switch
`reject_output_leak`); the paper's gate also rejects banned keywords (`banned_words`).
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from postrain.tasks.selfplay._sandbox import SandboxConfig, run_program


@dataclasses.dataclass(frozen=True)
class GateVerdict:
  """admitted: the task enters the pool. reason: "ok" or why it failed the gate (kept when a
  failed task is leaked in by ε). output: the executor output (repr) when it ran. leaked: admitted
  only through the leak rate."""

  admitted: bool
  reason: str
  output: str | None = None
  leaked: bool = False


def output_leaks(program: str, output: str, *, min_chars: int = 3) -> bool:
  """True if the program text contains the output (its repr, or the string value itself for a
  string output), ignoring outputs shorter than `min_chars` (such as "0" or "1", which appear in
  most programs by accident)."""
  forms = {output}
  try:
    value = ast.literal_eval(output)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    value = None
  if isinstance(value, str):
    forms.add(value)
  squeeze = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
  return any(len(f) >= min_chars and squeeze(f) in squeeze(program) for f in forms if f)


def _leak(verdict: GateVerdict, leak_rate: float, rng: np.random.Generator | None) -> GateVerdict:
  if verdict.admitted or leak_rate <= 0.0:
    return verdict
  if leak_rate < 1.0 and rng is None:
    raise ValueError("`rng` is required when 0 < leak_rate < 1.")
  if leak_rate >= 1.0 or rng.random() < leak_rate:
    return dataclasses.replace(verdict, admitted=True, leaked=True)
  return verdict


def execution_gate(
  program: str,
  inputs: str,
  *,
  config: SandboxConfig | None = None,
  check_determinism: bool = True,
  n_runs: int = 2,
  reject_output_leak: bool = True,
  min_leak_chars: int = 3,
  banned_words: Sequence[str] = (),
  leak_rate: float = 0.0,
  rng: np.random.Generator | None = None,
) -> GateVerdict:
  """Gates one proposed (program, input) task (arXiv 2605.22217).

  Args:
    program: Python source defining the entry function (`config.entry`, default "f").
    inputs: the positional arguments as Python literals, e.g. "[3, 1, 2], 2".
    config: sandbox limits.
    check_determinism: run `n_runs` times (fresh process each; hash seeds differ) and require
      identical outputs.
    reject_output_leak: reject a program whose text contains its output (`output_leaks`).
    banned_words: reject programs containing any of these substrings before running them
      (the paper's banned-keyword check; empty by default, the sandbox blocks what is unsafe).
    leak_rate: ε; a rejected task is admitted anyway with probability ε (one `rng` draw).
    rng: numpy Generator for the leak draws.

  Returns:
    GateVerdict. Reasons: "ok", "banned_word", "syntax_error", "bad_input", "crash", "timeout",
    "memory", "sandbox_violation", "output_too_long", "nondeterministic", "output_leak".
  """
  if not 0.0 <= leak_rate <= 1.0:
    raise ValueError(f"`leak_rate` must be in [0, 1], got {leak_rate}.")
  if n_runs < 1 or (check_determinism and n_runs < 2):
    raise ValueError(f"`n_runs` must be >= 2 with the determinism check, got {n_runs}.")
  hit = next((w for w in banned_words if w in program), None)
  if hit is not None:
    return _leak(GateVerdict(False, "banned_word"), leak_rate, rng)
  first = run_program(program, inputs, config)
  if first.status != "ok":
    return _leak(GateVerdict(False, first.status), leak_rate, rng)
  for _ in range(n_runs - 1 if check_determinism else 0):
    again = run_program(program, inputs, config)
    if again.status != "ok" or again.output != first.output:
      return _leak(GateVerdict(False, "nondeterministic", first.output), leak_rate, rng)
  if reject_output_leak and output_leaks(program, first.output, min_chars=min_leak_chars):
    return _leak(GateVerdict(False, "output_leak", first.output), leak_rate, rng)
  return GateVerdict(True, "ok", first.output)


def execution_gate_batch(
  programs: Sequence[str],
  inputs: Sequence[str],
  *,
  max_workers: int = 4,
  leak_rate: float = 0.0,
  rng: np.random.Generator | None = None,
  **kwargs,
) -> list[GateVerdict]:
  """`execution_gate` over a batch, runs in parallel threads (each run is a subprocess). The
  leak draws are made afterwards in batch order, so they do not depend on thread timing."""
  if len(programs) != len(inputs):
    raise ValueError(f"{len(programs)} programs but {len(inputs)} inputs.")
  with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
    verdicts = list(pool.map(lambda pi: execution_gate(*pi, **kwargs), zip(programs, inputs)))
  return [_leak(v, leak_rate, rng) for v in verdicts]


def leaky_gate(
  exec_valid: Sequence[bool], leak_rate: float, rng: np.random.Generator
) -> np.ndarray:
  """F_ε over a batch of precomputed validity flags: exec_valid | (U < ε), bool[N]."""
  if not 0.0 <= leak_rate <= 1.0:
    raise ValueError(f"`leak_rate` must be in [0, 1], got {leak_rate}.")
  valid = np.asarray(exec_valid, bool)
  return valid | (rng.random(valid.shape) < leak_rate)
