"""Multi-turn, tool-using rollouts in the trainer (config.env): the real `sampling.Conversation`
under the episode driver (masks at their exact positions, re-scored log-probs equal the sampler's,
a row without tool calls equals single-turn sampling), RL steps of two algorithms, the CLI at
`scale=test --config.env.name=calculator`, and kill -9 + resume equal to an uninterrupted run."""

import json
import os
import signal
import time
import zlib
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from trainutil import load_config, run_cli

from postrain import envs, models, sampling
from postrain.train import _env_stage

VOCAB, EOS, PAD, BOS = 12, 2, 0, 1


class TinyTokenizer:
  """Letters a..i as ids 3..11; EOS=2 decodes to "" (the model's random text is never parsed)."""

  vocab_size, eos_id, pad_id, bos_id = VOCAB, EOS, PAD, BOS

  def encode(self, text):
    return [3 + (ord(c) % (VOCAB - 3)) for c in text]

  def decode(self, ids):
    return "".join(chr(ord("a") + i - 3) for i in ids if i >= 3)


class ObserveEnv(envs.Env):
  """Returns an observation after each turn until turn `k` (from the problem), then ends; pays
  0.5 per turn whose text has an even length (reward variance for the RL tests)."""

  def __init__(self, format="compact"):
    del format

  def reset(self, problem):
    q = envs.question_of(problem)
    self.k, self.t = 1 + (int(q) if q.isdigit() else zlib.crc32(q.encode())) % 3, 0
    return [{"role": "user", "content": envs.question_of(problem)}]

  def step(self, model_text):
    self.t += 1
    reward = 0.5 * (len(model_text) % 2 == 0)
    if self.t >= self.k:
      return None, reward, True
    return f"obs{self.t}:", reward, False


envs.register_env("test_observe", ObserveEnv, overwrite=True)


def _eos_heavy_model(seed=0):
  """A random tiny decoder whose untied head gives EOS large logits of either sign: turns stop
  after a few tokens (a random model would almost never stop)."""
  cfg = models.get_config(
    "tiny", vocab_size=VOCAB, embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=1,
    head_dim=16, mlp_dim=64, tie_embeddings=False,
  )  # fmt: skip
  model = models.Decoder(cfg, rngs=nnx.Rngs(seed))
  _eos_heavy(model)
  return model


def _eos_heavy(model):
  head = np.array(model.lm_head[...])
  head[:, EOS] *= 40.0
  model.lm_head[...] = jnp.asarray(head)


def _rollouts(model, name="test_observe", max_turns=4, cache_size=96):
  config = load_config()
  config.env.name, config.env.max_turns, config.rl.cache_size = name, max_turns, cache_size
  data = SimpleNamespace(
    tokenizer=TinyTokenizer(),
    chat_template=None,
    instruction="",
    encode_prompt=lambda text: [BOS, *TinyTokenizer().encode(text)],
  )
  sampler = sampling.Sampler(model, cache_size=cache_size)
  return _env_stage.EnvRollouts(config, data, sampler), config


