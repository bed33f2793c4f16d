"""8 fake CPU devices for the sharding tests.

XLA_FLAGS is read when the JAX backend starts, so when the command line names only tests of this
directory the flag is set here at import, before any test touches a device. Otherwise (the whole
suite, `pytest -n 2`, or any xdist worker) this process keeps its devices, and the tests
of this directory run in one child pytest process that has the flag (shared by the xdist workers
through a file lock); each test here reports its child's outcome. A module with `ANY_DEVICES = True`
always runs in-process.
"""

import fcntl
import json
import os
import subprocess
import sys
import tempfile

FLAG = "--xla_force_host_platform_device_count=8"
HERE = os.path.dirname(os.path.abspath(__file__))


def _only_this_directory(argv: list[str]) -> bool:
  """True when every path argument of the pytest command line lies in this directory.

  Only then may the flag go into this process: in a run that also collects other directories it
  would give their tests 8 devices too (a default `data=-1` mesh then splits their batches 8 ways),
  depending on whether the backend started before this file was imported.
  """
  if os.environ.get("PYTEST_XDIST_WORKER"):  # workers share one child run instead
    return False
  paths = [a.split("::")[0] for a in argv[1:] if not a.startswith("-")]
  paths = [os.path.abspath(p) for p in paths if os.path.exists(p)]
  return bool(paths) and all((p + os.sep).startswith(HERE + os.sep) for p in paths)


if "xla_force_host_platform_device_count" not in os.environ.get(
  "XLA_FLAGS", ""
) and _only_this_directory(sys.argv):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FLAG}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

NUM_DEVICES = 8
_REPORT_ENV = "POSTRAIN_SHARDING_CHILD_REPORT"
_CHILD_TIMEOUT_S = 1800
_results: dict[str, dict[str, str]] = {}


def _ours(item) -> bool:
  return str(item.path).startswith(HERE + os.sep) and not getattr(item.module, "ANY_DEVICES", False)


def _shared_dir(config) -> str:
  # xdist workers of one run share its testrunuid; a plain run uses its own pid.
  run = getattr(config, "workerinput", {}).get("testrunuid", str(os.getpid()))
  path = os.path.join(tempfile.gettempdir(), f"postrain-sharding-{run}")
  os.makedirs(path, exist_ok=True)
  return path


def _run_child(session) -> dict:
  ids = [i.nodeid for i in session.items if _ours(i)]
  shared = _shared_dir(session.config)
  report = os.path.join(shared, "results.json")
  with open(os.path.join(shared, "lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(report):
      flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
      env = dict(os.environ, XLA_FLAGS=" ".join([*flags, FLAG]))
      env[_REPORT_ENV] = report
      env.pop("PYTEST_XDIST_WORKER", None)
      cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", *ids]
      try:
        proc = subprocess.run(
          cmd,
          cwd=str(session.config.rootpath),
          env=env,
          capture_output=True,
          text=True,
          timeout=_CHILD_TIMEOUT_S,
        )
        log = proc.stdout[-6000:] + proc.stderr[-3000:]
      except subprocess.TimeoutExpired as err:  # subprocess.run kills the child on timeout
        log = f"child pytest timed out after {_CHILD_TIMEOUT_S} s\n{err.stdout or ''}"[-6000:]
      if not os.path.exists(report):
        with open(report, "w") as f:
          json.dump({"__log__": log}, f)
  with open(report) as f:
    return json.load(f)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
  if not _ours(pyfuncitem) or jax.device_count() >= NUM_DEVICES:
    return None
  if os.environ.get(_REPORT_ENV):
    raise RuntimeError(
      f"the child process has {jax.device_count()} devices (XLA_FLAGS="
      f"{os.environ.get('XLA_FLAGS')!r}); the backend started before conftest."
    )
  if not _results:
    _results.update(_run_child(pyfuncitem.session))
  result = _results.get(pyfuncitem.nodeid)
  if result is None:
    pytest.fail(
      f"no result from the {NUM_DEVICES}-device child run:\n{_results.get('__log__', '')}",
      pytrace=False,
    )
  if result["outcome"] != "passed":
    pytest.fail(
      f"failed in the {NUM_DEVICES}-device child process:\n{result['longrepr']}", pytrace=False
    )
  return True


def pytest_runtest_logreport(report):
  if not os.environ.get(_REPORT_ENV):
    return
  entry = _results.setdefault(report.nodeid, {"outcome": "passed", "longrepr": ""})
  if report.failed:
    entry["outcome"] = "failed"
    entry["longrepr"] += f"[{report.when}] {report.longreprtext}\n"


def pytest_sessionfinish(session):
  path = os.environ.get(_REPORT_ENV)
  if path:
    with open(path + ".tmp", "w") as f:
      json.dump(_results, f)
    os.replace(path + ".tmp", path)
