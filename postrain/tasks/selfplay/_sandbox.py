"""Runs a proposed Python program on an input in a resource-limited subprocess (arXiv 2605.22217).

Each run gets a fresh temporary directory. The child is `python -I -S -B <bootstrap>` with that
directory as cwd, HOME and TMPDIR; `resource.setrlimit` in `preexec_fn` caps CPU time, address
space, file size, open files and core dumps; a wall-clock timeout kills the whole process group.
The bootstrap installs an audit hook (`sys.addaudithook`, which cannot be removed) before the
program runs. The hook

- blocks opening any path for writing outside the temporary directory (`open`, `os.open`,
  `io.FileIO`, pathlib, ...), and removing, renaming, creating directories, chmod/chown/utime
  and truncating outside it;
- blocks processes (subprocess, os.system, exec*, spawn*, fork), signals to other processes,
  sockets, ctypes, raising resource limits, and importing the modules in `BANNED_MODULES`.

Every blocked attempt is recorded, so a program that catches the PermissionError is still
rejected ("sandbox_violation"). This is defence in depth for model-written programs, not a
security boundary against an adversary: run untrusted code in a container as well.

Program protocol: `program` defines a function (`entry`, default "f"); `inputs` is a string of
Python literals, the positional arguments (e.g. "[1, 2], 3"); the output is `repr(f(*args))`.
Prints of the program are discarded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

BANNED_MODULES = (
  "ctypes",
  "_ctypes",
  "socket",
  "_socket",
  "ssl",
  "_ssl",
  "subprocess",
  "_posixsubprocess",
  "multiprocessing",
  "_multiprocessing",
  "sqlite3",
  "_sqlite3",
  "dbm",
  "_dbm",
  "_gdbm",
  "pty",
)

_BOOTSTRAP = r"""
import ast, io, json, os, sys
sys.dont_write_bytecode = True

def _install(root, banned):
  realpath, fspath, sep = os.path.realpath, os.fspath, os.sep
  write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
  path_events = {"os.remove": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.rmdir": (0,),
                 "os.chmod": (0,), "os.chown": (0,), "os.chflags": (0,), "os.truncate": (0,),
                 "os.utime": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
                 "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copymode": (1,),
                 "shutil.copystat": (1,), "shutil.chown": (0,)}
  blocked = ("os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
             "os.kill", "os.killpg", "os.symlink", "os.link", "os.startfile", "subprocess.",
             "socket.", "ctypes.", "resource.setrlimit", "resource.prlimit",
             "signal.pthread_kill", "pty.", "sqlite3.", "os.add_dll_directory")
  violations = []

  def inside(p):
    if isinstance(p, int):
      return True  # an already-open descriptor
    try:
      p = fspath(p)
    except TypeError:
      return False
    if isinstance(p, bytes):
      p = p.decode("utf-8", "surrogateescape")
    rp = realpath(p)
    return rp == root or rp.startswith(root + sep)

  def deny(event, detail):
    violations.append(f"{event} {detail!r}")
    raise PermissionError(f"sandbox: {event} {detail!r} is not allowed")

  def hook(event, args):
    if event == "open":
      path, mode, flags = args
      write = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
          isinstance(flags, int) and flags & write_flags)
      if write and not inside(path):
        deny(event, path)
    elif event in path_events:
      for i in path_events[event]:
        if i < len(args) and not inside(args[i]):
          deny(event, args[i])
    elif event.startswith(blocked):
      deny(event, args[0] if args else None)
    elif event == "import" and args[0].partition(".")[0] in banned:
      deny(event, args[0])

  # os.mkfifo / os.mknod create files without raising an audit event: replace them.
  def no_fifo(path, *args, **kwargs):
    deny("os.mkfifo/mknod", path)

  for mod in (os, sys.modules.get("posix")):
    for name in ("mkfifo", "mknod"):
      if mod is not None and hasattr(mod, name):
        setattr(mod, name, no_fifo)
  sys.addaudithook(hook)
  return violations

