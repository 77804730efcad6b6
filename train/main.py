"""Runs an experiment: `python -m train.main --config=configs/X.py[:VARIANT] [--workdir=DIR]`.

VARIANT is '' (full scale), 'cpu' (reduced, for a 2-core CPU) or 'smoke' (seconds, for tests).
`--print_config` prints every field of the resolved config and the stages that would run, and
exits without writing anything; any field is overridden with `--config.FIELD=VALUE` (e.g.
`--config.perturb.eps=0.5`, `--config.stages='("evaluate",)'`). The work directory defaults to
`runs/<config name>[_<variant>]`.

One experiment is the stages named in `config.stages` (train/stages/), run in order into one
work directory: 'flow' trains the flow, 'vaegan' the VAE-GAN of the exact-vs-approximate
ablation, 'classifier' trains and tests the classifier, 'evaluate' tests it under the attacks of
`config.evaluation`. A stage that needs a flow (or VAE-GAN) and has no `flow.checkpoint`
(`vaegan.checkpoint`) trains it into the same workdir first. `DIR/results.json` gathers the
final metrics of every stage that ran (a later stage's override an earlier one's where both
name a key). A config with a non-empty `sweep` runs each of its experiments into `DIR/<name>`
(train/sweep.py).

Rerunning the same command resumes: a finished stage is skipped (only if it finished for the
same identity, see `identity` in each stage; else the run is refused, naming the differing
fields), an interrupted one continues from its last checkpoint; SIGTERM or SIGINT saves the
step in progress and exits 128 + the signal (train/loop.py). One run at a time per workdir
(train/workdir.py). An error the user can cause ends in one line naming the fix, exit status 2
(train/errors.py).
"""
import os
from typing import Optional

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from jaxflowaug import conv, onednn, parallel
from train import (attack, checkpoint, errors, input_pipeline, results, sweep, workdir as workdirs,
                   writer)
from train.stages import classifier, evaluate, flow, vaegan

STAGES = (flow, vaegan, classifier, evaluate)
FLAGS = flags.FLAGS


def _needs(config: ml_collections.ConfigDict, spec) -> dict:
  """{stage name: whether it runs}: those named in `config.stages`, and the flow or VAE-GAN
  that a named stage reads when no checkpoint of one is given (`spec`: the classifier's
  perturbation, or None)."""
  wants_flow = (flow.NAME in config.stages or (spec is not None and spec.needs_flow)
                or (evaluate.NAME in config.stages and evaluate.uses_flow(config)))
  wants_vaegan = vaegan.NAME in config.stages or (spec is not None and spec.needs_vaegan)
  return {flow.NAME: wants_flow and not config.flow.checkpoint,
          vaegan.NAME: wants_vaegan and not config.vaegan.checkpoint,
          classifier.NAME: classifier.NAME in config.stages,
          evaluate.NAME: evaluate.NAME in config.stages}


def _finished(workdir: str, stage, identity: dict) -> Optional[dict]:
  """The results of `stage` in `workdir` if it finished for `identity` (then it is skipped),
  None if it has not finished; raises naming the differing fields if it finished for another
  identity (its results would be reported under this config)."""
  stage_dir = os.path.join(workdir, stage.NAME)
  done = results.read(stage_dir)
  if done is None:
    return None
  if checkpoint.canonical(done.get("identity")) != checkpoint.canonical(identity):
    diff = checkpoint.identity_diff(done.get("identity"), checkpoint.canonical(identity),
                                    "finished run")
    raise ValueError(
        f"The {stage.NAME} stage in {stage_dir} finished for a different experiment ({diff}); "
        f"its results do not hold for this config. Use a new --workdir, or delete {stage_dir} "
        "to redo that stage.")
  logging.info("%s stage already finished in %s; skipping (delete %s to rerun it).", stage.NAME,
               stage_dir, os.path.join(stage_dir, results.RESULTS_FILE))
  return done


