"""Orbax checkpoints of one training stage: the full train state plus a JSON record.

Layout: `<workdir>/<stage>/checkpoints/<step>/{state,meta}`. `meta` holds the step (the data
position: batches are a pure function of (seed, step), so the step alone resumes the input
pipeline exactly) and the stage's *identity*, the config fields that fix what is being trained.
Restoring into a workdir whose identity differs raises instead of silently mixing experiments.
Saves are atomic (orbax writes to a temporary directory and renames), so a run killed during a
save resumes from the previous checkpoint.
"""
import json
import os
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp


def _canonical(identity: Mapping[str, Any]) -> Any:
  return json.loads(json.dumps(identity, sort_keys=True, default=str))


class Checkpointer:
  """Saves and restores one stage's train state with `ocp.CheckpointManager`."""

  def __init__(self, directory: str, identity: Mapping[str, Any], *, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.identity = _canonical(identity)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: Optional[Mapping[str, Any]] = None) -> None:
    record = dict(meta or {}, step=int(step), identity=self.identity)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record)))

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def check_identity(self, step: int) -> dict:
    meta = self.read_meta(step)
    if meta.get("identity") != self.identity:
      theirs, ours = meta.get("identity") or {}, self.identity
      diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
      raise ValueError(
          f"The work directory {os.path.dirname(self.directory)} holds checkpoints of a different "
          f"experiment (fields that differ: {', '.join(diff)}). Use a new --workdir, or delete "
          f"{self.directory} to start this experiment over.")
    return meta

  def restore(self, step: int, target: Any) -> tuple[Any, dict]:
    """Restores `state` into the structure, shapes and shardings of `target`."""
    meta = self.check_identity(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], meta

  def restore_raw(self, step: int) -> tuple[Any, dict]:
    """Restores `state` as saved (nested dicts of arrays), for reading another stage's output."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