def _main():
  nonce, entry, banned = sys.argv[1], sys.argv[2], frozenset(sys.argv[3].split(","))
  if len(sys.argv) > 4:  # limits_in="bootstrap": set the limits here, before anything else
    import resource
    for name, soft, hard in json.loads(sys.argv[4]):
      resource.setrlimit(getattr(resource, name), (soft, hard))
  with open("program.py", encoding="utf-8") as fh:
    source = fh.read()
  with open("inputs.txt", encoding="utf-8") as fh:
    inputs = fh.read()
  out = sys.stdout
  result = {"status": "ok"}
  try:
    args = ast.literal_eval("(" + inputs + ",)") if inputs.strip() else ()
  except Exception as e:  # not literals
    result = {"status": "bad_input", "error": f"{type(e).__name__}: {e}"}
  try:
    code = compile(source, "program.py", "exec")
  except Exception as e:
    result = {"status": "syntax_error", "error": f"{type(e).__name__}: {e}"}
  if result["status"] == "ok":
    violations = _install(os.path.realpath(os.getcwd()), banned)
    sys.stdout = sys.stderr = io.StringIO()
    try:
      ns = {"__name__": "__program__", "__builtins__": __builtins__}
      exec(code, ns)
      value = repr(ns[entry](*args))
      result = {"status": "ok", "output": value}
    except MemoryError:
      result = {"status": "memory", "error": "MemoryError"}
    except RecursionError as e:
      result = {"status": "crash", "error": f"RecursionError: {e}"}
    except BaseException as e:
      result = {"status": "crash", "error": f"{type(e).__name__}: {e}"[:500]}
    sys.stdout = sys.stderr = sys.__stderr__
    if violations:
      result = {"status": "sandbox_violation", "error": "; ".join(violations)[:500]}
  out.write("\n" + nonce + json.dumps(result) + "\n")
  out.flush()

