"""Per-process shares of SCRL and SMEPO steps (`train._rl_step.rl_step`): the rows a process builds
from its share of the step (and the all-gathered per-row rewards) equal those rows of the
whole-batch computation, and its counts sum to the whole step's. No devices needed."""

import types

import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
import trainer_case as case

from postrain.train import _data, _scrl_stage, _smepo

ANY_DEVICES = True  # host-side arithmetic only: runs in-process whatever the devices
G, P, T, K = 4, 4, 10, 3
B = G * P
SHARES = (slice(0, B // 2), slice(B // 2, B))  # two processes' rows


def _scrl_rollout(seed):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, 7, size=B)
  mask = (np.arange(T)[None, :] >= 4) & (np.arange(T)[None, :] < 4 + lengths[:, None])
  span = np.where(mask, rng.integers(-1, K, size=(B, T)), -1).astype(np.int32)
  out = types.SimpleNamespace(
    tokens=jnp.asarray(rng.integers(3, 50, size=(B, T)), jnp.int32),
    valid=jnp.asarray(mask),
    response_mask=jnp.asarray(mask, jnp.float32),
    model_logp=jnp.asarray(np.where(mask, -1.0, 0.0), jnp.float32),
    lengths=jnp.asarray(lengths, jnp.int32),
    prompt_len=4,
  )
  sub = rng.integers(0, 2, size=(B, K)).astype(np.float32)
  outcome = rng.integers(0, 2, size=B).astype(np.float32)
  fmt = rng.random(B) > 0.2
  return out, sub, outcome, span, fmt


def _rows(out, rows):
  return types.SimpleNamespace(
    **{k: v if k == "prompt_len" else v[rows] for k, v in vars(out).items()}
  )


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_scrl_rows_of_each_share_equal_the_whole_batch(scale):
  out, sub, outcome, span, fmt = _scrl_rollout(0)
  is_curr = np.tile(np.arange(G) < G // 2, P)
  rl = mlc.ConfigDict(dict(group_size=G, adv_scale=scale))
  full, full_metrics, full_orig = _scrl_stage.scrl_rl_batch(
    out, sub, outcome, span, fmt, is_curr, rl=rl
  )
  assert np.abs(np.asarray(full.advantages)).max() > 0.1  # not a trivial all-zero case
  for rows in SHARES:
    # The process holds `out` and the spans of its rows only; per-row rewards are all-gathered.
    part, metrics, orig = _scrl_stage.scrl_rl_batch(
      _rows(out, rows), sub, outcome, span[rows], fmt, is_curr, rl=rl, rows=rows
    )
    for key in ("advantages", "rewards", "tokens", "mask", "old_logp"):
      np.testing.assert_array_equal(
        np.asarray(getattr(part, key)), np.asarray(getattr(full, key))[rows], err_msg=key
      )
    np.testing.assert_array_equal(orig, full_orig)
    metrics.pop("response_len")
    assert metrics == {k: v for k, v in full_metrics.items() if k != "response_len"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return _data.load_task_data(case.config(), str(tmp_path_factory.mktemp("shares")))


def test_smepo_shares_guide_the_prompts_of_the_whole_step(data):
  problems = data.train[:8]
  plain = data.encode_prompts(problems)
  cfg = mlc.ConfigDict(dict(fraction=0.5, template="auto", prefix_ratio=1.0))
  split_steps = 0
  for step in range(6):
    kw = dict(cfg=cfg, seed=3, step=step, max_prompt_len=10**6)
    whole, whole_metrics = _smepo.guide_prompts(data, problems, plain, **kw)
    assert sum(a != b for a, b in zip(whole, plain)) == 4
    parts, counts = [], {}
    for a, b in ((0, 4), (4, 8)):
      got, c = _smepo.guide_share(
        data, problems[a:b], plain[a:b], offset=a, total=len(problems), **kw
      )
      parts.append(got)
      counts = {k: counts.get(k, 0) + v for k, v in c.items()}
    assert parts[0] + parts[1] == whole, step
    assert _smepo.metrics_from_counts(counts, len(problems)) == whole_metrics
    split_steps += all(p != q for p, q in zip(parts, (plain[:4], plain[4:])))
  assert split_steps >= 1  # some step guides prompts of both shares
