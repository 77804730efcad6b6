"""The one training loop every stage runs: restore, step, check, log, evaluate, save, close.

A stage gives its initial state, its step function, its batches and its identity; the loop
1. restores the newest checkpoint of `<stage_dir>/checkpoints` that restores (refusing one of
   another identity, skipping damaged ones with a warning) and continues from its step:
   batches are a pure function of the step, so a resumed run sees exactly the batches an
   uninterrupted one would;
2. runs `step_fn(state, batch, key, *args) -> (state, metrics)` jitted, the state donated,
   outputs replicated over the mesh;
3. every `log_every` steps and before every save, checks every metric of every step since the
   last check: a NaN or inf stops the run naming the first bad step, and keeps the last good
   checkpoint (nothing non-finite is ever saved);
4. logs the metrics (TensorBoard, absl log, progress bar), appends a learning-curve point every
   `eval_every` steps, sums the `sums` metrics over all steps (kept across resumes);
5. saves every `checkpoint_every` steps and at the end, then waits for the last save;
6. on SIGTERM (what preemptible and TPU VMs get before they go) or SIGINT, finishes the step,
   saves it and raises `Preempted`: the rerun resumes from that very step. With several
   processes the stop goes through JAX's preemption sync point (`jax.distributed`'s
   coordination service watches SIGTERM), so every process saves the same step. A second
   signal kills the process at once.
"""
import dataclasses
import os
import signal
import threading
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from jaxflowaug import parallel
from train import checkpoint, writer


class NonFiniteError(RuntimeError):
  """Training produced NaN or inf."""


class Preempted(RuntimeError):
  """Training stopped on a signal after saving its checkpoint; exits with 128 + the signal."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_status = 128 + signum


class _StopRequest:
  """Whether a SIGTERM or SIGINT asks training to stop (see module doc, 6.), as a context that
  installs the handlers (single process, main thread only) and restores the previous ones."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:  # the second signal: stop now, unsaved
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
    self.signum = signum
    logging.warning("%s received: saving a checkpoint after this step, then stopping (send it "
                    "again to stop at once).", signal.Signals(signum).name)

  def requested(self, step: int) -> bool:
    """Called after every step with the steps done, on every process."""
    if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
      self.signum = signal.SIGTERM
    return self.signum is not None


@dataclasses.dataclass
class Result:
  state: Any
  curves: list            # learning-curve points {'step': n, **evaluate(n, state)}
  sums: dict              # {metric: its sum over every step of the run}


def _first_nonfinite(history: Sequence) -> Optional[tuple]:
  """(step, metric name) of the first non-finite metric in [(step, metrics)], or None."""
  for step, metrics in parallel.to_host(list(history)):
    for name, value in metrics.items():
      if not np.all(np.isfinite(value)):
        return step, name
  return None


def train(stage_dir: str, *, desc: str, state: Any, step_fn: Callable, batch: Callable[[int], Any],
          key: jax.Array, total_steps: int, identity: Mapping[str, Any], log_every: int,
          checkpoint_every: int, nonfinite_fix: str, mesh, args: tuple = (),
          sums: Sequence[str] = (), evaluate: Optional[Callable[[int, Any], dict]] = None,
          eval_every: int = 0, log_extra: Optional[Callable[[Any], dict]] = None) -> Result:
  """Trains `state` for `total_steps` steps into `stage_dir` (see module doc).

  Args:
    stage_dir: the stage's directory; checkpoints go to `stage_dir/checkpoints`, events here.
    desc: the stage's name in logs, errors and the progress bar.
    step_fn: (state, batch, key, *args) -> (state, metrics: dict of scalars), pure.
    batch: step -> the global batch of that step.
    identity: what fixes the run (see train/models.py); stored with every checkpoint.
    nonfinite_fix: what the user should change when training goes non-finite.
    args: further traced arguments of `step_fn` (frozen models: passed, not baked in).
    sums: metrics summed over all steps (e.g. counts), returned in `Result.sums`.
    evaluate: (steps done, state) -> a learning-curve point (dict of numbers), every
      `eval_every` steps and after the last one; its numbers are logged under 'eval/'.
    log_extra: state -> further scalars to log with the metrics.
  """
  repl = parallel.replicated(mesh)
  ckpt = checkpoint.Checkpointer(f"{stage_dir}/checkpoints", identity)
  curves, totals = [], {k: 0 for k in sums}
  start, restored, meta = ckpt.restore_latest(state)
  if start is not None:
    state = restored
    curves, totals = meta.get("curves", []), dict(totals, **meta.get("sums", {}))
    logging.info("Resumed %s training from step %d.", desc, start)
  start = int(state.step)
  jitted = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(repl, repl))
  log = writer.MetricWriter(stage_dir, total_steps, start, desc=desc)
  running = {k: jnp.zeros((), jnp.int32) for k in sums}  # summed on device between saves
  history = []
  try:
    with _StopRequest() as stop:
      for step in range(start, total_steps):
        state, metrics = jitted(state, batch(step), key, *args)
        done = step + 1
        history.append((done, metrics))
        running = {k: v + metrics[k] for k, v in running.items()}
        log.advance()
        last = done == total_steps
        stopping = stop.requested(done)
        save_now = done % checkpoint_every == 0 or last or stopping
        if done % log_every == 0 or save_now:
          bad = _first_nonfinite(history)
          if bad is not None:
            raise NonFiniteError(
                f"{desc} training produced a non-finite loss at step {bad[0]} ({bad[1]}); "
                f"{ckpt.last_good()}. {nonfinite_fix}")
          history = []
          scalars = parallel.to_host(metrics)
          if log_extra is not None:
            scalars.update(log_extra(state))
          log.scalars(done, scalars, prefix="train/")
        if evaluate is not None and (done % eval_every == 0 or last):
          point = evaluate(done, state)
          curves.append({"step": done, **point})
          log.scalars(done, {k: v for k, v in point.items() if k != "epoch"}, prefix="eval/")
        if save_now:
          totals = {k: totals[k] + int(running[k]) for k in sums}
          running = {k: jnp.zeros((), jnp.int32) for k in sums}
          ckpt.save(done, state, {"curves": curves, "sums": totals})
          if stopping:
            raise Preempted(
                f"{desc} training stopped by {signal.Signals(stop.signum).name} after step "
                f"{done}; its checkpoint is saved in {ckpt.directory}. Rerun the same command to "
                "resume from it.", stop.signum)
  finally:
    log.close()
    ckpt.close()
  return Result(state=state, curves=curves, sums=totals)
