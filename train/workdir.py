"""The work directory of a run: where every stage writes, one run at a time.

`claimed(workdir)` creates and checks the directory, then locks it for the run: a second run
on the same directory would delete the first's in-flight `<step>.orbax-checkpoint-tmp` and
overwrite its results, so it is refused at start, naming the holder. The lock is the file
`<workdir>/.lock` holding the holder's pid, host, start time and command, created atomically
(a hard link of a complete file, so no reader sees it half-written) and removed on exit. A lock
left by a killed run (its pid no longer alive on this host) is taken over with a warning. In a
multi-host run only process 0 takes the lock (the processes of one run share the directory)
and tells its peers whether it got it, so all of them start or all stop.
"""
import contextlib
import json
import os
import socket
import sys
import time
from typing import Iterator, Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

LOCK_FILE = ".lock"


def check_workdir(workdir: str) -> str:
  """Creates the work directory and checks it is writable; raises naming the fix."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"--workdir={workdir} cannot be created ({e.strerror}); choose a writable "
                     "directory.") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir={workdir} is not writable; choose a writable directory.")
  return workdir


def _holder(path: str) -> Optional[dict]:
  """The record of the lock at `path`, None if there is none (it was just released)."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except ValueError:
    return {}  # not ours, or hand-edited: treated as held by an unknown run


def _alive(holder: dict) -> bool:
  """Whether the lock's process may still run: True unless it is on this host and gone."""
  if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
    return True
  try:
    os.kill(holder["pid"], 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # alive, another user's
  return True


def _acquire(workdir: str) -> dict:
  """Takes `<workdir>/.lock` for this process; raises naming the holder and the fix."""
  path = os.path.join(workdir, LOCK_FILE)
  record = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(record, f)
  try:
    while True:
      try:
        os.link(tmp, path)
        return record
      except FileExistsError:
        holder = _holder(path)
        if holder is None:
          continue
        if _alive(holder):
          raise ValueError(
              f"--workdir={workdir} is in use by another run (pid {holder.get('pid', '?')} on "
              f"host {holder.get('host', '?')}, started {holder.get('started', '?')}: "
              f"{holder.get('command', '?')}). Wait for it to finish or stop it, or use another "
              f"--workdir; if no run uses this directory any more, delete {path}.") from None
        logging.warning("Taking over the lock of a run that no longer runs (pid %s on %s): %s",
                        holder["pid"], holder["host"], path)
        os.remove(path)
  finally:
    os.remove(tmp)


def _release(workdir: str, record: dict) -> None:
  path = os.path.join(workdir, LOCK_FILE)
  if _holder(path) == record:
    os.remove(path)


@contextlib.contextmanager
def claimed(workdir: str) -> Iterator[str]:
  """The work directory (absolute), created, checked and locked for the block (see module
  doc); on exit unlocked and, if this run created it and left it empty (a run refused at
  start), removed."""
  existed = os.path.exists(os.path.abspath(os.path.expanduser(workdir)))
  workdir = check_workdir(workdir)
  first = jax.process_index() == 0
  record, error = None, None
  try:
    if first:
      try:
        record = _acquire(workdir)
      except ValueError as e:
        error = e
    if jax.process_count() > 1:
      refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
      if refused and error is None:
        raise ValueError(f"--workdir={workdir} is in use by another run (process 0 of this run "
                         "says which); wait for it or use another --workdir.")
    if error is not None:
      raise error
    try:
      yield workdir
    finally:
      if record is not None:
        _release(workdir, record)
  finally:
    if first and not existed and os.path.isdir(workdir) and not os.listdir(workdir):
      os.rmdir(workdir)