def test_conversation_masks_observations_and_logprobs():
  model = _eos_heavy_model()
  stage, _ = _rollouts(model)
  problems = ["10", "11", "12", "13"]  # 2, 3, 1, 2 turns
  out, texts, _, stats = stage.generate(
    problems, key=jax.random.key(3), n=2, max_new_tokens=8, temperature=1.0
  )
  tok, tp = TinyTokenizer(), out.prompt_len
  tokens, mask, valid = (np.asarray(x) for x in (out.tokens, out.response_mask, out.valid))
  want_turns = np.repeat([2, 3, 1, 2], 2)
  ended = ~stats.truncated
  assert ended.sum() >= 4  # most rows stop every turn with this head
  np.testing.assert_array_equal(stats.turns[ended], want_turns[ended])
  for b in range(len(tokens)):
    row, m = tokens[b, tp:], mask[b, tp:]
    n = int(valid[b, tp:].sum())
    assert valid[b, tp : tp + n].all() and not valid[b, tp + n :].any()  # contiguous, then pad
    # the context tokens after the prompt are exactly the observations, in order
    context = row[:n][m[:n] == 0].tolist()
    expected = "".join(f"obs{t}:" for t in range(1, int(stats.turns[b]))) if ended[b] else None
    if expected is not None:
      assert context == tok.encode(expected)
    # the model tokens are the turns, each ending at EOS when the row stopped
    assert int(m.sum()) == stats.generated_tokens[b] == int(out.lengths[b])
    assert stats.context_tokens[b] == len(context)
  # the sampler's log-probs of every generated token of every turn re-score exactly
  logp = models.logprobs(model, out.tokens, out.response_mask, valid=out.valid)
  np.testing.assert_allclose(
    np.asarray(logp) * mask, np.asarray(out.model_logp) * mask, atol=2e-4, rtol=1e-4
  )
  assert len(texts) == 8 and stats.metrics()["context_tokens_per_episode"] > 0


class FinalAnswerEnv(envs.Env):
  def reset(self, problem):
    return [{"role": "user", "content": envs.question_of(problem)}]

  def step(self, model_text):
    return None, 0.0, True


envs.register_env("test_final", FinalAnswerEnv, overwrite=True)


def test_episodes_without_tool_calls_equal_single_turn_sampling():
  model = _eos_heavy_model(seed=1)
  stage, config = _rollouts(model, name="test_final")
  key = jax.random.key(5)
  out, _, _, stats = stage.generate(["10", "11"], key=key, n=2, max_new_tokens=8, temperature=1.0)
  assert stats.turns.tolist() == [1, 1, 1, 1]
  prompts = [stage.data.encode_prompt(envs.prompt_text(FinalAnswerEnv().reset(q), instruction=""))
             for q in ("10", "10", "11", "11")]  # fmt: skip
  ref = sampling.Sampler(model, cache_size=config.rl.cache_size)(
    prompts, key=jax.random.fold_in(key, 0), max_new_tokens=8, temperature=1.0,
    stop_tokens=(EOS,), pad_id=PAD,
  )  # fmt: skip
  t = ref.tokens.shape[1]
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, :t], np.asarray(ref.tokens))
  np.testing.assert_array_equal(np.asarray(out.response_mask)[:, :t], np.asarray(ref.response_mask))
  np.testing.assert_allclose(
    np.asarray(out.model_logp)[:, :t], np.asarray(ref.model_logp), atol=1e-6
  )
  assert not np.asarray(out.response_mask)[:, t:].any()


@pytest.mark.parametrize("algorithm", ["gspo", "grpo"])
def test_multiturn_rl_steps(tmp_path, algorithm):
  from postrain import train
  from postrain.train import config as config_lib

  config = load_config()
  config_lib.set_algorithm(config, algorithm)
  config.env.name = "test_observe"
  config.model.overrides = dict(config.model.overrides.to_dict(), tie_embeddings=False)
  config.sft.steps, config.rl.steps = 0, 2
  config.eval.num_problems, config.eval.every = 4, 100
  trainer = train.Trainer(config, str(tmp_path))
  before = jax.tree.map(np.asarray, trainer.params)
  model = nnx.merge(trainer.graphdef, trainer.params, trainer.rest)
  head = np.array(model.lm_head[...])
  head[:, trainer.data.tokenizer.eos_id] *= 40.0
  model.lm_head[...] = jnp.asarray(head)
  trainer.params = nnx.state(model, nnx.Param)
  report = trainer.run()
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f if '"train"' in line]
  assert len(records) == 2
  for m in records:
    assert m["turns_per_episode"] > 1.0 and m["context_tokens_per_episode"] > 0
    assert m["tool_calls_per_episode"] == 0.0 and "tool_error_rate" in m
    assert np.isfinite(m["loss"]) and m["reward_std"] > 0
  after = jax.tree.map(np.asarray, trainer.params)
  changed = [
    not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))
  ]
  assert any(changed)
  assert "tool_use_greedy" in report["final"]


