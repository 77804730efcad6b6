"""Runs an experiment: `python -m train.main --config=configs/X.py[:smoke] --workdir=DIR`.

A config with a non-empty `sweep` runs each of its experiments into `DIR/<name>` (see
`train/sweep.py`); any other config is one experiment (`train/experiment.py`). Rerunning the
same command resumes: finished work is skipped, interrupted work continues from its checkpoint.
"""
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxflowaug import parallel
from train import experiment, results, sweep, writer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (FILE.py or FILE.py:smoke).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, logs, results.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  writer.quiet_library_logs()
  parallel.initialize_distributed(config.distributed.coordinator_address,
                                  config.distributed.num_processes, config.distributed.process_id)
  logging.info("JAX process %d / %d, local devices %s, global device count %d",
               jax.process_index(), jax.process_count(), jax.local_devices(), jax.device_count())
  if config.get("sweep"):
    sweep.run(config, FLAGS.workdir)
    return
  out = experiment.run(config, FLAGS.workdir)
  if jax.process_index() == 0:
    keys = ("val_bits_per_dim", "max_reconstruction_error", "test_accuracy", "train_accuracy",
            "steps")
    print("results:", {k: out[k] for k in keys if k in out},
          "->", os.path.join(os.path.abspath(FLAGS.workdir), results.RESULTS_FILE))


if __name__ == "__main__":
  app.run(main)
