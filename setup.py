"""postrain: JAX-native reinforcement-learning post-training of language models.

Lower bounds are the versions the test suite was run with.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
  "jax>=0.10.2",
  "flax>=0.12.8",
  "optax>=0.2.8",
  "orbax-checkpoint>=0.12.8",
  "chex>=0.1.92",
  "ml-collections>=1.1.0",
  "sentencepiece>=0.2.3",
  "tensorflow-datasets>=4.9.10",
  "array-record>=0.8.6",
  "numpy>=2.0",
  # LoRA / QLoRA: the int8 / NF4 frozen base (models/lora.py).
  "qwix>=0.1.8",
  "absl-py>=2.1",
  # Weight import and tokenizers (models/).
  "safetensors>=0.8.0",
  "gguf>=0.19.0",
  "tokenizers>=0.23.3",
  # Verifiable tasks (tasks/).
  "reasoning-gym>=0.1.25",
  # Tool-call argument validation (envs/).
  "jsonschema>=4.26.0",
  # Metrics: TensorBoard files without TensorFlow, progress bars, plots.
  "tensorboardX>=2.6.5",
  "tqdm>=4.67",
  "matplotlib>=3.10",
]

EXTRAS = {
  "test": [
    "pytest>=9.0",
    "pytest-xdist>=3.8",
    "hypothesis>=6.155",
    "scipy>=1.17.1",  # chi-square test of the sampler
    "ruff>=0.17",
    "nbclient>=0.11",
    "nbformat>=5.11",
    "ipykernel>=7.0",
  ],
  # Parity against Hugging Face transformers on CPU torch (2.13.0 is the CPU build here).
  "parity": [
    "torch==2.13.0",
    "transformers>=5.23",
    "accelerate>=1.15",  # transformers needs it to load GGUF files
    "peft>=0.21.2",  # the PEFT adapter export (tests/models/test_parity_lora.py)
  ],
}

setup(
  name="postrain",
  version="0.1.0",
  description="JAX-native reinforcement-learning post-training of language models.",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.10",
  packages=[*find_packages(include=["postrain", "postrain.*"]), "postrain.kernels"],
  package_dir={"postrain.kernels": "kernels"},
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS,
)
