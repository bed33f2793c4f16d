"""Data for the trainer: problems from the task (materialised as a tfds dataset in the workdir),
the tokenizer, and the token batches for SFT, rollouts and evaluation."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import zlib
from typing import Any

import ml_collections as mlc
import numpy as np

from postrain import tasks
from postrain.models import tokenizers as tokenizers_lib

_JSONL_OPTIONS = {"name", "heldout_fraction"}


@dataclasses.dataclass
class TaskData:
  """Everything the loop needs about the task: problems, scorer, prompts and the tokenizer."""

  task: tasks.Task
  train: list[tasks.Problem]
  test: list[tasks.Problem]
  tokenizer: Any  # a postrain.models.tokenizers.Tokenizer
  chat_template: Any  # messages -> str, or None for plain prompts
  instruction: str | None = None  # None: the task's default instruction
  extract: str = "marked"  # config.task.extract: the answer extraction mode
  extract_max_chars: int = tasks.MAX_EXTRACT_CHARS
  format_reward: float = 0.0  # config.task.format_reward (training rewards only)
  # config.env: an environment's prompt of a problem (its system text, then the question), or None
  env_prompt: Any = None
  # config.env: a fresh environment (`_env_stage.make_env`), or None
  make_env: Any = None
  # config.sft.tool_align_call / tool_align_answer (compact tool demonstrations; 0: off)
  tool_align: tuple[int, int] = (0, 0)

  def prompt(self, problem: tasks.Problem) -> str:
    if self.env_prompt is not None:
      return self.env_prompt(problem)
    return tasks.format_prompt(
      problem, chat_template=self.chat_template, instruction=self.instruction
    )

  def encode_prompts(self, problems: list[tasks.Problem]) -> list[list[int]]:
    return [self.encode_prompt(self.prompt(p)) for p in problems]

  def encode_prompt(self, text: str) -> list[int]:
    """Token ids of a prompt, after the BOS token when the tokenizer has one and the text does
    not already begin with it (a chat template that opens with its BOS text, e.g. SmolLM2's
    `<|im_start|>`, gets it once)."""
    ids = self.tokenizer.encode(text)
    bos = self.tokenizer.bos_id
    return ids if bos < 0 or ids[:1] == [bos] else [bos, *ids]

  def decode_responses(self, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
    """Texts of the masked response tokens of each row, without the stop token."""
    eos = self.tokenizer.eos_id
    out = []
    for row, row_mask in zip(tokens, mask):
      ids = [int(t) for t, m in zip(row, row_mask) if m and int(t) != eos]
      out.append(self.tokenizer.decode(ids))
    return out


def load_task_data(
  config: mlc.ConfigDict, workdir: str, tokenizer: Any = None, chat_template: Any = None
) -> TaskData:
  """Builds (or reuses) the task's dataset and tokenizer under `workdir`.

  reasoning-gym tasks are generated once into a tfds array_record dataset in `workdir/data` and
  read back with `tfds.data_source`; a JSONL task reads the user's file. Without a given
  `tokenizer`, a sentencepiece model is trained on the task corpus (cached in `workdir/tokenizer`).
  """
  cfg = config.task
  kwargs = dict(cfg.kwargs.to_dict()) if hasattr(cfg.kwargs, "to_dict") else dict(cfg.kwargs)
  if cfg.name == "jsonl":
    if not os.path.exists(cfg.jsonl_path):
      raise FileNotFoundError(f"config.task.jsonl_path: no such file {cfg.jsonl_path!r}")
    # Generator knobs of a reasoning-gym default (e.g. max_digits) do not apply to a file.
    ignored = sorted(set(kwargs) - _JSONL_OPTIONS)
    if ignored:
      logging.getLogger(__name__).warning("task.kwargs %s do not apply to a JSONL file", ignored)
    task = tasks.get_task(
      "jsonl", train=cfg.jsonl_path, **{k: v for k, v in kwargs.items() if k in _JSONL_OPTIONS}
    )
    train = task.generate("train", cfg.num_train, seed=config.seed)
    test = task.generate("test", cfg.num_eval, seed=config.seed)
  else:
    task = tasks.get_task(cfg.name, **kwargs)
    data_dir = os.path.join(workdir, "data")
    _quiet_tfds()
    builder = tasks.prepare_task_dataset(
      cfg.name,
      data_dir=data_dir,
      splits={"train": cfg.num_train, "test": cfg.num_eval},
      seed=config.seed,
      task_kwargs=kwargs,
    )
    name = builder.builder_config.name
    train = tasks.load_task_problems(data_dir, name, "train")
    test = tasks.load_task_problems(data_dir, name, "test")
  if not train or not test:
    raise ValueError(f"config.task: task {cfg.name!r} produced no train or no test problems.")
  if tokenizer is None:
    tokenizer = _load_tokenizer(config, workdir, train)
  if chat_template is None and cfg.prompt_format == "chat":
    chat_template = functools.partial(
      tokenizers_lib.apply_chat_template, template_name=config.tokenizer.chat_template
    )
  instruction = None if cfg.instruction == "default" else cfg.instruction
  env_prompt = make_env = None
  if config.env.name != "none":
    from postrain import envs
    from postrain.train import _env_stage

    def env_prompt(problem: tasks.Problem) -> str:
      messages = _env_stage.make_env(config).reset(problem)
      return envs.prompt_text(messages, chat_template=chat_template, instruction=instruction)

    make_env = functools.partial(_env_stage.make_env, config)

  return TaskData(
    task=task,
    train=train,
    test=test,
    tokenizer=tokenizer,
    chat_template=chat_template,
    instruction=instruction,
    extract=cfg.extract,
    extract_max_chars=int(cfg.extract_max_chars),
    format_reward=float(cfg.format_reward),
    env_prompt=env_prompt,
    make_env=make_env,
    tool_align=(int(config.sft.tool_align_call), int(config.sft.tool_align_answer)),
  )


def _load_tokenizer(config: mlc.ConfigDict, workdir: str, train: list[tasks.Problem]) -> Any:
  """The run's tokenizer: the pretrained model's own, or one trained on the task corpus."""
  tok = config.tokenizer
  if tok.kind in ("hf", "gguf"):
    key = "tokenizer.path" if tok.path else "model.path"
    path = tok.path or config.model.path
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.{key}: no such file or directory {path!r}")
  if tok.kind == "gguf":  # the vocabulary and merges stored in the GGUF file
    return tokenizers_lib.from_gguf(path)
  if tok.kind == "hf":
    path = tok.path or os.path.join(config.model.path, "tokenizer.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.{key}: no tokenizer file {path!r}")
    return tokenizers_lib.load_tokenizer(path)
  # Everything the trainer may put in a prompt: also SMEPO's guidance (its placeholders as whole
  # pieces, its template's words), so runs with and without SMEPO share one tokenizer.
  from postrain.tasks import smepo
  from postrain.train._smepo import PLAIN_TEMPLATE

  placeholders = (smepo.ANSWER, smepo.NUMBER, smepo.CODE, smepo.ENTITY)
  texts = [
    *tasks.task_corpus(train),
    PLAIN_TEMPLATE.format(trace=" ".join(placeholders), prompt=""),
  ]
  if config.env.name != "none":  # what the environment writes: tool descriptions, results
    from postrain.train import _env_stage

    texts += _env_stage.make_env(config).corpus()
  symbols = ("\n", *placeholders)
  path = tok.path or tasks.train_tokenizer(
    texts,
    os.path.join(workdir, "tokenizer"),
    vocab_size=tok.vocab_size,
    user_defined_symbols=symbols,
  )
  return tokenizers_lib.SentencePieceTokenizer(path)


def sft_batch(
  data: TaskData,
  problems: list[tasks.Problem],
  max_len: int,
  *,
  curriculum_frac: float = 0.0,
  num_subproblems: int = 0,
  terse_frac: float = 0.0,
  row_offset: int = 0,
  total_rows: int | None = None,
  tool_frac: float = 0.0,
) -> dict[str, np.ndarray]:
  """Right-padded `prompt + reference solution + eos` sequences with a loss mask on the solution.

  The first `curriculum_frac` of the rows are SCRL curriculum examples (the problem's subproblem
  chain and its reference `answer_k:` completion), so an SCRL run starts from a model that knows
  the curriculum format. A fixed `terse_frac` share of the problems (chosen by a hash of the
  problem id, so a problem is always shown the same way) is demonstrated by its final answer line
  alone, without the working (`tasks.sft_example(worked=False)`). A process that builds only its rows
  of a batch of `total_rows` passes their global index `row_offset`: the curriculum rows are the
  first of the whole batch.

  With an environment (config.env) every prompt is the environment's, and a fixed `tool_frac`
  share of the problems (a hash of the id, independent of the terse share) is demonstrated by
  the environment's tool-use episode (`Env.demonstration`): the model's turns, each ending with
  the stop token, carry the loss; the tool results between them are context (mask 0).

  Returns tokens i32[B, max_len], valid bool[B, max_len], loss_mask f32[B, max_len].
  """
  tok = data.tokenizer
  n = len(problems)
  tokens = np.full((n, max_len), max(tok.pad_id, 0), np.int32)
  valid = np.zeros((n, max_len), bool)
  loss_mask = np.zeros((n, max_len), np.float32)
  num_curriculum = round(curriculum_frac * (n if total_rows is None else total_rows))
  for i, problem in enumerate(problems):
    chain = (
      tasks.scrl_chain(problem, num_subproblems=num_subproblems or None)
      if row_offset + i < num_curriculum
      else None
    )
    if chain is not None:
      example = (
        tasks.format_scrl_prompt(chain, chat_template=data.chat_template),
        "\n" + tasks.scrl_reference_completion(chain),
      )
    else:
      example = tasks.sft_example(
        problem,
        chat_template=data.chat_template,
        instruction=data.instruction,
        worked=not is_terse(problem, terse_frac),
      )
    if example is None:
      raise ValueError(
        f"problem {problem.id} of task {problem.task!r} has no reference solution for SFT"
      )
    prompt, target = example
    if data.env_prompt is not None and chain is None:
      prompt = data.prompt(problem)
    p_ids = data.encode_prompt(prompt)
    segments = [([*tok.encode(target), tok.eos_id], 1.0)]
    if data.make_env is not None and chain is None and is_tool_demo(problem, tool_frac):
      segments = tool_demo_segments(data, problem, newline=data.chat_template is None) or segments
    ids, weights = list(p_ids), [0.0] * len(p_ids)
    for seg, weight in segments:
      ids += seg
      weights += [weight] * len(seg)
    ids, weights = ids[:max_len], weights[:max_len]
    tokens[i, : len(ids)] = ids
    valid[i, : len(ids)] = True
    loss_mask[i, : len(ids)] = weights
  return {"tokens": tokens, "valid": valid, "loss_mask": loss_mask}


def is_tool_demo(problem: tasks.Problem, tool_frac: float) -> bool:
  """Whether `problem` belongs to the fixed `tool_frac` share demonstrated with a tool call."""
  return zlib.crc32(f"tool:{problem.id}".encode()) < tool_frac * 2**32


def tool_demo_segments(
  data: TaskData, problem: tasks.Problem, *, newline: bool
) -> list[tuple[list[int], float]] | None:
  """The token segments (ids, loss weight) of the environment's demonstration on `problem`:
  model turns (+ the stop token) weight 1, tool observations weight 0; None without one.
  `newline`: the plain prompt format's targets start on a new line."""
  env = data.make_env()
  env.reset(problem)
  messages = env.demonstration(problem)
  if not messages:
    return None
  from postrain import envs

  tok, fmt = data.tokenizer, env.format
  if any(data.tool_align) and fmt.name == "compact":
    messages = align_demonstration(messages, tok.encode, *data.tool_align)
  segments, pending = [], []
  for j, m in enumerate(messages):
    if m["role"] == "tool":
      pending.append(envs.ToolResult(m.get("name", ""), m["content"], m.get("error")))
      continue
    if pending:
      segments.append((tok.encode(fmt.observation(pending)), 0.0))
      pending = []
    text = ("\n" if newline and j == 0 else "") + m["content"]
    segments.append(([*tok.encode(text), tok.eos_id], 1.0))
  return segments