def _check_evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Evaluating without training the classifier needs the workdir of a classifier run."""
  if evaluate.NAME in config.stages and classifier.NAME not in config.stages:
    directory = os.path.join(workdir, classifier.NAME, "checkpoints")
    if not os.path.isdir(directory):
      raise FileNotFoundError(
          f"--workdir={workdir} holds no trained classifier ({directory} does not exist): "
          "stages=('evaluate',) evaluates the classifier of an earlier run there; name that "
          "run's --workdir, or add 'classifier' to config.stages.")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the config's stages into `workdir` and writes `workdir/results.json`."""
  names = tuple(stage.NAME for stage in STAGES)
  unknown = [s for s in config.stages if s not in names]
  if unknown or not config.stages:
    raise ValueError(f"stages={tuple(config.stages)} must be a non-empty subset of {names}.")
  # Every config check before anything is written: a refused run leaves no workdir behind.
  spec = attack.from_perturb(config.perturb) if classifier.NAME in config.stages else None
  needs = _needs(config, spec)
  for stage in STAGES:
    if needs[stage.NAME]:
      stage.validate(config)
  if spec is not None and spec.needs_vaegan and config.vaegan.checkpoint:
    checkpoint.frozen_directory(config.vaegan.checkpoint, vaegan.NAME, "vaegan.checkpoint")
  _check_evaluate_only(config, workdir)
  with workdirs.claimed(workdir) as workdir:
    datasets = input_pipeline.load(config)
    mesh = parallel.make_mesh()
    per_stage = {}
    for stage in STAGES:
      if needs[stage.NAME]:
        done = _finished(workdir, stage, stage.identity(config, datasets))
        if done is None:
          done = stage.run(config, workdir, datasets, mesh)
          writer.summary(os.path.join(workdir, stage.NAME), config, done,
                         images={k[:-len("_png")]: v for k, v in done.items()
                                 if k.endswith("_png")})
        per_stage[stage.NAME] = done
    merged = {}
    for out in per_stage.values():
      merged.update({k: v for k, v in out.items()
                     if k not in ("config", "versions", "device_count", "process_count",
                                  "platform", "identity")})
    merged["stages"] = {s: {k: v for k, v in out.items() if k != "config"}
                        for s, out in per_stage.items()}
    return results.write(workdir, merged, config)


def default_workdir(config_arg: str) -> str:
  """runs/<config name>[_<variant>] for --config=PATH/NAME.py[:VARIANT]."""
  path, _, variant = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", f"{name}_{variant}" if variant else name)


def describe(config: ml_collections.ConfigDict) -> str:
  """The resolved config and what would run: the stages in order, or the runs of a sweep."""
  if config.get("sweep"):
    plan = sweep.describe(config)
  else:
    spec = attack.from_perturb(config.perturb) if classifier.NAME in config.stages else None
    needs = _needs(config, spec)
    plan = ["stages that would run: " + ", ".join(s.NAME for s in STAGES if needs[s.NAME])]
  return str(config) + "\n" + "\n".join(plan)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if FLAGS.print_config:
    with errors.one_line():
      print(describe(config))
    return
  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS["config"]))
  print(f"jaxflowaug: writing to {os.path.abspath(workdir)}")
  writer.quiet_library_logs()
  with errors.one_line():
    parallel.initialize_distributed(config.distributed.coordinator_address,
                                    config.distributed.num_processes,
                                    config.distributed.process_id)
    logging.info("JAX process %d / %d, local devices %s, global device count %d",
                 jax.process_index(), jax.process_count(), jax.local_devices(),
                 jax.device_count())
    if jax.default_backend() == "cpu":
      # Why the default is not oneDNN, if so (an explicit choice needs no reason, nor a build).
      why = None if os.environ.get("JAXFLOWAUG_CPU_CONV") else onednn.unavailable_reason()
      logging.info("CPU convolutions: %s (JAXFLOWAUG_CPU_CONV)%s", conv.cpu_backend(),
                   f"; oneDNN unavailable: {why}" if why else "")
    if config.get("sweep"):
      sweep.run(config, workdir, run)
      return
    out = run(config, workdir)
  if jax.process_index() == 0:
    keys = ("val_bits_per_dim", "max_reconstruction_error", "test_accuracy", "train_accuracy",
            "clean_accuracy", "steps")
    print("results:", {k: out[k] for k in keys if k in out},
          "->", os.path.join(os.path.abspath(workdir), results.RESULTS_FILE))


def define_flags() -> None:
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file, FILE.py or FILE.py:VARIANT (cpu, smoke). "
      "Override any field with --config.FIELD=VALUE; --print_config lists them all.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Work directory: checkpoints, logs, results.json; "
                      "default runs/<config name>[_<variant>]. Rerunning resumes.")
  flags.DEFINE_bool("print_config", False, "Print the resolved config and the stages that "
                    "would run, then exit without writing anything.")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=errors.parse_flags)
