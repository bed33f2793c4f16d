"""Distillation and F-TIS step logic on a tiny decoder, against independent references (fast)."""

import functools
import types

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest
from flax import nnx

from postrain import advantages, models
from postrain.train import _distill, _ftis, _rl_step, _teacher, _update
from postrain.train import config as config_lib

V, B, T, R = 48, 4, 14, 6


@functools.cache
def _model(seed=0, vocab=V):
  cfg = models.get_config(
    "tiny",
    vocab_size=vocab,
    embed_dim=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    mlp_dim=64,
  )
  return models.Decoder(cfg, rngs=nnx.Rngs(seed))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, V, size=(B, T)).astype(np.int32)
  valid = np.ones((B, T), bool)
  valid[1, :3] = False  # a left-padded row
  mask = (rng.random((B, R)) < 0.8).astype(np.float32)
  mask[2] = 0.0  # an all-masked row
  return tokens, valid, mask


@functools.cache
def _teacher_fn(full_logits=True, release_k=0):
  g, _, rest = nnx.split(_model(), nnx.Param, ...)
  return _distill.make_teacher_fn(
    g, rest, g, rest, student_vocab=V, full_logits=full_logits, release_k=release_k, vocab_map=None
  )


def _spec(loss, is_clip=2.0):
  return _distill.DistillSpec(
    loss=loss, alpha=0.5, topk=8, tail=True, temperature=1.0, agg="token_mean", is_clip=is_clip
  )


@functools.cache
def _grad_fn(loss):
  g, _, rest = nnx.split(_model(), nnx.Param, ...)
  return jax.jit(
    jax.value_and_grad(lambda p, b: _distill.distill_loss(p, g, rest, b, _spec(loss)), has_aux=True)
  )


def _make_batch(teacher_params, student_params, full_logits=True):
  tokens, valid, mask = _batch()
  targets = tokens[:, -R:]
  tout = _teacher_fn(full_logits)(
    teacher_params, tokens, valid, student_params, tokens, valid, targets
  )
  g, _, rest = nnx.split(_model(), nnx.Param, ...)
  old = models.logprobs(
    nnx.merge(g, student_params, rest), tokens, np.ones_like(valid), valid=valid
  )
  return {
    "tokens": jnp.asarray(tokens),
    "valid": jnp.asarray(valid),
    "targets": jnp.asarray(targets),
    "mask": jnp.asarray(mask),
    "weights": jnp.ones((B, R), jnp.float32),
    "old_logp": old[:, -R:],
    **tout,
  }


@functools.cache
def _response_logits_fn():
  model = _model()  # built outside any trace, so the cached model never holds tracers
  return jax.jit(lambda tokens, valid: _distill.response_logits(model, tokens, valid, R))


def _response_logits(tokens, valid):
  return _response_logits_fn()(tokens, valid)


def test_response_logits_align_with_model_logprobs():
  model = _model()
  tokens, valid, _ = _batch()
  logits = _response_logits(jnp.asarray(tokens), jnp.asarray(valid))
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
  got = np.take_along_axis(logp, tokens[:, -R:, None], -1)[..., 0]
  want = models.logprobs(model, tokens, np.ones((B, T)), valid=valid)[:, -R:]
  np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("loss", _distill.LOSSES)
def test_teacher_equal_to_student_gives_zero_loss_and_gradient(loss):
  params = nnx.split(_model(), nnx.Param, ...)[1]
  batch = _make_batch(params, params, full_logits=loss != "pg")
  (value, aux), grads = _grad_fn(loss)(params, batch)
  assert abs(float(value)) < 1e-6
  leaves = jax.tree.leaves(grads)
  assert max(float(jnp.max(jnp.abs(x))) for x in leaves) < 1e-6
  if "reverse_kl" in aux:
    assert abs(float(aux["reverse_kl"])) < 1e-6