_CALL = re.compile(r"^call: ([A-Za-z_][A-Za-z0-9_]*)\((.*)\)$", re.DOTALL)
_ANSWER = re.compile(r"^answer: (.*)$", re.DOTALL)


def right_align(value: str, width: int, encode: Any) -> str:
  """`value` after the leading spaces that make it `width` tokens long (as it is when it has that
  many already, or `width` is 0)."""
  pad = 0
  while width and len(encode(" " * (pad + 1) + value)) <= width:
    pad += 1
  return " " * pad + value


def align_demonstration(
  messages: list[dict[str, Any]], encode: Any, call_width: int, answer_width: int
) -> list[dict[str, Any]]:
  """A compact demonstration with its calls' argument right-aligned in `call_width` tokens and its
  answer value in `answer_width` (`config.sft.tool_align_*`): the argument's tokens then sit at
  one distance from the question's copy of them whatever the expression's length, and the answer
  at one distance from the tool result's (`result: X\n` + `answer: X`)."""
  out = []
  for m in messages:
    m = dict(m)
    if m["role"] == "assistant":
      call, answer = _CALL.match(m["content"]), _ANSWER.match(m["content"])
      if call:
        m["content"] = f"call: {call[1]}({right_align(call[2], call_width, encode)})"
      elif answer:
        m["content"] = f"answer: {right_align(answer[1], answer_width, encode)}"
    out.append(m)
  return out


