"""How the programs (`train.main`, `train.report`) end on an error the user can cause: one line
naming the fix, exit status 2, instead of a traceback whose last line is the message.

What counts as a user error is decided by where and what was raised, not by a dedicated
exception class: an exception of the types our validation raises (ValueError, OSError with its
FileNotFoundError / NotADirectoryError / PermissionError, RuntimeError such as
`loop.NonFiniteError`) whose raising frame is in this project's own code (train/, jaxflowaug/,
configs/). The project raised it on purpose with a message naming the field and the fix. The
same types raised inside a library (a ValueError deep in jax is a bug, ours or theirs) keep
their traceback, as does every other type (TypeError, KeyError, AssertionError, ...). The price
of this rule: a ValueError from a C function (numpy) called directly in our code also reads as
ours.

An exception may carry `exit_status` (e.g. a run stopped by SIGTERM exits 128 + 15).
"""
import contextlib
import difflib
import importlib.util
import os
import sys
from typing import Iterator, Optional

from absl import app

USER_ERROR_STATUS = 2
_USER_TYPES = (ValueError, OSError, RuntimeError)
_OWN_DIRS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d)
                  + os.sep for d in ("train", "jaxflowaug", "configs"))


def is_user_error(error: BaseException) -> bool:
  """Whether `error` is one of our own messages (see module doc)."""
  if not isinstance(error, _USER_TYPES):
    return False
  tb = error.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_OWN_DIRS)


@contextlib.contextmanager
def one_line() -> Iterator[None]:
  """Turns a user error raised in the block into `error: <message>` on stderr and its exit
  status (default 2); anything else propagates with its traceback."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 - re-raised unless it is one of ours
    if not is_user_error(e):
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(getattr(e, "exit_status", USER_ERROR_STATUS))


def _flat_fields(config, prefix: str = "") -> list:
  """Every field of a ConfigDict as a dotted path, sections included."""
  fields = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    fields.append(path)
    if hasattr(value, "items"):
      fields += _flat_fields(value, path + ".")
  return fields


def unknown_override(argv: list) -> Optional[str]:
  """The message for the first `--config.FIELD` override in `argv` that the config named by
  `--config=FILE[:ARG]` lacks, with the nearest existing field; None if every field exists or
  the config cannot be loaded."""
  values = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if "=" in a}
  if "--config" not in values:
    return None
  path, _, arg = values["--config"].partition(":")
  spec = importlib.util.spec_from_file_location("_config_of_flags", path)
  try:
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception:  # noqa: BLE001 - the flags parser reports a config that does not load
    return None
  fields = _flat_fields(config)
  for name in values:
    field = name[len("--config."):]
    if name.startswith("--config.") and field not in fields:
      near = difflib.get_close_matches(field, fields, n=1, cutoff=0.6)
      hint = f"did you mean {near[0]}?" if near else f"see {path} for its fields."
      return f"{name}: {path} has no field {field!r}; {hint}"
  return None


def parse_flags(argv: list) -> list:
  """absl's flag parsing for `app.run(..., flags_parser=parse_flags)`; an unknown `--config.X`
  override (a typo) ends in one line naming the nearest field, exit status 2, instead of
  ml_collections' traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    message = unknown_override(argv)
    if message is None:
      raise
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_STATUS)
