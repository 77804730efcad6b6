"""Orbax checkpoints of one training stage: the full train state plus a JSON record.

Layout: `<workdir>/<stage>/checkpoints/<step>/{state,meta}`. `meta` holds the step (the data
position: batches are a pure function of (seed, step), so the step alone resumes the input
pipeline exactly), whatever the stage adds (its learning curves, counters), and the stage's
*identity*, the config fields that fix what is being trained. Restoring into a workdir whose
identity differs raises instead of silently mixing experiments.

Saves run in the background (training goes on meanwhile) and are atomic: orbax writes
`<step>.orbax-checkpoint-tmp` and renames it to `<step>` once complete, so a run killed during a
save resumes from the previous checkpoint; the next run's manager deletes the leftover
temporary directory. `close()` waits for a save in flight.
"""
import json
import os
from typing import Any, Callable, Mapping, Optional

import jax
import orbax.checkpoint as ocp


def _canonical(identity: Mapping[str, Any]) -> Any:
  return json.loads(json.dumps(identity, sort_keys=True, default=str))


def _flatten(tree: Any, prefix: str = "") -> dict:
  """Nested dicts -> {'a.b': leaf}, so that differences name config fields."""
  if not isinstance(tree, Mapping):
    return {prefix: tree}
  flat = {}
  for k, v in tree.items():
    flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
  return flat


def _identity_diff(saved: Any, current: Any) -> str:
  """The fields where two identity records differ: 'field: saved (checkpoint) vs current'."""
  theirs, ours = _flatten(saved or {}), _flatten(current or {})
  missing = "(absent)"
  return "; ".join(f"{k}: {theirs.get(k, missing)!r} (checkpoint) vs {ours.get(k, missing)!r}"
                   for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k))


def manager_options(max_to_keep: int, read_only: bool) -> ocp.CheckpointManagerOptions:
  """The options of every stage's `ocp.CheckpointManager` (tests wrap this to inject faults)."""
  return ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, read_only=read_only,
                                      create=not read_only, cleanup_tmp_directories=not read_only)


class Checkpointer:
  """Saves and restores one stage's train state with `ocp.CheckpointManager`.

  `read_only` opens another stage's checkpoints without touching them (a save in flight there
  keeps its temporary directory).
  """

  def __init__(self, directory: str, identity: Mapping[str, Any], *, max_to_keep: int = 2,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.identity = _canonical(identity)
    self._manager = ocp.CheckpointManager(self.directory,
                                          options=manager_options(max_to_keep, read_only),
                                          item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: Optional[Mapping[str, Any]] = None) -> None:
    """Starts saving `state` and `meta` as checkpoint `step`; returns before it is written."""
    record = dict(meta or {}, step=int(step), identity=self.identity)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record)))

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def check_identity(self, step: int,
                     error: Optional[Callable[[str], str]] = None) -> dict:
    """The meta of checkpoint `step`; raises ValueError if it holds another identity.

    `error(diff)` builds the message from `_identity_diff`; the default speaks of the workdir.
    """
    meta = self.read_meta(step)
    if meta.get("identity") != self.identity:
      diff = _identity_diff(meta.get("identity"), self.identity)
      raise ValueError(error(diff) if error else (
          f"The work directory {os.path.dirname(os.path.dirname(self.directory))} holds "
          f"checkpoints of a different experiment in {self.directory} ({diff}). Use a new "
          f"--workdir, or delete {self.directory} to start this experiment over."))
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

  def last_good(self) -> str:
    """For an error that stops training: waits for a save in flight (it holds a good state)
    and says which checkpoint a rerun resumes from."""
    self._manager.wait_until_finished()
    step = self.latest_step()
    if step is None:
      return "no checkpoint was saved yet"
    return (f"the last good checkpoint (step {step}) is kept in {self.directory}; a rerun "
            "resumes from it")

  def close(self) -> None:
    """Waits for a save in flight, then releases the manager."""
    self._manager.close()


def frozen_directory(path: str, stage: str, field: str) -> str:
  """The checkpoints directory of stage `stage` under `path` (a work directory, or that
  directory itself); raises FileNotFoundError naming the config `field` if there is none."""
  for candidate in (os.path.join(path, stage, "checkpoints"), os.path.join(path, "checkpoints")):
    if os.path.isdir(candidate):
      return candidate
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"{field}={path!r}: no such directory. Point it at the --workdir of a finished "
        f"{stage} run, or leave it empty to train the {stage} first.")
  return path


def load_frozen(path: str, stage: str, identity: Mapping[str, Any], field: str,
                retrain_fix: str) -> dict:
  """The raw state of the latest checkpoint of stage `stage` under `path`, for freezing.

  `path` is a work directory (holding `<stage>/checkpoints`) or that checkpoints directory
  itself. Raises, naming the config `field` that gave `path`, if there is no checkpoint or it
  was saved for another `identity` (`retrain_fix` says how to get a matching one).
  """
  directory = frozen_directory(path, stage, field)
  ckpt = Checkpointer(directory, identity, read_only=True)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"{field}={path!r}: no checkpoint in {directory}; run the "
                            f"{stage} stage first or name another {field}.")
  ckpt.check_identity(step, error=lambda diff: (
      f"{field}={path!r} was trained for another {stage} or data ({diff}). {retrain_fix}"))
  state, _ = ckpt.restore_raw(step)
  ckpt.close()
  return state
