"""Tests for MOPD teacher-context construction (arXiv 2605.12652) and its use with the OPD losses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postrain.losses import _distillation as D
from postrain.tasks import mopd

T = mopd.DEFAULT_TEMPLATE


def test_contrastive_2s1f_text():
  comps = ["a", "b", "c", "d"]
  rewards = [1.0, 0.0, 1.0, 1.0]
  out = mopd.build_teacher_prompts(
    "Q?", comps, rewards, mode="contrastive", max_peers=2, max_failures=1
  )
  # Cyclic order from i + 1; self excluded.
  assert out[0] == (
    "Q?\n\nCorrect solution:\n\nc\n\nAnother successful solution:\n\nd"
    "\n\nA known failed solution (avoid repeating this mistake):\n\nb\n\nCorrectly solve the original question."
  )
  assert out[1] == "Q?" + T.success_headers[0] + "c" + T.success_headers[1] + "d" + T.suffix
  assert (
    out[3]
    == "Q?"
    + T.success_headers[0]
    + "a"
    + T.success_headers[1]
    + "c"
    + T.failure_header
    + "b"
    + T.suffix
  )
  positive = mopd.build_teacher_prompts("Q?", comps, rewards, mode="positive", max_peers=1)
  assert positive[2] == "Q?" + T.success_headers[0] + "d" + T.suffix


def test_select_peers_properties():
  rng = np.random.default_rng(0)
  for _ in range(50):
    g = int(rng.integers(1, 7))
    rewards = rng.integers(0, 2, g).astype(float).tolist()
    for order in mopd.ORDERS:
      peers = mopd.select_peers(
        rewards, mode="contrastive", max_peers=2, max_failures=1, order=order, seed=3
      )
      for i, (succ, fail) in enumerate(peers):
        assert i not in succ and i not in fail
        assert len(set(succ)) == len(succ) <= 2 and len(fail) <= 1
        assert all(rewards[j] >= 0.5 for j in succ) and all(rewards[j] < 0.5 for j in fail)
        others_s = [j for j in range(g) if j != i and rewards[j] >= 0.5]
        others_f = [j for j in range(g) if j != i and rewards[j] < 0.5]
        assert len(succ) == min(2, len(others_s)) and len(fail) == min(1, len(others_f))
  # All-success group: no failures; all-failure group: no successes but a failure when G >= 2.
  assert all(f == [] for _, f in mopd.select_peers([1.0] * 4, mode="contrastive"))
  assert all(s == [] and len(f) == 1 for s, f in mopd.select_peers([0.0] * 4, mode="contrastive"))
  assert mopd.select_peers([1.0], mode="contrastive") == [([], [])]
  # Index order is the MOPD code's "first element"; exclude_self=False may pick the row itself.
  assert mopd.select_peers([1, 1, 1], order="index") == [([1, 2], []), ([0, 2], []), ([0, 1], [])]
  assert mopd.select_peers([1, 0, 0], exclude_self=False, max_peers=3) == [
    ([0], []),
    ([0], []),
    ([0], []),
  ]
  # Random order is reproducible and a permutation of the eligible peers.
  a = mopd.select_peers([1.0] * 6, order="random", seed=7, max_peers=5)
  assert a == mopd.select_peers([1.0] * 6, order="random", seed=7, max_peers=5)
  assert all(sorted(s) == [j for j in range(6) if j != i] for i, (s, _) in enumerate(a))
  # Threshold: partial credit splits at success_threshold.
  assert mopd.select_peers([0.2, 0.7, 1.0], success_threshold=0.8, max_peers=3)[0] == ([2], [])


def test_no_peers_gives_plain_prompt_and_custom_template():
  comps = ["x", "y", "z"]
  assert mopd.build_teacher_prompts("P", comps, [1, 1, 1], mode="none") == ["P"] * 3
  assert mopd.build_teacher_prompts("P", comps, [0, 0, 0], mode="positive") == ["P"] * 3
  assert mopd.build_teacher_prompts("P", ["x"], [1.0], mode="contrastive") == ["P"]
  assert mopd.build_teacher_prompts("P", comps, [1, 1, 1], max_peers=0) == ["P"] * 3
  # Row 0 is the only success: it has no other successful peer, the others see it.
  assert mopd.build_teacher_prompts("P", comps, [1, 0, 0]) == [
    "P",
    "P" + T.success_headers[0] + "x" + T.suffix,
    "P" + T.success_headers[0] + "x" + T.suffix,
  ]
  tpl = mopd.PeerTemplate(success_headers=("\n[ok] ",), failure_header="\n[bad] ", suffix="\nGo.")
  out = mopd.build_teacher_prompts(
    "P", comps, [1, 1, 0], mode="contrastive", max_peers=2, template=tpl
  )
  assert out[2] == "P\n[ok] x\n[ok] y\nGo."
  assert out[0] == "P\n[ok] y\n[bad] z\nGo."


def test_batch_layout():
  prompts = ["A", "B"]
  comps = ["a0", "a1", "b0", "b1"]
  out = mopd.build_batch_teacher_prompts(
    prompts, comps, [1, 0, 0, 1], group_size=2, mode="positive"
  )
  assert out == [
    "A",
    "A" + T.success_headers[0] + "a0" + T.suffix,
    "B" + T.success_headers[0] + "b1" + T.suffix,
    "B",
  ]
  assert (
    mopd.build_batch_teacher_prompts(["A", "A", "B", "B"], comps, [1, 0, 0, 1], group_size=2) == out
  )


def test_bad_inputs_raise_naming_the_argument():
  cases = [
    (ValueError, "`mode`", lambda: mopd.build_teacher_prompts("P", ["a"], [1.0], mode="both")),
    (ValueError, "`order`", lambda: mopd.select_peers([1.0], order="sorted")),
    (ValueError, "`rewards`", lambda: mopd.build_teacher_prompts("P", ["a", "b"], [1.0])),
    (ValueError, "`max_peers`", lambda: mopd.select_peers([1.0], max_peers=-1)),
    (TypeError, "`max_failures`", lambda: mopd.select_peers([1.0], max_failures=1.5)),
    (ValueError, "`rewards`", lambda: mopd.select_peers([1.0, float("nan")])),
    (TypeError, "`prompt`", lambda: mopd.build_teacher_prompts(["P"], ["a"], [1.0])),
    (TypeError, "`completions`", lambda: mopd.build_teacher_prompts("P", "ab", [1.0, 0.0])),
    (
      ValueError,
      "`group_size`",
      lambda: mopd.build_batch_teacher_prompts(["P"], ["a", "b", "c"], [1, 1, 1], group_size=2),
    ),
    (
      ValueError,
      "`prompts`",
      lambda: mopd.build_batch_teacher_prompts(["P", "Q", "R"], ["a", "b"], [1, 1], group_size=2),
    ),
  ]
  for exc, name, call in cases:
    with pytest.raises(exc, match=name):
      call()


# ------------------------------------------------- end to end: context -> teacher -> OPD loss

VOCAB = 16


def _encode(text):
  return [ord(c) % VOCAB for c in text]


def _toy_lm(scale, seed):
  """A tiny deterministic context-dependent LM: logits(ctx) = W[last] + scale · mean one-hot(ctx) @ U."""
  rng = np.random.default_rng(seed)
  w, u = rng.standard_normal((VOCAB, VOCAB)), rng.standard_normal((VOCAB, VOCAB))

  def logits(context_ids, response_ids):
    """Logits at each response position t (predicting response[t] from context + response[:t])."""
    out = []
    ids = list(context_ids)
    for tok in response_ids:
      bag = np.bincount(ids, minlength=VOCAB) / len(ids)
      out.append(w[ids[-1]] + scale * bag @ u)
      ids.append(tok)
    return np.stack(out)

  return logits


def _opd_batch(teacher_contexts, prompt, responses):
  student, teacher = _toy_lm(1.0, 1), _toy_lm(8.0, 2)
  t_max = max(len(r) for r in responses)
  s_l, t_l = np.zeros((len(responses), t_max, VOCAB)), np.zeros((len(responses), t_max, VOCAB))
  mask = np.zeros((len(responses), t_max))
  for b, (ctx, resp) in enumerate(zip(teacher_contexts, responses)):
    r = _encode(resp)
    s_l[b, : len(r)] = student(_encode(prompt), r)
    t_l[b, : len(r)] = teacher(_encode(ctx), r)
    mask[b, : len(r)] = 1
  return (
    jnp.asarray(s_l, jnp.float32),
    jnp.asarray(t_l, jnp.float32),
    jnp.asarray(mask, jnp.float32),
  )


LOSSES = {
  "jsd": jax.jit(functools.partial(D.jsd_loss, alpha=0.5)),
  "topk": jax.jit(functools.partial(D.topk_jsd_loss, k=4, alpha=0.5)),
  "reverse_kl": jax.jit(D.reverse_kl_loss),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_mopd_without_peers_equals_plain_opd(name):
  prompt, responses = "2+3=", ["5", "6 or 5", "41", "5."]
  loss_fn = LOSSES[name]
  plain, _ = loss_fn(*_opd_batch([prompt] * 4, prompt, responses))
  for mode, rewards in (
    ("none", [1, 0, 1, 0]),
    ("positive", [0, 0, 0, 0]),
    ("contrastive", [1, 1, 1, 1]),
  ):
    ctxs = mopd.build_teacher_prompts(
      prompt,
      responses,
      rewards,
      mode=mode,
      max_failures=0 if mode == "contrastive" else 1,
      max_peers=0 if mode == "contrastive" else 2,
    )
    loss, _ = loss_fn(*_opd_batch(ctxs, prompt, responses))
    np.testing.assert_allclose(loss, plain, rtol=1e-6)
  # With peers the teacher reads a different context and the loss changes (the test can fail).
  ctxs = mopd.build_teacher_prompts(prompt, responses, [1, 0, 1, 0], mode="contrastive")
  loss, _ = loss_fn(*_opd_batch(ctxs, prompt, responses))
  assert abs(float(loss) - float(plain)) > 1e-3
  # Per-row: a row without peers has exactly the plain teacher distribution.
  ctxs = mopd.build_teacher_prompts(prompt, responses, [1, 0, 0, 0], mode="positive")
  _, t_mopd, _ = _opd_batch(ctxs, prompt, responses)
  _, t_plain, _ = _opd_batch([prompt] * 4, prompt, responses)
  np.testing.assert_array_equal(t_mopd[0], t_plain[0])
  assert not np.allclose(t_mopd[1], t_plain[1])
