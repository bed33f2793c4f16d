"""RL algorithms as a registry: a name chooses a policy loss, its config defaults and its checks.

An entry (`Algorithm`) names
  * `loss`: `(logp, batch, spec, margin) -> (loss f32[], aux dict)` on one minibatch, where `logp`
    f32[B, T] are the policy's log-probs, `batch` the update batch (an `RLBatch`: `old_logp`,
    `advantages`, `loss_mask`, `rewards`, optional `is_weights`), `spec` the static `RLSpec` (`_update.py`) and
    `margin` this step's ConSPO margin;
  * `defaults`: the `config.rl` keys `config.set_algorithm` sets (the paper's hyperparameters);
  * `section`: the algorithm's own sub-config `config.rl.<name>` with its defaults (its
    hyperparameters reach the loss as `spec.loss_kwargs`);
  * `check`: `check(config, need)` raising through `need(ok, key, message)` on values the
    algorithm cannot run with;
  * `is_weights`: whether the loss takes F-TIS per-token importance weights;
  * `normalisers`: `normalisers(spec) -> (loss_count, {aux_key: count})`, the batch count each
    term is a mean over (micro-batched updates scale each micro-batch's terms by its share of the
    minibatch's counts, `_update.py`). Default (`agg_normalisers`): `rl.agg`'s count, loss-mask
    tokens for "token_mean" and rows with tokens otherwise, and every aux a loss-mask token mean;
  * `counts`: `counts(batch, spec) -> {name: f32[]}`, counts of its own beyond the token and row
    counts (ConSPO's groups, positives and negatives).

`config.rl.algorithm` is a registry name or `"package.module:function"`, a user's loss with the
array signature of `losses.ppo_clip`: `fn(logp, old_logp, advantages, mask, **config.rl.loss_kwargs)
-> (loss, aux)`; its aux keys appear in the metrics. With `rl.microbatch_rows`, a user's loss is
taken to normalise as `rl.agg` says (see `agg_normalisers`), its aux as loss-mask token means. `config.rl.advantage` chooses the advantage
estimator of the plain RL batch (`ADVANTAGES`).

Adding a built-in loss: write the function in `postrain.losses`, register it here, test it
(docs/architecture.md, "Add a loss").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from postrain import advantages as advantages_lib
from postrain import losses
from postrain._validation import import_attr


@dataclasses.dataclass(frozen=True)
class Algorithm:
  name: str
  loss: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  section: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  check: Callable[[Any, Callable[[bool, str, str], None]], None] | None = None
  is_weights: bool = True
  normalisers: Callable[[Any], tuple[str, dict[str, str]]] | None = None
  counts: Callable[[dict[str, jax.Array], Any], dict[str, jax.Array]] | None = None


def agg_normalisers(spec: Any) -> tuple[str, dict[str, str]]:
  """The default: the loss is a mean over loss-mask tokens ("token_mean") or over rows with
  tokens (the other aggregations); every aux metric a loss-mask token mean."""
  return ("w_tokens" if spec.agg == "token_mean" else "w_rows"), {}


def _ppo(level: str):
  """`losses.ppo_clip` at `level` (GRPO / DAPO / Dr.GRPO / SCRL: "token"; GSPO: "sequence")."""

  def loss(logp, batch, spec, margin):
    del margin
    return losses.ppo_clip(
      logp,
      batch.old_logp,
      batch.advantages,
      batch.loss_mask,
      eps_low=spec.eps_low,
      eps_high=spec.eps_high,
      level=level,
      agg=spec.agg,
      dual_clip=spec.dual_clip,
      max_len=spec.max_len,
      is_weights=batch.is_weights,  # F-TIS capped generator->learner weights
    )

  return loss


def _clipped(fn):
  """`fn` (`losses.cispo` or `losses.gmpo`): clip bounds and aggregation, no IS weights."""

  def loss(logp, batch, spec, margin):
    del margin
    return fn(
      logp,
      batch.old_logp,
      batch.advantages,
      batch.loss_mask,
      eps_low=spec.eps_low,
      eps_high=spec.eps_high,
      agg=spec.agg,
      max_len=spec.max_len,
    )

  return loss


# ConSPO's positive threshold on the rewards (`losses.conspo`'s default).
_CONSPO_POS_THRESHOLD = 0.5


def _conspo(logp, batch, spec, margin):
  return losses.conspo(
    logp,
    batch.loss_mask,
    batch.rewards,
    group_size=spec.group_size,
    tau=spec.conspo_tau,
    margin=margin,
    pos_threshold=_CONSPO_POS_THRESHOLD,
  )


def _conspo_counts(batch, spec):
  """Groups, groups with both positives and negatives, positives and negatives (rows with
  tokens), the normalisers of `losses.conspo`'s loss and aux."""
  f32 = jnp.float32
  has = jnp.sum(batch.loss_mask.astype(f32), axis=-1) > 0
  pos = has & (batch.rewards > _CONSPO_POS_THRESHOLD)
  neg = has & ~(batch.rewards > _CONSPO_POS_THRESHOLD)
  n_pos = jnp.sum(pos.reshape(-1, spec.group_size), axis=-1)
  n_neg = jnp.sum(neg.reshape(-1, spec.group_size), axis=-1)
  return dict(
    groups=jnp.asarray(n_pos.shape[0], f32),
    valid_groups=jnp.sum(((n_pos > 0) & (n_neg > 0)).astype(f32)),
    pos=jnp.sum(pos.astype(f32)),
    neg=jnp.sum(neg.astype(f32)),
  )


