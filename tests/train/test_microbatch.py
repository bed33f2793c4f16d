"""Micro-batched updates (`rl.microbatch_rows`, `sft.microbatch_rows`): the gradient and every aux
metric accumulated over micro-batches equal those of the whole minibatch, for every aggregation
mode and algorithm (ConSPO's groups stay whole), the KL and entropy terms, SFT and distillation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from postrain import losses, models
from postrain.train import _distill, _update
from postrain.train import config as config_lib

V, G, B, T = 48, 2, 8, 12


@functools.cache
def _split_model():
  cfg = models.get_config(
    "tiny", vocab_size=V, embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
    mlp_dim=64,
  )  # fmt: skip
  return nnx.split(models.Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)


def _rl_batch(seed, per_token_adv=False):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, V, size=(B, T)).astype(np.int32)
  valid = np.ones((B, T), bool)
  valid[1, :3] = False  # a left-padded row
  mask = np.zeros((B, T), np.float32)
  for i in range(B):  # ragged responses: one row per micro-batch of 2 may be empty
    mask[i, T - rng.integers(1, 8) :] = 1.0
  mask[3] = 0.0  # an all-masked row
  mask[:, :4] *= valid[:, :4]
  weight = mask * rng.uniform(0.3, 1.0, size=(B, T)).astype(np.float32)  # e.g. a credit window
  rewards = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)
  adv = rng.normal(size=(B, T) if per_token_adv else (B,)).astype(np.float32)
  return {
    "tokens": tokens,
    "valid": valid,
    "mask": mask,
    "loss_mask": weight,
    "old_logp": (-2.0 + 0.3 * rng.normal(size=(B, T))).astype(np.float32),
    "ref_logp": (-2.0 + 0.3 * rng.normal(size=(B, T))).astype(np.float32),
    "advantages": adv,
    "rewards": rewards,
    "is_weights": rng.uniform(0.5, 2.0, size=(B, T)).astype(np.float32),
  }


def _spec(algorithm, agg, **kw):
  d = dict(
    algorithm=algorithm, group_size=G, eps_low=0.2, eps_high=0.28, dual_clip=None, agg=agg,
    max_len=T if agg == "seq_mean_token_sum_norm" else None, kl_coef=0.1, kl_kind="k3",
    entropy_coef=0.01, conspo_tau=10.0, logprob_impl="chunked",
  )  # fmt: skip
  d.update(kw)
  return _update.RLSpec(**d)


@functools.cache
def _grads_fn(spec, microbatch_rows):
  graphdef, _, rest = _split_model()
  return jax.jit(
    lambda params, batch, margin: _update.accumulated_grads(
      functools.partial(_update.rl_loss, spec=spec),
      params,
      graphdef,
      rest,
      batch,
      margin,
      counts_fn=functools.partial(_update.rl_counts, spec=spec),
      microbatch_rows=microbatch_rows,
      group_size=spec.group_size,
    )
  )


def _assert_same(got, want):
  (g1, a1), (g0, a0) = got, want
  assert set(a1) == set(a0)
  for k in a0:
    np.testing.assert_allclose(a1[k], a0[k], rtol=1e-6, atol=1e-7, err_msg=k)
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g0))
  for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
    # float32 summation order only: 1e-6 of the largest gradient entry.
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * scale)


CASES = [("grpo", agg) for agg in losses.AGG_MODES] + [
  ("dapo", "token_mean"),
  ("dr_grpo", "seq_mean_token_sum_norm"),
  ("gspo", "seq_mean_token_mean"),
  ("gspo_token", "seq_mean_token_mean"),
  ("cispo", "token_mean"),
  ("cispo", "seq_mean_token_sum"),
  ("conspo", "seq_mean_token_mean"),
  ("scrl", "token_mean"),
  ("sapo", "seq_mean_token_mean"),
  ("sapo", "token_mean"),
  ("gmpo", "seq_mean_token_mean"),
]


# Two fast cases; the whole matrix (every algorithm and aggregation mode) is marked slow.
FAST = {("grpo", "seq_mean_token_mean"), ("conspo", "seq_mean_token_mean")}


@pytest.mark.parametrize(
  "algorithm,agg", [c if c in FAST else pytest.param(*c, marks=pytest.mark.slow) for c in CASES]
)
def test_rl_microbatches_equal_whole_minibatch(algorithm, agg):
  spec = _spec(algorithm, agg)
  batch = _rl_batch(1, per_token_adv=algorithm == "scrl")
  if algorithm in ("cispo", "conspo", "scrl", "gmpo"):
    del batch["is_weights"]  # F-TIS weights: ppo_clip algorithms only
  _, params, _ = _split_model()
  margin = jnp.float32(0.01)
  want = _grads_fn(spec, 0)(params, batch, margin)
  # 4 micro-batches of one group each (row 3, all masked, empties half of one).
  _assert_same(_grads_fn(spec, 2)(params, batch, margin), want)


@pytest.mark.parametrize(
  "algorithm,agg",
  [
    ("grpo", "seq_mean_token_mean"),
    ("gspo", "seq_mean_token_mean"),
    ("conspo", "seq_mean_token_mean"),
  ],
)
@pytest.mark.parametrize("microbatch_rows", [0, 4])
def test_shared_prompt_update_equals_whole_rows(algorithm, agg, microbatch_rows):
  """`RLBatch.prompt_group` (each prompt's columns run once per group, `rl.share_prompt`): the
  gradient and every aux metric equal those of the batch run row by row, whole or in
  micro-batches of two groups."""
  spec = _spec(algorithm, agg)
  batch = _rl_batch(4)
  if algorithm == "conspo":
    del batch["is_weights"]
  plen = 4  # the responses start at column >= 5 (`_rl_batch`), after a 4-column prompt
  tokens, valid = batch["tokens"], batch["valid"]
  tokens[:, :plen] = np.repeat(tokens[::G, :plen], G, axis=0)
  valid[0, :3] = False  # row 1 is left-padded: so is the other row of its group
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  whole = _update.RLBatch(**batch, score_from=plen)
  shared = whole.replace(prompt_group=G)
  _, params, _ = _split_model()
  margin = jnp.float32(0.01)
  (g1, a1), (g0, a0) = (
    _grads_fn(spec, microbatch_rows)(params, b, margin) for b in (shared, whole)
  )
  for k in a0:  # summation order only
    np.testing.assert_allclose(a1[k], a0[k], rtol=1e-5, atol=1e-6, err_msg=k)
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g0))
  for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * scale)


def test_microbatch_rows_must_keep_groups_whole():
  spec = _spec("conspo", "seq_mean_token_mean", group_size=4)
  graphdef, params, rest = _split_model()
  with pytest.raises(ValueError, match="multiple of the group size"):
    _update.accumulated_grads(
      functools.partial(_update.rl_loss, spec=spec), params, graphdef, rest, _rl_batch(0),
      jnp.float32(0.0), counts_fn=functools.partial(_update.rl_counts, spec=spec),
      microbatch_rows=2, group_size=4,
    )  # fmt: skip


def test_sft_update_with_microbatches_equals_one_pass():
  graphdef, params, rest = _split_model()
  b = _rl_batch(2)
  batch = {"tokens": b["tokens"], "valid": b["valid"], "loss_mask": b["loss_mask"]}
  tx = optax.sgd(0.1)
  loss = functools.partial(_update.sft_loss, impl="chunked")
  outs = [
    _update.make_update(loss, tx, graphdef, rest, counts_fn=_update.sft_counts, microbatch_rows=r)(
      params, tx.init(params), batch
    )
    for r in (0, 2)
  ]
  (p0, _, a0), (p1, _, a1) = outs
  for k in a0:
    np.testing.assert_allclose(a1[k], a0[k], rtol=1e-6, err_msg=k)
  for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p0), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loss", ["reverse_kl", "pg"])
def test_distill_microbatches_equal_whole_minibatch(loss):
  graphdef, params, rest = _split_model()
  rng = np.random.default_rng(3)
  r = 5
  b = _rl_batch(3)
  batch = {
    "tokens": b["tokens"],
    "valid": b["valid"],
    "targets": b["tokens"][:, -r:],
    "mask": b["mask"][:, -r:],
    "weights": b["loss_mask"][:, -r:],
    "old_logp": b["old_logp"][:, -r:],
  }
  if loss == "pg":
    batch["teacher_logp"] = b["ref_logp"][:, -r:]
  else:
    batch["teacher_logits"] = rng.normal(size=(B, r, V)).astype(np.float32)
  spec = _distill.DistillSpec(
    loss=loss, alpha=0.5, topk=8, tail=True, temperature=1.0, agg="token_mean", is_clip=2.0
  )

  def run(rows):
    return jax.jit(
      lambda p, bt: _update.accumulated_grads(
        functools.partial(_distill.distill_loss, spec=spec), p, graphdef, rest, bt,
        counts_fn=_distill.distill_counts, microbatch_rows=rows, group_size=G,
      )
    )(params, batch)  # fmt: skip

  _assert_same(run(2), run(0))


def test_config_checks_microbatch_rows():
  c = config_lib.base_config()
  c.rl.prompts_per_step, c.rl.group_size, c.rl.updates_per_batch = 8, 4, 2
  c.rl.microbatch_rows = 8
  config_lib.validate(c)
  for bad in (6, 2, 32):  # not dividing 16 rows / splitting a group / more than the minibatch
    c.rl.microbatch_rows = bad
    with pytest.raises(ValueError, match=r"rl\.microbatch_rows"):
      config_lib.validate(c)
