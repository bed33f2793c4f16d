"""Every config in configs/ builds, validates, and rejects keys that do not exist."""

import glob
import os

import pytest

from postrain.train import config as config_lib

# Configs of the other entry points (`python -m postrain.select`, `python -m postrain.selfplay`)
# have their own schemas and are tested in tests/select.
_OTHER_ENTRY_POINTS = ("python -m postrain.select ", "python -m postrain.selfplay ")
CONFIGS = sorted(
  p
  for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "*.py"))
  if not any(e in open(p).read() for e in _OTHER_ENTRY_POINTS)
)


def test_there_are_configs():
  assert any(path.endswith("default.py") for path in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds_and_validates(path):
  cfg = config_lib.load_config_file(path)
  config_lib.validate(cfg)
  # Every config is a specialisation of the base schema: no keys of its own.
  base_keys = set(_flatten(config_lib.base_config().to_dict()))
  assert set(_flatten(cfg.to_dict())) - base_keys <= _free_form_keys(cfg)
  doc = open(path).read()
  assert "python -m postrain.train --config configs/" in doc, (
    "the launch command belongs in the docstring"
  )


def test_locked_config_lists_valid_keys_on_typo():
  cfg = config_lib.load_config_file(CONFIGS[0])
  cfg.lock()
  with pytest.raises(AttributeError, match="group_size"):
    cfg.rl.grup_size = 3


def test_parse_arg_rejects_unknown_keys():
  with pytest.raises(ValueError, match="scale"):
    config_lib.parse_arg("sclae=smoke", scale="default")
  assert config_lib.parse_arg("steps=3,on=true", steps=1, on=False).to_dict() == {
    "steps": 3,
    "on": True,
  }


def _flatten(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict) and v:
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}"


def _free_form_keys(cfg):
  """Keys under the free-form dicts (task generator knobs, model field overrides)."""
  return {k for k in _flatten(cfg.to_dict()) if k.startswith(("task.kwargs.", "model.overrides."))}


@pytest.mark.parametrize(
  "key, value, match",
  [
    ("extract", "first_number", "task.extract"),
    ("extract_max_chars", 0, "task.extract_max_chars"),
    ("format_reward", 0.5, "task.format_reward"),
    ("format_reward", -0.1, "task.format_reward"),
  ],
)
def test_answer_extraction_keys_are_validated(key, value, match):
  cfg = config_lib.base_config()
  setattr(cfg.task, key, value)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(cfg)