def _conspo_normalisers(spec):
  del spec
  return "valid_groups", {"contrast_frac": "groups", "pos_score": "pos", "neg_score": "neg"}


def _sapo(logp, batch, spec, margin):
  del margin
  return losses.sapo(
    logp,
    batch.old_logp,
    batch.advantages,
    batch.loss_mask,
    agg=spec.agg,
    max_len=spec.max_len,
    is_weights=batch.is_weights,
    **dict(spec.loss_kwargs),
  )


def _check_scrl(c, need) -> None:
  need(c.rl.group_size % 2 == 0, "rl.group_size", "must be even for SCRL mixed groups")
  need(
    c.rl.get("advantage", "group_normalized") == "group_normalized",
    "rl.advantage",
    "SCRL computes its own span advantages (leave rl.advantage='group_normalized')",
  )


def _check_sapo(c, need) -> None:
  need(
    c.rl.sapo.tau_pos > 0 and c.rl.sapo.tau_neg > 0,
    "rl.sapo.tau_pos/tau_neg",
    "gate temperatures must be > 0",
  )


_TOKEN_CLIP = dict(eps_low=0.2, eps_high=0.2, agg="seq_mean_token_mean", adv_scale="group")
_GSPO_CLIP = dict(eps_low=3e-4, eps_high=4e-4, agg="seq_mean_token_mean", adv_scale="group")

REGISTRY: dict[str, Algorithm] = {
  a.name: a
  for a in (
    Algorithm("grpo", _ppo("token"), _TOKEN_CLIP),
    # DAPO (arXiv 2503.14476): clip-higher, token-mean, dynamic sampling.
    Algorithm(
      "dapo",
      _ppo("token"),
      dict(eps_low=0.2, eps_high=0.28, agg="token_mean", adv_scale="group", dynamic_sampling=True),
    ),
    # Dr.GRPO (arXiv 2503.20783): no std scaling, constant length normaliser.
    Algorithm(
      "dr_grpo",
      _ppo("token"),
      dict(eps_low=0.2, eps_high=0.2, agg="seq_mean_token_sum_norm", adv_scale="none"),
    ),
    # GSPO (arXiv 2507.18071): sequence ratio, clip 3e-4 / 4e-4.
    Algorithm("gspo", _ppo("sequence"), _GSPO_CLIP),
    Algorithm("gspo_token", _ppo("sequence_token"), _GSPO_CLIP),
    # CISPO (arXiv 2506.13585): only the upper IS-weight clip is active by default. The paper
    # sets eps_low "to a large value" (no lower bound): eps_low 1 puts the bound at r >= 0, which
    # every ratio meets (eps_low 0 would raise every weight below 1 to 1).
    Algorithm(
      "cispo",
      _clipped(losses.cispo),
      dict(eps_low=1.0, eps_high=0.28, agg="token_mean", adv_scale="group"),
      is_weights=False,
    ),
    # ConSPO (arXiv 2605.12969): tau 10, margin 0.01 warmed up over 30% of training.
    Algorithm(
      "conspo",
      _conspo,
      dict(conspo_tau=10.0, conspo_margin=0.01, conspo_margin_warmup=0.3),
      is_weights=False,
      normalisers=_conspo_normalisers,
      counts=_conspo_counts,
    ),
    # SCRL (arXiv 2605.22074): token-level PPO on span advantages, one token normaliser.
    Algorithm(
      "scrl",
      _ppo("token"),
      dict(eps_low=0.2, eps_high=0.28, agg="token_mean", adv_scale="group"),
      check=_check_scrl,
      is_weights=False,
    ),
    # SAPO (arXiv 2511.20347): a sigmoid gate on the token ratio, the paper's temperatures.
    Algorithm(
      "sapo",
      _sapo,
      dict(agg="seq_mean_token_mean", adv_scale="group"),
      section=dict(tau_pos=1.0, tau_neg=1.05),
      check=_check_sapo,
    ),
    # GMPO (arXiv 2507.20673): geometric-mean sequence ratio, log-ratio clip (e^-0.4, e^0.4).
    Algorithm(
      "gmpo",
      _clipped(losses.gmpo),
      dict(eps_low=0.4, eps_high=0.4, agg="seq_mean_token_mean", adv_scale="group"),
      is_weights=False,
    ),
  )
}


