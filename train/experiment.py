"""One experiment: the stages named in `config.stages`, run in order into one work directory.

A finished stage is skipped and an interrupted one resumes from its last checkpoint, so rerunning
after a crash or preemption continues where it stopped. 'vaegan' trains the VAE-GAN of the
exact-vs-approximate ablation (`perturb.generator='vaegan'`). `workdir/results.json` gathers the final
metrics of every stage that ran (a later stage's override an earlier one's where both name a
key). 'evaluate' (train/evaluate.py) tests the classifier of the same workdir, clean and under the
attacks of `config.evaluation`.
"""
import os

import ml_collections

from train import (checkpoint, classifier_trainer, evaluate, flow_trainer, input_pipeline,
                   results, vaegan_trainer)

STAGES = ("flow", "vaegan", "classifier", "evaluate")


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
  run_flow = not config.flow.checkpoint and (
      "flow" in config.stages
      or ("classifier" in config.stages and classifier_trainer.uses_flow(config))
      or ("evaluate" in config.stages and evaluate.uses_flow(config)))
  run_vaegan = not config.vaegan.checkpoint and (
      "vaegan" in config.stages
      or ("classifier" in config.stages and classifier_trainer.uses_vaegan(config)))
  # Every config check before anything is written: a refused run leaves no workdir behind.
  if run_flow:
    flow_trainer.validate(config)
  if run_vaegan:
    vaegan_trainer.validate(config)
  if "classifier" in config.stages:
    classifier_trainer.validate(config)
  if "evaluate" in config.stages:
    evaluate.validate(config)
  if "classifier" in config.stages and classifier_trainer.uses_vaegan(config) and not run_vaegan:
    checkpoint.frozen_directory(config.vaegan.checkpoint, vaegan_trainer.STAGE,
                                "vaegan.checkpoint")
  workdir = check_workdir(workdir)
  datasets = input_pipeline.load(config)
  merged, per_stage = {}, {}
  if run_flow:
    per_stage["flow"] = flow_trainer.train_and_evaluate(config, workdir, datasets)
  if run_vaegan:
    per_stage["vaegan"] = vaegan_trainer.train_and_evaluate(config, workdir, datasets)
  if "classifier" in config.stages:
    per_stage["classifier"] = classifier_trainer.train_and_evaluate(config, workdir, datasets)
  if "evaluate" in config.stages:
    per_stage["evaluate"] = evaluate.run_stage(config, workdir, datasets)
  for stage, out in per_stage.items():
    merged.update({k: v for k, v in out.items()
                   if k not in ("config", "versions", "device_count", "process_count",
                                "platform")})
  merged["stages"] = {s: {k: v for k, v in out.items() if k != "config"}
                      for s, out in per_stage.items()}
  return results.write(workdir, merged, config)