def is_terse(problem: tasks.Problem, terse_frac: float) -> bool:
  """Whether `problem` belongs to the fixed `terse_frac` share shown without working in SFT."""
  return zlib.crc32(problem.id.encode()) < terse_frac * 2**32


def step_problems(
  problems: list[tasks.Problem], *, seed: int, step: int, count: int
) -> list[tasks.Problem]:
  """The problems of one step: a deterministic function of (seed, step), so a resumed run sees
  exactly the data an uninterrupted run would."""
  rng = np.random.default_rng([seed, step])
  idx = rng.choice(len(problems), size=count, replace=len(problems) < count)
  return [problems[i] for i in idx]


def _quiet_tfds() -> None:
  """tfds logs every shard it writes and draws progress bars; the trainer has its own."""
  import tensorflow_datasets as tfds
  from absl import logging as absl_logging

  tfds.disable_progress_bar()
  absl_logging.set_verbosity(absl_logging.WARNING)


def where(problem: tasks.Problem, split: str) -> str:
  """Where a problem comes from, for error messages: `file:line` of a JSONL problem, else its
  id and split."""
  meta = problem.metadata or {}
  if "source" in meta and "line" in meta:
    return f"{meta['source']}:{meta['line']}"
  return f"problem {problem.id} ({split} split of task {problem.task!r})"