# config.rl.advantage -> f(rewards f32[B], *, group_size, scale) -> advantages f32[B].
ADVANTAGES: dict[str, Callable[..., jax.Array]] = {
  "group_normalized": lambda r, *, group_size, scale: advantages_lib.group_normalized(
    r, group_size=group_size, scale=scale
  ),
  # RLOO (leave-one-out baseline): `adv_scale` does not apply.
  "rloo": lambda r, *, group_size, scale: advantages_lib.rloo(r, group_size=group_size),
}


def compute_advantages(rl: Any, rewards: jax.Array) -> jax.Array:
  """Advantages f32[B] of `rewards` f32[B] with `rl.advantage`'s estimator (default GRPO's)."""
  fn = ADVANTAGES[rl.get("advantage", "group_normalized")]
  return fn(rewards, group_size=rl.group_size, scale=rl.adv_scale)


def _user_loss(path: str) -> Callable[..., Any]:
  """The function `"package.module:function"` names (ValueError naming the config key if not)."""
  fn = import_attr(path, "config.rl.algorithm: cannot import loss", "package.module:function")
  if not callable(fn):
    raise ValueError(f"config.rl.algorithm: {path!r} is not callable")
  return fn


def get(name: str) -> Algorithm:
  """The entry of `name`: a registry name or a user loss `"package.module:function"`."""
  if name in REGISTRY:
    return REGISTRY[name]
  if ":" in name:
    fn = _user_loss(name)

    def loss(logp, batch, spec, margin):
      del margin
      kwargs = dict(spec.loss_kwargs)
      if batch.is_weights is not None:
        kwargs["is_weights"] = batch.is_weights
      return fn(logp, batch.old_logp, batch.advantages, batch.loss_mask, **kwargs)

    return Algorithm(name, loss)
  raise ValueError(
    f"config.rl.algorithm: must be one of {tuple(REGISTRY)} or 'package.module:function', "
    f"got {name!r}"
  )


def policy_loss(logp: jax.Array, batch: dict[str, jax.Array], spec: Any, margin: jax.Array):
  """The policy loss of `spec.algorithm` (the registry lookup `_update.rl_loss` calls)."""
  return get(spec.algorithm).loss(logp, batch, spec, margin)


def normalisers(spec: Any) -> tuple[str, dict[str, str]]:
  """`spec.algorithm`'s normalising counts (`Algorithm.normalisers`; `agg_normalisers` if none)."""
  return (get(spec.algorithm).normalisers or agg_normalisers)(spec)


def counts(batch: dict[str, jax.Array], spec: Any) -> dict[str, jax.Array]:
  """`spec.algorithm`'s own counts of `batch` (`Algorithm.counts`; none by default)."""
  fn = get(spec.algorithm).counts
  return {} if fn is None else fn(batch, spec)


def loss_kwargs(rl: Any) -> tuple[tuple[str, Any], ...]:
  """The static hyperparameters of `rl.algorithm`'s own section (a user loss: `rl.loss_kwargs`),
  as sorted (key, value) pairs: hashable, part of `RLSpec`."""
  if rl.algorithm in REGISTRY:
    entry = REGISTRY[rl.algorithm]
    section = rl[entry.name].to_dict() if entry.section else {}
  else:
    section = rl.loss_kwargs.to_dict()
  return tuple(sorted(section.items()))


def add_sections(rl: Any) -> None:
  """Adds every algorithm's own sub-config `rl.<name>` with its defaults (`base_config`)."""
  import ml_collections as mlc

  for entry in REGISTRY.values():
    if entry.section:
      rl[entry.name] = mlc.ConfigDict(dict(entry.section))


def set_defaults(c: Any, name: str) -> None:
  """Sets `c.rl.algorithm = name` and the entry's defaults (`config.set_algorithm`)."""
  if name not in REGISTRY:
    raise ValueError(f"algorithm must be one of {sorted(REGISTRY)}, got {name!r}")
  c.rl.algorithm = name
  c.rl.update(dict(REGISTRY[name].defaults))


def validate(c: Any, need: Callable[[bool, str, str], None]) -> None:
  """The algorithm name (a user loss must import), its checks and the advantage estimator."""
  name = c.rl.algorithm
  need(
    name in REGISTRY or ":" in name,
    "rl.algorithm",
    f"must be one of {tuple(REGISTRY)} or 'package.module:function', got {name!r}",
  )
  entry = get(name)
  need(
    c.rl.advantage in ADVANTAGES,
    "rl.advantage",
    f"must be one of {tuple(ADVANTAGES)}, got {c.rl.advantage!r}",
  )
  need(
    not c.rl.ftis.path or entry.is_weights,
    "rl.algorithm",
    f"{name!r} takes no per-token importance weights, which F-TIS (rl.ftis.path) needs",
  )
  if entry.check is not None:
    entry.check(c, need)
