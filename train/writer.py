"""Logging of one stage: TensorBoard events (tensorboardX, no TensorFlow), absl logs, progress bar.

Only process 0 writes events and shows the progress bar; every process logs.
"""
import logging as std_logging
import os
from typing import Mapping, Optional

import jax
import numpy as np
import tqdm
from absl import logging
from tensorboardX import SummaryWriter


class MetricWriter:
  """Scalars to TensorBoard and the log; images (HWC float in [0, 1]) to TensorBoard."""

  def __init__(self, logdir: str, total_steps: int, initial_step: int = 0, desc: str = ""):
    self._main = jax.process_index() == 0
    self._tb = SummaryWriter(logdir) if self._main else None
    self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, desc=desc, dynamic_ncols=True,
                          disable=not self._main or total_steps == 0)

  def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
    values = {f"{prefix}{k}": float(v) for k, v in values.items()}
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, step)
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in values.items()))
    self._bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in list(values.items())[:4]})

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    if self._tb is not None:
      self._tb.add_image(name, np.asarray(image), step, dataformats="HWC")

  def advance(self, steps: int = 1) -> None:
    self._bar.update(steps)

  def close(self) -> None:
    self._bar.close()
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


class _QuietLibraries(std_logging.Filter):
  """Drops all but the errors of chatty libraries (orbax logs every file it touches)."""

  PACKAGES = ("/orbax/", "/tensorflow_datasets/", "/etils/")

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.ERROR or not any(
        p in record.pathname for p in self.PACKAGES)


def quiet_library_logs() -> None:
  """Keeps the run's own logs readable; those libraries still report errors."""
  logging.get_absl_handler().addFilter(_QuietLibraries())


def stage_dir(workdir: str, stage: str, sub: Optional[str] = None) -> str:
  path = os.path.join(workdir, stage, sub) if sub else os.path.join(workdir, stage)
  os.makedirs(path, exist_ok=True)
  return path
