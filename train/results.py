"""`results.json`: a run's final metrics, its config, library versions and device count."""
import json
import os
import platform
from typing import Any, Mapping, Optional

import jax
import ml_collections
from absl import logging

RESULTS_FILE = "results.json"


def _versions() -> dict:
  import flax
  import optax
  import orbax.checkpoint
  return {"python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax": orbax.checkpoint.__version__}


def write_json_atomic(path: str, payload: Any) -> None:
  """Writes JSON through a temporary file and a rename, so readers never see half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=float)
    f.write("\n")
  os.replace(tmp, path)


def read(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def finished(workdir: str, stage: str) -> Optional[dict]:
  """The results of stage `stage` in `workdir` if it has finished (then it is skipped), else
  None."""
  stage_dir = os.path.join(workdir, stage)
  done = read(stage_dir)
  if done is not None:
    logging.info("%s stage already finished in %s; skipping (delete %s to rerun it).", stage,
                 stage_dir, os.path.join(stage_dir, RESULTS_FILE))
  return done


def write(workdir: str, metrics: Mapping[str, Any], config: ml_collections.ConfigDict) -> dict:
  """Writes `<workdir>/results.json` (process 0 only) and returns its content."""
  payload = dict(metrics)
  payload.update(config=config.to_dict(), versions=_versions(),
                 device_count=jax.device_count(), process_count=jax.process_count(),
                 platform=jax.default_backend())
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, RESULTS_FILE), payload)
  return payload
