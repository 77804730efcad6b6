"""Orbax checkpoints of one training stage: the full train state plus a JSON record.

Layout: `<workdir>/<stage>/checkpoints/<step>/{state,meta}`. `meta` holds the step (the data
position: batches are a pure function of (seed, step), so the step alone resumes the input
pipeline exactly), whatever the stage adds (its learning curves, counters), and the stage's
*identity*, the config fields that fix what is being trained. Restoring into a workdir whose
identity differs raises instead of silently mixing experiments. A checkpoint that does not
restore (garbled, truncated, a file missing) is skipped, with a warning naming its step, for the
previous one (`Checkpointer.restore_latest`).

Saves run in the background (training goes on meanwhile) and are atomic: orbax writes
`<step>.orbax-checkpoint-tmp` and renames it to `<step>` once complete, so a run killed during a
save resumes from the previous checkpoint; the next run's manager deletes the leftover
temporary directory. `close()` waits for a save in flight.
"""
import json
import os
import shutil
from typing import Any, Callable, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from flax import traverse_util
from absl import logging



def canonical(identity: Mapping[str, Any]) -> Any:
  """`identity` as it reads back from JSON (tuples as lists, sorted keys), for comparisons."""
  return json.loads(json.dumps(identity, sort_keys=True, default=str))


def identity_diff(saved: Any, current: Any, where: str = "checkpoint") -> str:
  """The fields where two identity records differ: 'field: saved (where) vs current'."""
  theirs = traverse_util.flatten_dict(dict(saved or {}), sep=".")
  ours = traverse_util.flatten_dict(dict(current or {}), sep=".")
  missing = "(absent)"
  return "; ".join(f"{k}: {theirs.get(k, missing)!r} ({where}) vs {ours.get(k, missing)!r}"
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
    self.identity = canonical(identity)
    self._read_only = read_only
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

  def _check_identity(self, meta: dict, error: Optional[Callable[[str], str]]) -> None:
    """Raises ValueError if `meta` holds another identity; `error(diff)` builds the message
    from `identity_diff`, the default speaks of the workdir."""
    if meta.get("identity") != self.identity:
      diff = identity_diff(meta.get("identity"), self.identity)
      raise ValueError(error(diff) if error else (
          f"The work directory {os.path.dirname(os.path.dirname(self.directory))} holds "
          f"checkpoints of a different experiment in {self.directory} ({diff}). Use a new "
          f"--workdir, or delete {self.directory} to start this experiment over."))

  def _skip_bad(self, step: int, error: Exception) -> None:
    """Warns that checkpoint `step` does not restore; a writable manager deletes it, so that
    training can save that step again."""
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    logging.warning("Checkpoint %d in %s does not restore (%s: %s); %s, falling back to the "
                    "previous one.", step, self.directory, type(error).__name__, first_line,
                    "keeping it" if self._read_only else "deleting it")
    if not self._read_only and jax.process_index() == 0:
      shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)
    if not self._read_only:
      self._manager.reload()

  def restore_latest(self, target: Any = None,
                     error: Optional[Callable[[str], str]] = None) -> tuple[Optional[int], Any,
                                                                            dict]:
    """(step, state, meta) of the newest checkpoint that restores; (None, None, {}) if there
    is none. `state` takes the structure, shapes and shardings of `target`, or as saved (nested
    dicts of arrays) when `target` is None.

    A checkpoint that does not restore (garbled, truncated, a file such as `meta/metadata` or
    `state/_METADATA` missing) is skipped with a warning naming its step, and the previous one
    tried. Raises ValueError naming the directory to delete if checkpoints exist but none
    restores, or if the newest readable one holds another identity (`error`: see
    `_check_identity`).
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        meta = self.read_meta(step)
      except Exception as e:  # noqa: BLE001 - any failure to read means a damaged checkpoint
        self._skip_bad(step, e)
        continue
      self._check_identity(meta, error)
      abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                          target)
      try:
        state = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))["state"]
      except Exception as e:  # noqa: BLE001 - as above
        self._skip_bad(step, e)
        continue
      return step, state, meta
    if steps:
      raise ValueError(f"No checkpoint in {self.directory} restores (steps {steps}: damaged, see "
                       f"the warnings above). Delete {self.directory} to start that stage over.")
    return None, None, {}

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
                retrain_fix: str) -> tuple[Any, dict]:
  """(raw state, origin) of the newest restorable checkpoint of stage `stage` under `path`, for
  freezing; origin = {path: its checkpoints directory, step, identity}.

  `path` is a work directory (holding `<stage>/checkpoints`) or that checkpoints directory
  itself. Raises, naming the config `field` that gave `path`, if there is no checkpoint or it
  was saved for another `identity` (`retrain_fix` says how to get a matching one).
  """
  directory = frozen_directory(path, stage, field)
  ckpt = Checkpointer(directory, identity, read_only=True)
  step, state, _ = ckpt.restore_latest(error=lambda diff: (
      f"{field}={path!r} was trained for another {stage} or data ({diff}). {retrain_fix}"))
  ckpt.close()
  if step is None:
    raise FileNotFoundError(f"{field}={path!r}: no checkpoint in {directory}; run the "
                            f"{stage} stage first or name another {field}.")
  return state, {"path": directory, "step": step, "identity": ckpt.identity}