def test_reverse_kl_loss_matches_numpy_and_has_a_gradient_for_another_teacher():
  s_params = nnx.split(_model(0), nnx.Param, ...)[1]
  t_params = nnx.split(_model(1), nnx.Param, ...)[1]
  batch = _make_batch(t_params, s_params)
  (value, _), grads = _grad_fn("reverse_kl")(s_params, batch)
  s_logits = _distill.response_logits(_model(0), batch["tokens"], batch["valid"], R)
  ls = jax.nn.log_softmax(np.asarray(s_logits, np.float64), -1)
  lt = jax.nn.log_softmax(np.asarray(batch["teacher_logits"], np.float64), -1)
  kl = np.sum(np.exp(ls) * (ls - lt), -1)
  mask = np.asarray(batch["mask"])
  # First minibatch: old = current, so the MOPD ratio weight is 1.
  np.testing.assert_allclose(float(value), (kl * mask).sum() / mask.sum(), rtol=1e-4)
  assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(grads)) > 1e-4


def test_teacher_layout_keeps_response_positions_and_left_padding_is_invisible():
  prompts = [[3, 4, 5], [6], [7, 8, 9, 10, 11], [12, 13]]
  response = np.arange(20, 20 + B * R, dtype=np.int32).reshape(B, R) % V
  rvalid = np.ones((B, R), bool)
  rvalid[0, -2:] = False
  tokens, valid = _distill.teacher_layout(prompts, response, rvalid, pad_id=0)
  assert tokens.shape[1] % 32 == R and np.array_equal(tokens[:, -R:], response)
  logits = _response_logits(jnp.asarray(tokens), jnp.asarray(valid))
  for i, p in enumerate(prompts):  # each row alone, unpadded
    seq = np.asarray([*p, *response[i]], np.int32)[None]
    alone = _response_logits(jnp.asarray(seq), jnp.ones_like(seq, bool))
    n = int(rvalid[i].sum())
    np.testing.assert_allclose(logits[i, :n], alone[0, :n], atol=2e-4)


class _CharTok:
  """A character tokenizer: ids 3.. for printable characters, 1 = bos, 2 = eos."""

  vocab_size, bos_id, eos_id, pad_id = 128, 1, 2, 0

  def encode(self, text):
    return [min(ord(ch), 127) for ch in text]

  def decode(self, ids):
    return "".join(chr(i) for i in ids)


def _data():
  from postrain import tasks
  from postrain.train._data import TaskData

  problems = [
    tasks.Problem(id=f"t/{i}", question=f"{i} + 1 =", answer=str(i + 1), metadata={}, task="t")
    for i in range(2)
  ]
  return TaskData(None, problems, problems, _CharTok(), None, ""), problems


def _distill_cfg(**kw):
  d = _distill.distill_config()
  d.update(kw)
  return d


