"""Runs an experiment: `python -m train.main --config=configs/X.py[:smoke] --workdir=DIR`.

The stages named in `config.stages` run in order into one work directory; a finished stage is
skipped and an interrupted one resumes from its last checkpoint, so rerunning the same command
after a crash or preemption continues where it stopped. `DIR/results.json` gathers the final
metrics of every stage that ran.
"""
import os

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from jaxflowaug import parallel
from train import classifier_trainer, flow_trainer, input_pipeline, results

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (FILE.py or FILE.py:smoke).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, logs, results.json.")
flags.mark_flags_as_required(["config", "workdir"])

STAGES = ("flow", "classifier")


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


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the config's stages into `workdir` and writes `workdir/results.json`."""
  unknown = [s for s in config.stages if s not in STAGES]
  if unknown or not config.stages:
    raise ValueError(f"stages={tuple(config.stages)} must be a non-empty subset of {STAGES}.")
  workdir = check_workdir(workdir)
  if "classifier" in config.stages:
    classifier_trainer.validate(config)
  datasets = input_pipeline.load(config)
  merged, per_stage = {}, {}
  run_flow = not config.flow.checkpoint and (
      "flow" in config.stages
      or ("classifier" in config.stages and classifier_trainer.uses_flow(config)))
  if run_flow:
    per_stage["flow"] = flow_trainer.train_and_evaluate(config, workdir, datasets)
  if "classifier" in config.stages:
    per_stage["classifier"] = classifier_trainer.train_and_evaluate(config, workdir, datasets)
  for stage, out in per_stage.items():
    merged.update({k: v for k, v in out.items()
                   if k not in ("config", "versions", "device_count", "process_count",
                                "platform")})
  merged["stages"] = {s: {k: v for k, v in out.items() if k != "config"}
                      for s, out in per_stage.items()}
  return results.write(workdir, merged, config)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  parallel.initialize_distributed(config.distributed.coordinator_address,
                                  config.distributed.num_processes, config.distributed.process_id)
  logging.info("JAX process %d / %d, local devices %s, global device count %d",
               jax.process_index(), jax.process_count(), jax.local_devices(), jax.device_count())
  out = run(config, FLAGS.workdir)
  if jax.process_index() == 0:
    keys = ("val_bits_per_dim", "max_reconstruction_error", "test_accuracy", "train_accuracy",
            "steps")
    print("results:", {k: out[k] for k in keys if k in out},
          "->", os.path.join(os.path.abspath(FLAGS.workdir), results.RESULTS_FILE))


if __name__ == "__main__":
  app.run(main)
