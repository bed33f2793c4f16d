"""SCRL rollouts in the trainer: reference curriculum completions get full subproblem rewards and
each `answer_k` line's tokens carry span k; a wrong intermediate answer zeroes the progress after it."""

import jax.numpy as jnp
import numpy as np
import pytest
from trainutil import load_config

from postrain import tasks
from postrain.sampling import SampleOutput
from postrain.train import _data, _scrl_stage


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  cfg = load_config()
  return _data.load_task_data(cfg, str(tmp_path_factory.mktemp("scrl")))


def _fake_rollout(data, completions, width=160):
  """A SampleOutput whose response columns hold the tokenized completions (+ eos)."""
  tok = data.tokenizer
  b = len(completions)
  tokens = np.zeros((b, width), np.int32)
  mask = np.zeros((b, width), np.float32)
  for i, text in enumerate(completions):
    ids = [*tok.encode(text), tok.eos_id]
    tokens[i, 8 : 8 + len(ids)] = ids
    mask[i, 8 : 8 + len(ids)] = 1
  z = jnp.zeros((b, width))
  return SampleOutput(
    tokens=jnp.asarray(tokens),
    response_mask=jnp.asarray(mask),
    lengths=jnp.asarray(mask.sum(-1).astype(np.int32)),
    sample_logp=z,
    model_logp=z,
    positions=jnp.zeros((b, width), jnp.int32),
    valid=jnp.asarray(mask > 0),
    prompt_lengths=jnp.full((b,), 8, jnp.int32),
    prompt_len=8,
  )


def test_reference_completions_score_full_and_spans_follow_answer_lines(data):
  problems = [p for p in data.train if tasks.scrl_chain(p) is not None][:2]
  chains = _scrl_stage.chains_for(problems, 0)
  group = 4  # rows: [curr, curr, orig, orig] per problem
  completions = []
  for p, chain in zip(problems, chains):
    ref = tasks.scrl_reference_completion(chain)
    solution = tasks.reference_solution(p)
    wrong_first = ref.replace(f"answer_1: {chain.subproblems[0].answer}", "answer_1: 12345", 1)
    completions += [ref, wrong_first, solution, "answer: 0"]
  out = _fake_rollout(data, completions)
  sub, outcome, span_ids, fmt, is_curr, stats = _scrl_stage.scrl_batch_rewards(
    data, out, completions, problems, chains, group_size=group, timeout_s=None
  )
  assert stats.timeouts == stats.errors == 0
  np.testing.assert_array_equal(is_curr, [True, True, False, False] * 2)
  k = sub.shape[1]
  for g, chain in enumerate(chains):
    pad = k - chain.num_subproblems
    np.testing.assert_array_equal(sub[g * group], np.ones(k))  # the reference solves everything
    assert sub[g * group + 1, pad] == 0.0  # first subproblem answered wrong
    assert outcome[g * group + 2] == 1.0 and outcome[g * group + 3] == (problems[g].answer == "0")
    # Span ids: the tokens of line "answer_j: X" belong to span (pad + j - 1).
    row = g * group
    cols = np.flatnonzero(np.asarray(out.response_mask)[row])
    for j, sub_j in enumerate(chain.subproblems, 1):
      line = f"answer_{j}: {sub_j.answer}"
      prefix = completions[row][: completions[row].index(line) + len(line)]
      end = len(data.tokenizer.encode(prefix))  # tokens up to the end of that answer line
      assert span_ids[row, cols[end - 1]] == pad + j - 1
  assert fmt[is_curr].all()


def test_scrl_batch_gives_token_advantages_only_inside_spans(data):
  cfg = load_config("scale=test,algorithm=scrl")
  problems = [p for p in data.train if tasks.scrl_chain(p) is not None][:1]
  chains = _scrl_stage.chains_for(problems, 0)
  ref = tasks.scrl_reference_completion(chains[0])
  completions = [ref, "nonsense", tasks.reference_solution(problems[0]), "answer: 99999"]
  out = _fake_rollout(data, completions)
  scored = _scrl_stage.scrl_batch_rewards(
    data, out, completions, problems, chains, group_size=4, timeout_s=None
  )
  batch, metrics, orig = _scrl_stage.scrl_rl_batch(out, *scored[:-1], rl=cfg.rl)
  adv = np.asarray(batch.advantages)
  span_ids = scored[2]
  assert adv.shape == out.tokens.shape
  np.testing.assert_array_equal(adv[0][span_ids[0] < 0], 0.0)  # outside spans: no credit
  assert (adv[0][span_ids[0] >= 0] > 0).all()  # solved everything, the other curriculum row nothing
  assert (adv[1] == 0).all()  # malformed curriculum row
  assert (adv[2][np.asarray(out.response_mask)[2] > 0] > 0).all() and (adv[3] <= 0).all()
  np.testing.assert_array_equal(orig, [1.0, 0.0])
  assert metrics["scrl_format_ok"] == 0.5