def test_mopd_prompts_without_peers_are_the_student_prompts():
  data, problems = _data()
  texts = ["a", "b", "c", "d", "e", "f"]
  rewards = np.array([1, 0, 1, 0, 0, 0], np.float32)
  ids, has_peer, trunc = _distill.mopd_teacher_prompts(
    data,
    problems,
    texts,
    rewards,
    group_size=3,
    d=_distill_cfg(max_peers=0, max_failures=0),
    seed=0,
  )
  student = data.encode_prompts(problems)
  assert ids == [student[i // 3] for i in range(6)] and not has_peer.any() and trunc == 0
  ids, has_peer, _ = _distill.mopd_teacher_prompts(
    data, problems, texts, rewards, group_size=3, d=_distill_cfg(), seed=0
  )
  text = [data.tokenizer.decode(x) for x in ids]
  # Row 0 (group 0: rewards 1, 0, 1) sees success "c" and failure "b", never itself.
  assert "Correct solution:\n\nc" in text[0] and "failed solution" in text[0]
  assert "\n\nb" in text[0] and "\n\na" not in text[0]
  assert text[0].startswith("\x01Question: 0 + 1 =") and text[0].endswith("\nAnswer:")
  # Group 1 has only failures: contrastive context still shows one failed peer.
  assert has_peer.all()
  ids, has_peer, trunc = _distill.mopd_teacher_prompts(
    data, problems, texts, rewards, group_size=3, d=_distill_cfg(max_teacher_prompt_len=20), seed=0
  )
  assert trunc == 6 and not has_peer.any()


def test_segment_ids_break_at_newlines_and_cap():
  tok = _CharTok()
  row = np.asarray(tok.encode("1+2=3\n3+4=7\nanswer: 7"), np.int32)
  mask = np.ones((1, len(row)), np.float32)
  mask[0, -1] = 0
  seg = _distill.segment_ids(row[None], mask, tok, num_segments=16)[0]
  assert list(seg[:6]) == [0] * 6 and list(seg[6:12]) == [1] * 6
  assert set(seg[12:-1]) == {2} and seg[-1] == -1
  capped = _distill.segment_ids(row[None], mask, tok, num_segments=2)[0]
  assert capped.max() == 1


def test_vocab_mismatch_is_an_error_and_a_map_fixes_it(tmp_path):
  with pytest.raises(ValueError, match="teacher vocabulary"):
    _teacher.check_vocab(48, 64)
  np.save(tmp_path / "map.npy", np.arange(48, dtype=np.int32))
  assert _teacher.check_vocab(48, 64, vocab_map_path=str(tmp_path / "map.npy")).shape == (48,)
  np.save(tmp_path / "bad.npy", np.arange(40, dtype=np.int32))
  with pytest.raises(ValueError, match="student_to_teacher"):
    _teacher.check_vocab(48, 64, vocab_map_path=str(tmp_path / "bad.npy"))


def test_hf_teacher_with_another_vocabulary_fails_before_loading(tmp_path, monkeypatch):
  teacher = _model(0, vocab=40)
  models.save_hf_dir(teacher, teacher.cfg, tmp_path / "hf")

  def no_load(*a, **k):
    raise AssertionError("weights loaded before the vocabulary check")

  monkeypatch.setattr(models, "from_hf_dir", no_load)
  c = config_lib.base_config()
  c.mode, c.teacher.source, c.teacher.path = "opd", "hf", str(tmp_path / "hf")
  with pytest.raises(ValueError, match=r"config.teacher: teacher vocabulary \(40\).*\(48\)"):
    _teacher.build_teacher(c, student_vocab=48)


def test_config_validation_of_distill_keys():
  c = config_lib.base_config()
  c.mode = "opd"
  with pytest.raises(ValueError, match=r"teacher\.source"):
    config_lib.validate(c)
  c.teacher.source = "ema"
  config_lib.validate(c)
  for key, value, name in (
    ("loss", "kl", "distill.loss"),
    ("context", "both", "distill.context"),
    ("alpha", 1.5, "distill.alpha"),
  ):
    bad = c.copy_and_resolve_references()
    bad.distill[key] = value
    with pytest.raises(ValueError, match=name):
      config_lib.validate(bad)
  bad = c.copy_and_resolve_references()
  bad.teacher.source = "workdir"
  with pytest.raises(ValueError, match=r"teacher\.path"):
    config_lib.validate(bad)


# --------------------------------------------------------------------------------------- F-TIS


G = 4


@functools.cache
def _rl_setup():
  model = _model(2)
  g, params, rest = nnx.split(model, nnx.Param, ...)
  spec = _update.RLSpec(
    algorithm="grpo",
    group_size=G,
    eps_low=0.2,
    eps_high=0.2,
    dual_clip=None,
    agg="seq_mean_token_mean",
    max_len=None,
    kl_coef=0.0,
    kl_kind="k3",
    entropy_coef=0.0,
    conspo_tau=10.0,
    logprob_impl="naive",
  )
  tx = optax.sgd(0.5)  # linear in the gradient: equal updates <=> equal gradients
  update = _update.make_update(functools.partial(_update.rl_loss, spec=spec), tx, g, rest)
  logprob = _update.make_logprob_fn(g, rest, "naive")
  # Rollouts "written by the same params": two prompts (left-padded) with G responses each, the
  # generator log-probs being the learner's own (what the sampler records at temperature 1).
  rng = np.random.default_rng(3)
  tokens = rng.integers(3, V, size=(2 * G, 12)).astype(np.int32)
  valid = np.ones_like(tokens, bool)
  valid[:G, :2] = False  # the first prompt is shorter
  response_mask = np.zeros((2 * G, 12), np.float32)
  lengths = rng.integers(1, 9, size=2 * G)
  for i, n in enumerate(lengths):
    response_mask[i, 4 : 4 + n] = 1.0
    valid[i, 4 + n :] = False
  sample_logp = logprob(params, tokens, response_mask, valid)
  out = types.SimpleNamespace(
    tokens=jnp.asarray(tokens),
    valid=jnp.asarray(valid),
    response_mask=jnp.asarray(response_mask),
    sample_logp=sample_logp,
    model_logp=sample_logp,
    lengths=jnp.asarray(lengths),
    prompt_len=4,
  )
  return params, tx, update, logprob, out


def _ftis_cfg(**kw):
  f = config_lib.base_config().rl.ftis
  f.update(kw)
  return f


def _plain_batch(out, rewards):
  rl = mlc.ConfigDict(dict(group_size=G, adv_scale="group", dynamic_sampling=False))
  rl.temporal = mlc.ConfigDict(dict(enabled=False))
  return _rl_step.rl_batch(out, rewards, rl=rl, progress=0.0)[0]


def test_ftis_with_the_learner_as_generator_equals_grpo(tmp_path):
  params, tx, update, logprob, out = _rl_setup()
  rewards = np.array([1, 0, 0, 1, 0, 0, 0, 1], np.float32)
  path = str(tmp_path / "rollouts.npz")
  _ftis.write_rollouts(path, out, rewards, group_size=G, max_new_tokens=8, vocab_size=V)
  data = _ftis.load_rollouts(path)
  mask = jnp.asarray(data["response_mask"])
  learner = logprob(params, jnp.asarray(data["tokens"]), mask, jnp.asarray(data["valid"]))
  fb, metrics = _ftis.ftis_batch(data, learner, group_size=G, adv_scale="group", ftis=_ftis_cfg())
  assert metrics["ftis_filtered_count"] == 0
  np.testing.assert_allclose(fb.is_weights, mask, atol=1e-4)
  p_ftis, _, aux_f = update(params, tx.init(params), fb, 0.0)
  p_grpo, _, aux_g = update(params, tx.init(params), _plain_batch(out, rewards), 0.0)
  np.testing.assert_allclose(float(aux_f["loss"]), float(aux_g["loss"]), atol=1e-6)
  for a, b in zip(jax.tree.leaves(p_ftis), jax.tree.leaves(p_grpo)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert any(
    not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p_ftis), jax.tree.leaves(params))
  )


def test_ftis_filters_far_negative_samples_and_caps_weights():
  params, tx, update, logprob, out = _rl_setup()
  rewards = np.array([1, 0, 0, 1, 0, 0, 0, 1], np.float32)
  mask = jnp.asarray(out.response_mask)
  learner = logprob(params, out.tokens, mask, out.valid)
  # A generator that found every sampled token e^3 times less likely than the learner does.
  data = {
    "tokens": out.tokens,
    "valid": out.valid,
    "response_mask": mask,
    "generator_logp": learner - 3.0 * mask,
    "rewards": rewards,
  }
  fb, metrics = _ftis.ftis_batch(
    data, learner, group_size=G, adv_scale="group", ftis=_ftis_cfg(kl_threshold=1.0)
  )
  adv = np.asarray(advantages.group_normalized(jnp.asarray(rewards), group_size=G))
  # k3 KL per token = e^-3 + 3 - 1 > 1, so every negative sample is filtered, positives kept.
  assert metrics["ftis_filtered_count"] == (adv < 0).sum()
  np.testing.assert_allclose(fb.advantages, np.where(adv < 0, 0.0, adv), atol=1e-6)
  np.testing.assert_allclose(fb.is_weights, 2.0 * np.asarray(mask), atol=1e-5)
  # Filtered rows give no gradient: zeroing their advantage by hand gives the same update.
  p1 = update(params, tx.init(params), fb, 0.0)[0]
  hand = fb.replace(advantages=jnp.asarray(np.where(adv < 0, 0.0, adv), jnp.float32))
  p2 = update(params, tx.init(params), hand, 0.0)[0]
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_realign_moves_prompt_and_response_columns():
  x = np.array([[0, 5, 6, 7, 8]])  # prompt width 3, response 2
  y = _ftis.realign(x, 2, 4, 3, fill=-1)
  assert y.tolist() == [[-1, 0, 5, 6, 7, 8, -1]]


def test_foreign_rollouts_join_the_rl_batch_aligned_with_ftis_fields(tmp_path):
  params, _, _, logprob, out = _rl_setup()
  rewards = np.array([1, 0, 0, 1, 0, 0, 0, 1], np.float32)
  own = _plain_batch(out, rewards)
  # Foreign rollouts with a prompt one column wider and 2 fewer response columns.
  wide = types.SimpleNamespace(
    **{
      k: _ftis.realign(np.asarray(getattr(out, k))[:, :-2], 6, 5, 6, fill)
      for k, fill in (("tokens", 0), ("valid", False), ("response_mask", 0), ("sample_logp", 0))
    }
  )
  path = str(tmp_path / "foreign.npz")
  _ftis.write_rollouts(path, wide, rewards, group_size=G, max_new_tokens=6, vocab_size=V)
  ftis = _ftis_cfg(path=path, prompts_per_step=1)
  rl = mlc.ConfigDict(dict(group_size=G, max_new_tokens=8, adv_scale="group", ftis=ftis))
  foreign = _ftis.ForeignRollouts(rl, vocab_size=V, pad_id=0)
  learner = lambda t, m, v: logprob(params, t, m, v)  # noqa: E731
  merged, metrics = foreign.extend(own, 1, learner)  # step 1: the file's second group
  assert merged.tokens.shape == (2 * G + G, 13)  # prompt width 5, response 8
  np.testing.assert_array_equal(merged.tokens[: 2 * G, 1:], own.tokens)
  rows = slice(G, 2 * G)
  want = np.asarray(out.tokens)[rows, :-2]  # the foreign rows: [prompt 4 | response 6]
  np.testing.assert_array_equal(merged.tokens[2 * G :, 1:11], want)
  np.testing.assert_array_equal(merged.is_weights[: 2 * G, 1:], own.mask)
  # Old log-probs: the sampler's on the own rows, the learner's recomputed ones on the foreign
  # rows; sampler log-probs: the own rows' old ones and the generator's (the file's sample_logp).
  np.testing.assert_array_equal(merged.sampler_logp[: 2 * G, 1:], own.old_logp)
  np.testing.assert_array_equal(merged.old_logp[: 2 * G, 1:], own.old_logp)
  np.testing.assert_array_equal(merged.sampler_logp[2 * G :, 1:11], wide.sample_logp[rows, 1:])
  f_tokens, f_mask = merged.tokens[2 * G :], merged.mask[2 * G :]
  np.testing.assert_allclose(
    merged.old_logp[2 * G :], learner(f_tokens, f_mask, merged.valid[2 * G :]), atol=1e-6
  )
  assert {"ftis_filtered_count", "ftis_kl_mean", "ftis_is_weight_mean"} <= set(metrics)
  with pytest.raises(ValueError, match="group_size"):
    rl.group_size = 2
    _ftis.ForeignRollouts(rl, vocab_size=V, pad_id=0)
