"""SMEPO as a trainer option: guided rollout prompts hold the masked trace and never the answer;
disabled, the prompts are byte-identical to the plain ones."""

import os

import numpy as np
import pytest
from selectutil import REPO

from postrain import tasks
from postrain.tasks import _tokenizer, smepo
from postrain.train import _smepo, _trainer


class _Captured(Exception):
  pass


def _rl_config(enabled: bool, fraction: float = 1.0):
  from postrain.train.config import load_config_file

  c = load_config_file(os.path.join(REPO, "configs", "default.py"), "scale=test")
  c.task.num_train, c.task.num_eval = 40, 8
  c.sft.steps, c.rl.steps = 0, 2
  c.rl.cache_size = 192
  c.rl.smepo.enabled = enabled
  c.rl.smepo.fraction = fraction
  c.progress_bar = False
  return c


def _capture_prompts(trainer, monkeypatch):
  """The prompt ids the trainer's RL step hands to the sampler (the step stops there)."""
  seen = {}

  def fake_generate(sampler, data, prompts, **kw):
    seen["prompts"] = prompts
    raise _Captured

  monkeypatch.setattr(_trainer._rollout, "generate", fake_generate)
  with pytest.raises(_Captured):
    trainer._rl_step()
  return seen["prompts"]


def _step_problems(trainer):
  from postrain.train import _data

  c = trainer.config
  return _data.step_problems(
    trainer.data.train, seed=c.seed, step=trainer.step, count=c.rl.prompts_per_step
  )


def test_disabled_prompts_are_unchanged(tmp_path, monkeypatch):
  trainer = _trainer.Trainer(_rl_config(False), str(tmp_path / "off"))
  problems = _step_problems(trainer)
  got = _capture_prompts(trainer, monkeypatch)
  tok = trainer.data.tokenizer
  expected = [
    [tok.bos_id] * (tok.bos_id >= 0) + tok.encode(tasks.format_prompt(p, instruction=""))
    for p in problems
  ]
  assert got == expected


def test_enabled_prompts_hold_masked_trace_not_answer(tmp_path, monkeypatch):
  trainer = _trainer.Trainer(_rl_config(True), str(tmp_path / "on"))
  problems = _step_problems(trainer)
  got = _capture_prompts(trainer, monkeypatch)
  tok = trainer.data.tokenizer
  for p, ids in zip(problems, got):
    plain = tasks.format_prompt(p, instruction="")
    solution = tasks.reference_solution(p)
    masked = smepo.mask_trace(solution, answer=p.answer)
    assert "[NUMBER]" in masked and "[ANSWER]" in masked
    # Written out independently of postrain.train._smepo: the documented plain template.
    text = f"Here is an example solution:\n{masked}\n\n{plain}"
    assert ids == [tok.bos_id] * (tok.bos_id >= 0) + tok.encode(text)
    # The task tokenizer was trained for SMEPO: placeholders are single pieces, nothing is unknown.
    assert len(tok.encode("[NUMBER]")) == 1 and len(tok.encode("[ANSWER]")) == 1
    assert _tokenizer.UNK_ID not in ids, tok.decode(ids)
    guidance = text[: text.index(plain)]
    assert not smepo.check_answer_leak(guidance, p.answer).leaks
    # The raw trace's numbers are all gone from the guidance.
    for line in solution.splitlines():
      assert line not in guidance


def test_fraction_and_leaks_are_counted(tmp_path, monkeypatch):
  trainer = _trainer.Trainer(_rl_config(True, fraction=0.5), str(tmp_path / "half"))
  problems = _step_problems(trainer)
  plain = trainer.data.encode_prompts(problems)
  out, metrics = _smepo.guide_prompts(
    trainer.data, problems, plain, cfg=trainer.config.rl.smepo, seed=0, step=0, max_prompt_len=999
  )
  changed = sum(a != b for a, b in zip(out, plain))
  assert changed == round(0.5 * len(problems)) == 2
  assert metrics["smepo/guided_frac"] == 0.5
  # A trace that still reveals the answer is not used. The default masking hides every number,
  # so the leak path is exercised with masking switched off (the check itself is unchanged).
  cfg = trainer.config.rl.smepo
  real = smepo.mask_and_check
  monkeypatch.setattr(
    _smepo.smepo, "mask_and_check", lambda t, a, **kw: real(t, a, numbers=False, answers=False)
  )
  text, reason = _smepo.guided_text(trainer.data, problems[0], cfg)
  assert reason == "leak" and text == trainer.data.prompt(problems[0])
  out, metrics = _smepo.guide_prompts(
    trainer.data, problems, plain, cfg=cfg, seed=0, step=0, max_prompt_len=999
  )
  assert out == plain
  assert metrics["smepo/guided_frac"] == 0.0 and metrics["smepo/leak_rejected"] == 2.0
  monkeypatch.setattr(_smepo.smepo, "mask_and_check", real)
  # Too long for the cache: left plain, counted.
  out, metrics = _smepo.guide_prompts(
    trainer.data, problems[:1], plain[:1], cfg=cfg, seed=0, step=0, max_prompt_len=5
  )
  assert out == plain[:1] and metrics["smepo/too_long"] == 1.0


def test_full_rl_step_with_smepo(tmp_path):
  trainer = _trainer.Trainer(_rl_config(True), str(tmp_path / "step"))
  metrics = trainer._rl_step()
  assert metrics["smepo/guided_frac"] == 1.0
  assert np.isfinite(metrics["loss"])


def test_bad_smepo_config():
  from postrain.train.config import validate

  c = _rl_config(True, fraction=1.5)
  with pytest.raises(ValueError, match=r"rl\.smepo\.fraction"):
    validate(c)
  c = _rl_config(True)
  c.rl.smepo.template = "{prompt} only"
  with pytest.raises(ValueError, match=r"rl\.smepo\.template"):
    validate(c)
