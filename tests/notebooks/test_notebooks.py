"""The Colab notebooks: stored clean, and executed top to bottom on CPU (any cell error fails).

Execution runs each notebook in a fresh `python3` kernel with `nbclient`, with the working
directory `notebooks/` (as Jupyter would), and checks that its plots were rendered.
"""

import os
import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
FIGURES = {"quickstart.ipynb": 2, "compare_algorithms.ipynb": 1}  # figures each one must render
NOTEBOOKS = tuple(FIGURES)
CELL_TIMEOUT_S = 600  # each notebook takes 1-3 minutes on 2 cores; its longest cell ~2 minutes


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list:
  return [cell for cell in nb.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_stored_without_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  for cell in _code_cells(nb):
    assert cell.outputs == [], f"{name}: a code cell is stored with outputs (clear them)"
    assert cell.execution_count is None, f"{name}: a code cell is stored with an execution count"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_first_code_cell_installs_only_in_colab(name):
  first = _code_cells(_read(name))[0].source
  assert 'if "google.colab" in sys.modules:' in first
  # Everything that installs or clones is inside the Colab branch.
  guarded = first.split('if "google.colab" in sys.modules:', 1)[1]
  assert "pip" in guarded and "pip" not in first.split("if", 1)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_top_to_bottom(name, monkeypatch, tmp_path):
  # The kernel inherits the environment: its workdirs (tempfile.mkdtemp) go under pytest's
  # tmp_path, and it shares the test suite's persistent compilation cache.
  monkeypatch.setenv("TMPDIR", os.fspath(tmp_path))
  cache = NOTEBOOK_DIR.parent / "tests" / ".jax_cache"
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", os.fspath(cache))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = _read(name)
  client = NotebookClient(
    nb,
    timeout=CELL_TIMEOUT_S,
    kernel_name="python3",
    allow_errors=False,  # a cell error raises CellExecutionError with its traceback
    resources={"metadata": {"path": os.fspath(NOTEBOOK_DIR)}},
  )
  start = time.perf_counter()
  client.execute()
  elapsed = time.perf_counter() - start
  print(f"{name}: executed in {elapsed:.0f} s")

  outputs = [out for cell in _code_cells(nb) for out in cell.outputs]
  errors = [out for out in outputs if out.output_type == "error"]
  assert not errors, errors
  images = [out for out in outputs if "image/png" in out.get("data", {})]
  assert len(images) == FIGURES[name], f"{name}: {len(images)} figures rendered"
  assert not any("Traceback" in out.get("text", "") for out in outputs)
