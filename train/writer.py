"""Logging: TensorBoard events (tensorboardX, no TensorFlow), absl logs, the training progress bar.

A stage's directory holds its events: the training and evaluation scalars (`MetricWriter`, the
learning curves under 'eval/'), and, once it finishes (`summary`), its config as text and as
hyperparameters beside its final metrics, and its figures as images. Only process 0 writes
events and shows the progress bar; every process logs.
"""
import logging as std_logging
import os
from typing import Any, Mapping, Optional

import jax
import numpy as np
import tqdm
from absl import logging
from flax import traverse_util
from tensorboardX import SummaryWriter


class MetricWriter:
  """Scalars to TensorBoard, the log and a progress bar over a stage's training steps."""

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

  def advance(self, steps: int = 1) -> None:
    self._bar.update(steps)

  def close(self) -> None:
    self._bar.close()
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def summary(logdir: str, config: Any, metrics: Mapping[str, Any],
            images: Mapping[str, Optional[str]] = ()) -> None:
  """A finished stage's TensorBoard record in `logdir` (process 0 only): the config as text
  (TEXT tab) and as hyperparameters beside the stage's numeric final metrics (HPARAMS tab),
  and the PNG files of `images` ({name: path or None}) as images 'figures/<name>' (IMAGES
  tab)."""
  if jax.process_index() != 0:
    return
  from PIL import Image  # the figures' own dependency
  config_dict = config.to_dict()
  hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
             for k, v in traverse_util.flatten_dict(config_dict, sep=".").items()}
  numbers = {k: v for k, v in metrics.items() if k not in ("config", "versions", "curves")}
  flat = traverse_util.flatten_dict(numbers, sep=".")
  scalars = {f"final/{k}": float(v) for k, v in flat.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
             and ".spec." not in k}
  with SummaryWriter(logdir) as tb:
    tb.add_text("config", "```\n" + str(config) + "\n```", 0)
    tb.add_hparams(hparams, scalars, name="hparams")
    for tag, path in dict(images).items():
      if path and os.path.exists(path):
        tb.add_image(f"figures/{tag}", np.asarray(Image.open(path).convert("RGB")), 0,
                     dataformats="HWC")


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
