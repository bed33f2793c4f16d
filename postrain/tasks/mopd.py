"""MOPD teacher contexts: condition the teacher on the student's own peer rollouts (arXiv 2605.12652).

Host-side prompt construction (strings in, strings out). For every rollout i of a group the teacher
reads the prompt plus evidence from the *other* rollouts of the same group:

* ``"positive"`` (positive peer imitation): up to `max_peers` successful peers, labelled as correct
  solutions;
* ``"contrastive"`` (success–failure conditioning): the same successes plus up to `max_failures`
  failed peers labelled as failures (the paper's best setting is 2 successes + 1 failure, "2S1F",
  with the failure attached always);
* ``"none"``: the plain prompt (plain on-policy distillation).

A peer succeeds when its reward is >= `success_threshold` (0.5 in the MOPD config; any value in
(0, 1] gives the same split for 0/1 rewards). A row with no eligible peer gets the plain prompt,
so MOPD without peers is exactly plain OPD. (The MOPD code instead drops such rows from the loss;
use `select_peers(...)` to build that sample mask: rows whose peer lists are both empty.)

The teacher input is then `chat_template(teacher_prompt) ++ response_i`: the student's own
response is re-scored under the richer context, and the distillation loss is one of
`postrain.losses` (`topk_jsd_loss` with α = 0.5 and k = 100 in MOPD). The teacher may be a frozen
larger model or an EMA copy of the student (`ema_update`, rate 0.05).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

MODES = ("none", "positive", "contrastive")
ORDERS = ("cyclic", "index", "random")


@dataclasses.dataclass(frozen=True)
class PeerTemplate:
  """Text blocks of the teacher prompt (defaults: the MOPD code's wording).

  teacher prompt = prompt + success_headers[j] + success_j ... + failure_header + failure ... + suffix
  The j-th success uses success_headers[min(j, len - 1)]; absent blocks are omitted.
  """

  success_headers: tuple[str, ...] = (
    "\n\nCorrect solution:\n\n",
    "\n\nAnother successful solution:\n\n",
  )
  failure_header: str = "\n\nA known failed solution (avoid repeating this mistake):\n\n"
  suffix: str = "\n\nCorrectly solve the original question."


DEFAULT_TEMPLATE = PeerTemplate()


def _check_int(name: str, value, lo: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
  if value < lo:
    raise ValueError(f"`{name}` must be >= {lo}, got {value}.")


def _check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


def select_peers(
  rewards: Sequence[float],
  *,
  mode: str = "positive",
  max_peers: int = 2,
  max_failures: int = 1,
  exclude_self: bool = True,
  success_threshold: float = 0.5,
  order: str = "cyclic",
  seed: int = 0,
) -> list[tuple[list[int], list[int]]]:
  """Chooses each rollout's peers inside one group: a list of (success ids, failure ids) per row.

  Args:
    rewards: G scalar rewards of one group (host floats).
    mode: "none", "positive" (successes only) or "contrastive" (successes + failures).
    max_peers: maximum number of successful peers per row (2S1F: 2).
    max_failures: maximum number of failed peers per row in "contrastive" mode (2S1F: 1).
    exclude_self: never use row i as its own peer (MOPD default).
    success_threshold: reward >= threshold counts as a success.
    order: which eligible peers are taken first. "cyclic": i+1, i+2, ... (mod G), a deterministic
      order that spreads the choice over the group; "index": ascending ids (the MOPD code's
      "first element"); "random": a uniform random order per row (the paper note's suggestion,
      reproducible through `seed`).
    seed: seed of the "random" order.

  Returns:
    G pairs (successes, failures) of peer indices; both empty means "no peer" for that row.
  """
  _check_choice("mode", mode, MODES)
  _check_choice("order", order, ORDERS)
  _check_int("max_peers", max_peers, 0)
  _check_int("max_failures", max_failures, 0)
  r = np.asarray(rewards, np.float64)
  if r.ndim != 1:
    raise ValueError(f"`rewards` must be a flat list of G numbers, got shape {r.shape}.")
  if not np.all(np.isfinite(r)):
    raise ValueError(f"`rewards` must be finite, got {r.tolist()}.")
  g = len(r)
  success = r >= success_threshold
  rng = np.random.default_rng(seed)
  out = []
  for i in range(g):
    if order == "cyclic":
      cand = [(i + d) % g for d in range(g)]
      cand = cand[1:] + cand[:1]  # self last, so exclude_self=False still prefers the others
    elif order == "index":
      cand = list(range(g))
    else:
      cand = rng.permutation(g).tolist()
    if exclude_self:
      cand = [j for j in cand if j != i]
    if mode == "none":
      out.append(([], []))
      continue
    succ = [j for j in cand if success[j]][:max_peers]
    fail = [j for j in cand if not success[j]][:max_failures] if mode == "contrastive" else []
    out.append((succ, fail))
  return out


def build_teacher_prompts(
  prompt: str,
  completions: Sequence[str],
  rewards: Sequence[float],
  *,
  mode: str = "positive",
  max_peers: int = 2,
  max_failures: int = 1,
  exclude_self: bool = True,
  success_threshold: float = 0.5,
  order: str = "cyclic",
  seed: int = 0,
  template: PeerTemplate = DEFAULT_TEMPLATE,
) -> list[str]:
  """One teacher prompt per rollout of a group (MOPD Step B), as user-message text.

  Args:
    prompt: the question shown to the student (before any chat template).
    completions: the G sampled responses of this prompt's group (decoded text).
    rewards: their G verifier rewards.
    mode, max_peers, max_failures, exclude_self, success_threshold, order, seed: see `select_peers`.
    template: the `PeerTemplate` text blocks.

  Returns:
    G strings; row i is `prompt` itself when it has no peer (mode "none", G = 1, or no eligible
    success/failure), else prompt + labelled peer blocks + template.suffix.
  """
  if not isinstance(prompt, str):
    raise TypeError(f"`prompt` must be a str, got {type(prompt).__name__}.")
  if isinstance(completions, str) or not all(isinstance(c, str) for c in completions):
    raise TypeError("`completions` must be a sequence of str.")
  if len(completions) != len(rewards):
    raise ValueError(
      f"`completions` has {len(completions)} entries but `rewards` has {len(rewards)}."
    )
  if not isinstance(template, PeerTemplate) or not template.success_headers:
    raise ValueError("`template` must be a PeerTemplate with at least one success header.")
  peers = select_peers(
    rewards,
    mode=mode,
    max_peers=max_peers,
    max_failures=max_failures,
    exclude_self=exclude_self,
    success_threshold=success_threshold,
    order=order,
    seed=seed,
  )
  heads = template.success_headers
  out = []
  for succ, fail in peers:
    if not succ and not fail:
      out.append(prompt)
      continue
    blocks = [heads[min(j, len(heads) - 1)] + completions[p] for j, p in enumerate(succ)]
    blocks += [template.failure_header + completions[p] for p in fail]
    out.append(prompt + "".join(blocks) + template.suffix)
  return out


def build_batch_teacher_prompts(
  prompts: Sequence[str],
  completions: Sequence[str],
  rewards: Sequence[float],
  *,
  group_size: int,
  **kwargs,
) -> list[str]:
  """`build_teacher_prompts` over a flat batch B = P · G with groups contiguous.

  Args:
    prompts: P prompts, or B prompts (one per row; the first row of each group is used).
    completions: B responses; rewards: B rewards.
    group_size: G, dividing B.
    **kwargs: forwarded to `build_teacher_prompts` (mode, max_peers, template, ...); with
      `order="random"` each group uses `seed + group index`.

  Returns:
    B teacher prompts in batch order.
  """
  _check_int("group_size", group_size, 1)
  b = len(completions)
  if len(rewards) != b:
    raise ValueError(f"`completions` has {b} entries but `rewards` has {len(rewards)}.")
  if b % group_size:
    raise ValueError(f"`group_size`={group_size} does not divide the batch of {b} `completions`.")
  n_groups = b // group_size
  if len(prompts) not in (n_groups, b):
    raise ValueError(
      f"`prompts` must have {n_groups} (one per group) or {b} entries, got {len(prompts)}."
    )
  stride = 1 if len(prompts) == n_groups else group_size
  seed = kwargs.pop("seed", 0)
  out = []
  for gi in range(n_groups):
    sl = slice(gi * group_size, (gi + 1) * group_size)
    out += build_teacher_prompts(
      prompts[gi * stride], list(completions[sl]), list(rewards[sl]), seed=seed + gi, **kwargs
    )
  return out