def check_task_data(config: mlc.ConfigDict, data: TaskData) -> dict[str, int]:
  """Checks the prepared data against the lengths and counts of `config`, before any compile.

  - SFT (`sft.steps > 0`): examples longer than `sft.max_len` are cut from the right, i.e. the
    answer line goes first. They are counted (logged and returned); one whose answer text itself
    would be cut (more than its stop token) is an error naming `sft.max_len`, the longest example
    and its file:line, unless `sft.allow_truncation` is set.
  - Prompts: every RL (train split) and held-out prompt must leave room for its new tokens in the
    sampler's cache: prompt + `rl.max_new_tokens` (train) or + `eval.max_new_tokens` (held-out)
    <= `rl.cache_size`; else an error naming the longest offender's file:line and the key to raise.
  - `eval.num_problems` <= the held-out problems there are.

  Returns {"sft_examples_truncated": n, "eval_num_problems": n}.
  """
  log = logging.getLogger(__name__)
  stats = {"sft_examples_truncated": 0}
  if config.sft.steps > 0:
    worst = (0, None)
    for problem in data.train:
      example = tasks.sft_example(
        problem,
        chat_template=data.chat_template,
        instruction=data.instruction,
        worked=not is_terse(problem, config.sft.terse_fraction),
      )
      if example is None:
        continue
      prompt = data.prompt(problem) if data.env_prompt is not None else example[0]
      length = len(data.encode_prompt(prompt)) + len(data.tokenizer.encode(example[1]))
      if length + 1 > config.sft.max_len:  # + the stop token
        stats["sft_examples_truncated"] += 1
      worst = max(worst, (length, problem), key=lambda x: x[0])
    n = stats["sft_examples_truncated"]
    if n:
      log.warning(
        "%d of %d SFT examples are longer than sft.max_len=%d and are cut",
        n,
        len(data.train),
        config.sft.max_len,
      )
    length, problem = worst
    if length > config.sft.max_len and not config.sft.allow_truncation:
      raise ValueError(
        f"config.sft.max_len={config.sft.max_len} cuts the answer of {n} of {len(data.train)} SFT "
        f"examples; the longest, {where(problem, 'train')}, needs {length + 1} tokens. Raise "
        "sft.max_len, or set sft.allow_truncation=True to train on the cut examples."
      )
  rl_prompts = config.mode in ("rl", "opd", "mopd") and config.rl.steps > 0
  splits = [("test", data.test[: config.eval.num_problems], "eval.max_new_tokens")]
  if rl_prompts:
    splits.insert(0, ("train", data.train, "rl.max_new_tokens"))
  for split, problems, key in splits:
    new_tokens = config.eval.max_new_tokens if key.startswith("eval") else config.rl.max_new_tokens
    if not problems:
      continue
    length, i = max((len(ids), i) for i, ids in enumerate(data.encode_prompts(problems)))
    if length + new_tokens > config.rl.cache_size:
      raise ValueError(
        f"config.rl.cache_size={config.rl.cache_size} is too small for the {split} prompts: "
        f"the longest, {where(problems[i], split)}, has {length} tokens, and {key}={new_tokens} "
        f"more must fit. Raise rl.cache_size to at least {length + new_tokens} (or shorten the "
        "prompts)."
      )
  if config.eval.num_problems > len(data.test):
    raise ValueError(
      f"config.eval.num_problems={config.eval.num_problems} exceeds the {len(data.test)} held-out "
      f"problems of task {config.task.name!r}; lower it or raise task.num_eval."
    )
  stats["eval_num_problems"] = min(config.eval.num_problems, len(data.test))
  return stats
