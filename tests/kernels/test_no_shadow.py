"""The top-level `kernels/` directory is `postrain.kernels`; from the repository root it must never
stand in for Hugging Face's `kernels` package (which `transformers` >= 5.2x imports)."""

import importlib.metadata
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS = os.path.join(REPO, "kernels", "__init__.py")


def _installed():
  try:
    importlib.metadata.distribution("kernels")
  except importlib.metadata.PackageNotFoundError:
    return False
  return True


@pytest.mark.skipif(not _installed(), reason="Hugging Face's `kernels` is not installed")
def test_import_kernels_in_the_test_process_is_the_installed_dependency():
  import kernels

  assert os.path.abspath(kernels.__file__) != OURS
  assert not os.path.abspath(kernels.__file__).startswith(REPO + os.sep)


@pytest.mark.skipif(not _installed(), reason="Hugging Face's `kernels` is not installed")
def test_a_script_run_from_the_root_imports_the_installed_kernels():
  # `python -c` (like `python -m pytest` or `python script.py` in the root) puts the root first.
  code = "import sys, kernels; assert sys.path[0] == ''; print(kernels.__file__)"
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
  )
  assert not os.path.abspath(out.stdout.strip()).startswith(REPO + os.sep), out.stdout


def test_without_the_dependency_import_kernels_names_postrain_kernels():
  # `-S`: no site-packages, so the only `kernels` on the path is the checkout's directory.
  code = f"import sys; sys.path.insert(0, {REPO!r}); import kernels"
  out = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True)
  assert out.returncode != 0
  assert "ImportError" in out.stderr and "postrain.kernels" in out.stderr, out.stderr


def test_postrain_kernels_is_the_checkout_directory():
  import postrain.kernels

  assert os.path.abspath(postrain.kernels.__file__) == OURS
  assert callable(postrain.kernels.fused_logprobs)
