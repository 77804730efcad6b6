"""`results.json`: a run's final metrics, its config, the code and library versions it ran
under, and the device count."""
import json
import os
import platform
import subprocess
from typing import Any, Mapping, Optional

import jax
import ml_collections
from absl import logging

from jaxflowaug import conv

RESULTS_FILE = "results.json"


def code_version(root: str) -> Optional[dict]:
  """{commit, dirty} of the git checkout at `root`, or None when it is not one (an installed
  wheel) or git is absent. Two runs of one config under different code can differ in the last
  digits (a changed convolution gradient changes the float rounding), so a result names its
  code."""
  try:
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=10)
    status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return None
  if commit.returncode or status.returncode:
    return None
  return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


# Read once, when the process imports this module: a sweep that runs for hours keeps the code it
# imported, whatever the checkout holds later.
_CODE = code_version(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _versions() -> dict:
  import flax
  import optax
  import orbax.checkpoint
  out = {"python": platform.python_version(), "jax": jax.__version__,
         "flax": flax.__version__, "optax": optax.__version__,
         "orbax": orbax.checkpoint.__version__, "jaxflowaug": _CODE}
  if jax.default_backend() == "cpu":  # the kernels: same values to float32 round-off, not speed
    out["cpu_conv"] = conv.cpu_backend()
  return out


def write_json_atomic(path: str, payload: Any) -> None:
  """Writes JSON through a temporary file and a rename, so readers never see half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=float)
    f.write("\n")
  os.replace(tmp, path)


def read(workdir: str) -> Optional[dict]:
  """The content of `<workdir>/results.json`, or None if there is none or it is unreadable
  (truncated or empty, as a full disk leaves it): then its stage or run counts as unfinished and
  is redone, with a warning naming the file."""
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
    logging.warning("%s is unreadable (%s); treating it as absent: what wrote it is redone.",
                    path, e)
    return None


def write(workdir: str, metrics: Mapping[str, Any], config: ml_collections.ConfigDict,
          identity: Optional[Mapping[str, Any]] = None) -> dict:
  """Writes `<workdir>/results.json` (process 0 only) and returns its content. A stage gives
  its `identity` (what fixes its results): a rerun skips the finished stage only for an equal
  one (train/main.py)."""
  payload = dict(metrics)
  if identity is not None:
    payload["identity"] = identity
  payload.update(config=config.to_dict(), versions=_versions(),
                 device_count=jax.device_count(), process_count=jax.process_count(),
                 platform=jax.default_backend())
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, RESULTS_FILE), payload)
  return payload
