"""Environments by name, as the trainer selects them (`config.env.name`).

    "none"                    no environment: single-turn rollouts (the default)
    "calculator", "python"    a `ToolEnv` with that one tool
    "tools"                   a `ToolEnv` with the tools `config.env.tools` names
    a registered name         `register_env(name, factory)`
    "package.module:attr"     an `Env` subclass or a callable returning an `Env`

A factory is called as `factory(**options)` with the options of `env_options(config.env)` (format,
timeout_s, tools, shaping rewards) that its signature accepts, once per episode row.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from postrain._validation import import_attr
from postrain.envs._env_base import Env, ToolEnv

EnvFactory = Callable[..., Env]

ENVS: dict[str, EnvFactory] = {
  "calculator": functools.partial(ToolEnv, ("calculator",)),
  "python": functools.partial(ToolEnv, ("python",)),
  "tools": ToolEnv,  # takes `tools`
}


def register_env(name: str, factory: EnvFactory, *, overwrite: bool = False) -> EnvFactory:
  """Registers `factory` (an `Env` subclass or a callable returning an `Env`) under `name`."""
  if name in ENVS and not overwrite:
    raise ValueError(f"an environment named {name!r} is already registered")
  if name == "none" or ":" in name:
    raise ValueError(f"{name!r} cannot be an environment name")
  ENVS[name] = factory
  return factory


def resolve(name: str) -> EnvFactory | None:
  """The factory `name` selects, None for "none" (ValueError naming config.env.name if unknown)."""
  if name == "none":
    return None
  if name in ENVS:
    return ENVS[name]
  if ":" in name:
    obj = import_attr(name, "config.env.name: cannot import")
    if not callable(obj):
      raise ValueError(f"config.env.name: {name!r} is not an Env subclass or callable")
    return obj
  raise ValueError(
    f"config.env.name: must be 'none', one of {sorted(ENVS)} or 'package.module:attr', got {name!r}"
  )


def make_env(name: str, **options: Any) -> Env | None:
  """One environment: `resolve(name)` called with the `options` its signature accepts."""
  factory = resolve(name)
  if factory is None:
    return None
  target = factory.func if isinstance(factory, functools.partial) else factory
  try:
    params = inspect.signature(target).parameters
  except (TypeError, ValueError):
    params = {}
  if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
    options = {k: v for k, v in options.items() if k in params}
  if isinstance(factory, functools.partial) and factory.args:
    options.pop("tools", None)  # "calculator" / "python" fix their tool
  env = factory(**options)
  if not isinstance(env, Env) and not (hasattr(env, "reset") and hasattr(env, "step")):
    raise TypeError(f"config.env.name: {name!r} returned {type(env).__name__}, not an Env")
  return env