_main()
"""


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """Limits of one sandboxed run.

  timeout_s: wall-clock limit (the process group is killed). cpu_s: RLIMIT_CPU seconds.
  memory_mb: RLIMIT_AS. fsize_mb: RLIMIT_FSIZE (also bounds the captured output). nofile:
  RLIMIT_NOFILE. max_output_chars: longer outputs are rejected. entry: the function called.
  banned_modules: imports that are blocked. limits_in: "preexec_fn" (default) sets the limits
  in `preexec_fn` between fork and exec; "bootstrap" sets them as the child's first statement,
  before the program is read, so `subprocess` can skip running Python code in the forked child.
  Prefer "bootstrap" inside a multithreaded process (JAX warns that fork + Python code in the
  child may deadlock there); the program sees the same limits either way.
  """

  timeout_s: float = 5.0
  cpu_s: int = 2
  memory_mb: int = 512
  fsize_mb: int = 8
  nofile: int = 64
  max_output_chars: int = 10_000
  entry: str = "f"
  banned_modules: tuple[str, ...] = BANNED_MODULES
  python: str = sys.executable
  limits_in: str = "preexec_fn"

  def __post_init__(self):
    if self.limits_in not in ("preexec_fn", "bootstrap"):
      raise ValueError(f"`limits_in` must be 'preexec_fn' or 'bootstrap', got {self.limits_in!r}.")
    for name in ("timeout_s", "cpu_s", "memory_mb", "fsize_mb", "nofile", "max_output_chars"):
      if getattr(self, name) <= 0:
        raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")


@dataclasses.dataclass(frozen=True)
class ExecResult:
  """status: "ok", "timeout", "memory", "crash", "syntax_error", "bad_input",
  "sandbox_violation" or "output_too_long"; output: repr of the return value when ok."""

  status: str
  output: str | None = None
  error: str = ""
  wall_s: float = 0.0


def _limit_spec(cfg: SandboxConfig) -> list[tuple[str, int, int]]:
  mb = 1 << 20
  return [
    ("RLIMIT_CPU", cfg.cpu_s, cfg.cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard
    ("RLIMIT_AS", cfg.memory_mb * mb, cfg.memory_mb * mb),
    ("RLIMIT_FSIZE", cfg.fsize_mb * mb, cfg.fsize_mb * mb),
    ("RLIMIT_NOFILE", cfg.nofile, cfg.nofile),
    ("RLIMIT_CORE", 0, 0),
  ]


def _preexec(cfg: SandboxConfig):
  spec = [(getattr(resource, name), soft, hard) for name, soft, hard in _limit_spec(cfg)]

  def apply() -> None:  # runs in the forked child: C calls only, no imports or allocations
    for res, soft, hard in spec:
      resource.setrlimit(res, (soft, hard))

  return apply


def run_program(program: str, inputs: str, config: SandboxConfig | None = None) -> ExecResult:
  """Runs `program`'s entry function on `inputs` once in a fresh sandbox; see the module doc."""
  cfg = config or SandboxConfig()
  base = tempfile.mkdtemp(prefix="postrain_sbx_")
  work = os.path.join(base, "work")  # the program's world; stdout/stderr files live outside it
  os.mkdir(work)
  nonce = uuid.uuid4().hex
  try:
    with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as fh:
      fh.write(program)
    with open(os.path.join(work, "inputs.txt"), "w", encoding="utf-8") as fh:
      fh.write(inputs)
    with open(os.path.join(base, "bootstrap.py"), "w", encoding="utf-8") as fh:
      fh.write(_BOOTSTRAP)
    env = {"HOME": work, "TMPDIR": work, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    cmd = [cfg.python, "-I", "-S", "-B", os.path.join(base, "bootstrap.py"), nonce, cfg.entry]
    cmd.append(",".join(cfg.banned_modules))
    if cfg.limits_in == "bootstrap":
      cmd.append(json.dumps(_limit_spec(cfg)))
    start = time.monotonic()
    with (
      open(os.path.join(base, "stdout"), "wb") as out,
      open(os.path.join(base, "stderr"), "wb") as err,
    ):
      proc = subprocess.Popen(
        cmd,
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        preexec_fn=_preexec(cfg) if cfg.limits_in == "preexec_fn" else None,
        start_new_session=True,  # its own process group, killed as a whole on timeout
        close_fds=True,
      )
      try:
        proc.wait(timeout=cfg.timeout_s)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return ExecResult("timeout", error=f"wall time > {cfg.timeout_s}s", wall_s=cfg.timeout_s)
    wall = time.monotonic() - start
    return _parse(base, nonce, proc.returncode, wall, cfg)
  finally:
    shutil.rmtree(base, ignore_errors=True)


def _parse(base: str, nonce: str, returncode: int, wall: float, cfg: SandboxConfig) -> ExecResult:
  with open(os.path.join(base, "stdout"), "rb") as fh:
    stdout = fh.read(4 * cfg.max_output_chars + 65536).decode("utf-8", "replace")
  with open(os.path.join(base, "stderr"), "rb") as fh:
    stderr = fh.read(65536).decode("utf-8", "replace")
  if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
    return ExecResult("timeout", error=f"CPU time > {cfg.cpu_s}s", wall_s=wall)
  line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith(nonce)), None)
  if line is None:
    status = "memory" if "MemoryError" in stderr else "crash"
    return ExecResult(status, error=(stderr.strip()[-500:] or f"exit {returncode}"), wall_s=wall)
  result = json.loads(line[len(nonce) :])
  status, output = result["status"], result.get("output")
  if status == "ok" and len(output) > cfg.max_output_chars:
    return ExecResult("output_too_long", error=f"{len(output)} chars", wall_s=wall)
  return ExecResult(status, output, result.get("error", ""), wall)