def test_cli_calculator_end_to_end(tmp_path):
  start = time.perf_counter()
  result = run_cli(str(tmp_path / "w"), "--config.env.name=calculator")
  assert result.returncode == 0, result.stdout + result.stderr
  print(f"scale=test with env.name=calculator: {time.perf_counter() - start:.1f} s")
  with open(tmp_path / "w" / "metrics.jsonl") as f:
    train_records = [json.loads(line) for line in f if '"train"' in line]
  rl = [m for m in train_records if "turns_per_episode" in m]
  assert rl and all(m["turns_per_episode"] >= 1 for m in rl)
  for key in ("tool_calls_per_episode", "tool_error_rate", "generated_tokens_per_episode",
              "context_tokens_per_episode", "tool_time_s"):  # fmt: skip
    assert key in rl[-1]
  report = json.load(open(tmp_path / "w" / "report.json"))
  assert "tool_use_greedy" in report["final"] and "tool_correct_greedy" in report["final"]


def test_bad_env_config_names_the_key(tmp_path):
  from postrain.train.config import validate

  config = load_config()
  config.env.name = "no_such_env"
  with pytest.raises(ValueError, match=r"config\.env\.name"):
    validate(config)
  config.env.name, config.rl.smepo.enabled = "calculator", True
  with pytest.raises(ValueError, match=r"config\.env\.name.*smepo"):
    validate(config)
  config.rl.smepo.enabled, config.env.max_turns = False, 0
  with pytest.raises(ValueError, match=r"config\.env\.max_turns"):
    validate(config)


def _final(workdir):
  report = json.load(open(os.path.join(workdir, "report.json")))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f if '"train"' in line][-1]
  return report["final"], {k: v for k, v in last.items() if "per_s" not in k and "time_s" not in k}


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_with_an_env(tmp_path):
  overrides = ("--config.env.name=calculator",)
  reference = str(tmp_path / "reference")
  result = run_cli(reference, *overrides)
  assert result.returncode == 0, result.stdout + result.stderr
  killed = str(tmp_path / "killed")
  proc = run_cli(killed, *overrides, wait=False)
  deadline = time.time() + 600
  try:
    while time.time() < deadline:
      ckpts = os.path.join(killed, "checkpoints")
      saved = os.path.isdir(ckpts) and any(d.isdigit() and int(d) >= 2 for d in os.listdir(ckpts))
      steps = [0]
      if os.path.exists(os.path.join(killed, "metrics.jsonl")):
        with open(os.path.join(killed, "metrics.jsonl")) as f:
          steps += [json.loads(ln)["step"] for ln in f if '"train"' in ln and ln.endswith("\n")]
      if saved and max(steps) >= 5:
        proc.send_signal(signal.SIGKILL)
        break
      assert proc.poll() is None, "the run ended before it could be killed"
      time.sleep(0.2)
    proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL
  resumed = run_cli(killed, *overrides)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  final, last = _final(killed)
  ref_final, ref_last = _final(reference)
  assert final == ref_final
  assert last.keys() == ref_last.keys()
  for key, value in ref_last.items():
    if isinstance(value, float):  # XLA:CPU reductions may differ in the last bits (test_resume)
      np.testing.assert_allclose(last[key], value, rtol=1e-5, atol=1e-9, err_msg=key)
    else:
      assert last[key] == value, key


