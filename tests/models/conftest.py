"""Fixtures of the model tests; their helpers live in `model_testutil` (a unique module name, so
test files import them without clashing with other directories' conftest modules)."""

from model_testutil import jit_forward, jit_logprobs, tiny_llama, tiny_qwen3  # noqa: F401 (fixtures)
