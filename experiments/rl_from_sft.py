"""RL variants from one SFT start (issue #4's tuning runs): SFT once, then each RL run restores the
SFT checkpoint into its own workdir, so the variants differ only in their RL settings.

  python experiments/rl_from_sft.py sft runs/tune/s3 task.kwargs.max_terms=3 task.num_train=2000 \
      task.kwargs.max_digits=1 sft.steps=300
  python experiments/rl_from_sft.py rl runs/tune/r3 --sft runs/tune/s3 task.kwargs.max_terms=3 \
      task.num_train=2000 task.kwargs.max_digits=1 sft.steps=300 rl.steps=40 rl.lr=1e-4

Overrides are `key=value` on top of `configs/default.py`; an RL run must repeat the SFT run's task
and `sft.steps` so that the data, tokenizer and step count match. With `model.lora.rank=R` the RL
run trains LoRA adapters over the SFT model (its frozen base) instead of the full weights:

  python experiments/rl_from_sft.py rl runs/lora_main/lora16 --sft runs/lora_main/sft \
      model.lora.rank=16 model.lora.alpha=32 rl.lr=1e-3
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil

from postrain.train import Checkpointer, Trainer, abstract_like, load_run
from postrain.train import config as config_lib

DEFAULT = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"


def make_config(overrides: list[str]):
  c = config_lib.load_config_file(str(DEFAULT))
  c.progress_bar = False
  for item in overrides:
    key, _, value = item.partition("=")
    *path, last = key.split(".")
    node = c
    for part in path:
      node = node[part]
    old = node[last]
    node[last] = value.lower() in ("1", "true") if isinstance(old, bool) else type(old)(value)
  return c


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("mode", choices=("sft", "rl"))
  parser.add_argument("workdir")
  parser.add_argument("--sft", help="the SFT run's workdir (mode rl)")
  parser.add_argument("overrides", nargs="*")
  args = parser.parse_intermixed_args()
  config = make_config(args.overrides)
  if args.mode == "sft":
    config.rl.steps = 0
    report = Trainer(config, args.workdir).run()
    print(json.dumps(report["final"]))
    return
  shutil.rmtree(args.workdir, ignore_errors=True)
  for sub in ("data", "tokenizer"):  # the same problems and token ids as the SFT run
    shutil.copytree(pathlib.Path(args.sft) / sub, pathlib.Path(args.workdir) / sub)
  if not config.tokenizer.path:  # exactly the SFT run's tokenizer, whatever this version trains
    (model,) = (pathlib.Path(args.workdir) / "tokenizer").glob("*.model")
    config.tokenizer.path = str(model)
  if config.model.lora.rank > 0:  # adapters over the SFT model, which is the frozen base
    sft = load_run(args.sft, what="--sft")
    if sft.step != config.sft.steps:
      raise ValueError(f"--sft checkpoint is at step {sft.step}, but sft.steps={config.sft.steps}")
    trainer = Trainer(config, args.workdir, model=sft.model)
    trainer.step = sft.step  # fresh adapters (B = 0: the SFT model exactly) and RL's fresh AdamW
    report = trainer.run()
    print(json.dumps(report["evals"]))
    return
  trainer = Trainer(config, args.workdir)
  sft_ckpt = Checkpointer(str(pathlib.Path(args.sft) / "checkpoints"), every=1, keep=1000)
  abstract = abstract_like(
    {"params": trainer.params, "opt_state": trainer.sft_tx.init(trainer.params)}
  )
  step, state, _ = sft_ckpt.restore_latest(abstract)
  if step != config.sft.steps:
    raise ValueError(f"--sft checkpoint is at step {step}, but sft.steps={config.sft.steps}")
  trainer.params, trainer.step = state["params"], step
  report = trainer.run()
  print(json.dumps(report["evals"]))


if __name__ == "__main__":
  main()