def test_sft_tool_demonstrations_mask_the_tool_result(tmp_path):
  from postrain.train import _data

  config = load_config()
  config.env.name, config.sft.tool_fraction = "calculator", 1.0
  data = _data.load_task_data(config, str(tmp_path))
  problems = data.train[:6]
  batch = _data.sft_batch(data, problems, 160, terse_frac=0.5, tool_frac=1.0)
  tok = data.tokenizer
  for i, p in enumerate(problems):
    ids, mask, valid = batch["tokens"][i], batch["loss_mask"][i], batch["valid"][i]
    prompt = data.encode_prompt(data.prompt(p))
    assert ids[: len(prompt)].tolist() == prompt and "tools: calculator" in data.prompt(p)
    n = int(valid.sum())
    model = [t for t, m in zip(ids[:n], mask[:n]) if m]
    context = [t for t, m in zip(ids[len(prompt) : n], mask[len(prompt) : n]) if not m]
    expression = p.metadata["expression"].strip()
    assert tok.decode(model) == f"\ncall: calculator({expression})answer: {p.answer}"
    assert model.count(tok.eos_id) == 2  # each model turn ends with the stop token
    assert tok.decode(context) == f"result: {p.answer}\n"
  # tool_fraction 0: the plain answers, with the environment's prompt
  plain = _data.sft_batch(data, problems, 160, tool_frac=0.0)
  assert plain["loss_mask"][0][len(data.encode_prompt(data.prompt(problems[0]))) :].sum() > 0
  assert "call:" not in tok.decode(plain["tokens"][0][plain["loss_mask"][0] > 0].tolist())


def test_aligned_tool_demonstrations_copy_from_one_distance(tmp_path):
  """sft.tool_align_call / tool_align_answer: the call's argument and the answer right-aligned in
  fixed token widths, so each copied token is at the same distance from its source in every
  demonstration (question -> call, tool result -> answer)."""
  from postrain.train import _data

  config = load_config()
  config.env.name, config.sft.tool_fraction = "calculator", 1.0
  config.sft.tool_align_call, config.sft.tool_align_answer = 20, 8
  # expressions of 7-18 tokens (3-4 terms of 1-3 digits): their lengths differ
  config.task.kwargs = dict(min_terms=3, max_terms=4, min_digits=1, max_digits=3)
  data = _data.load_task_data(config, str(tmp_path))
  tok = data.tokenizer
  call_gaps, answer_gaps = set(), set()
  for p in data.train[:12]:
    prompt = data.encode_prompt(data.prompt(p))
    (call, _), (obs, _), (answer, _) = _data.tool_demo_segments(data, p, newline=True)
    expression = tok.encode(p.metadata["expression"].strip())
    result = tok.encode(p.answer.lstrip("-"))  # the digits (a sign merges with its space)
    # the argument: spaces, then the expression's tokens, filling exactly 20 tokens before ")"
    text = tok.decode(call[:-1])
    assert text.startswith("\ncall: calculator(") and text.endswith(")")
    arg = tok.encode(text[len("\ncall: calculator(") : -1])
    assert len(arg) == 20 and tok.decode(arg).strip() == p.metadata["expression"].strip()
    assert len(answer) == 1 + 1 + 1 + 8 + 1  # "answer", ":", " ", the 8-token field, the stop
    assert tok.decode(answer[:-1]).split(":")[1].strip() == p.answer
    # where the copies start: the last occurrence of the expression in the prompt, in the call
    row = prompt + call + obs + answer
    src = max(i for i in range(len(prompt)) if prompt[i : i + len(expression)] == expression)
    dst = len(prompt) + next(
      i for i in range(len(call)) if call[i : i + len(expression)] == expression
    )
    call_gaps.add(dst - src)
    res = (
      len(prompt)
      + len(call)
      + next(i for i in range(len(obs)) if obs[i : i + len(result)] == result)
    )
    ans = len(prompt) + len(call) + len(obs) + len(answer) - 1 - len(result)
    assert row[ans : ans + len(result)] == result
    answer_gaps.add(ans - res)
  assert len(call_gaps) == 1 and len(answer_gaps) == 1, (call_gaps, answer_gaps)
  # off: the distance follows each expression's length
  config.sft.tool_align_call = config.sft.tool_align_answer = 0
  plain = _data.load_task_data(config, str(tmp_path))
  lengths = {len(plain.tokenizer.encode(p.metadata["expression"].strip())) for p in data.train[:12]}
  assert len(lengths) > 1
