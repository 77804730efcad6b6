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

Rerunning the same command resumes: a finished stage is skipped, an interrupted one continues
from its last checkpoint.
"""
import os

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from jaxflowaug import parallel
from train import attack, checkpoint, input_pipeline, results, sweep, workdir as workdirs, writer
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
  workdir = workdirs.check_workdir(workdir)
  datasets = input_pipeline.load(config)
  mesh = parallel.make_mesh()
  per_stage = {}
  for stage in STAGES:
    if needs[stage.NAME]:
      done = results.finished(workdir, stage.NAME)
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
                                "platform")})
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
    plan = [f"sweep of {len(config.sweep)} runs (variant {config.sweep_variant!r}):"]
    plan += [f"  {name}: configs/{module}.py {dict(overrides)}"
             for name, module, overrides in config.sweep]
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
    print(describe(config))
    return
  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS["config"]))
  print(f"jaxflowaug: writing to {os.path.abspath(workdir)}")
  writer.quiet_library_logs()
  parallel.initialize_distributed(config.distributed.coordinator_address,
                                  config.distributed.num_processes, config.distributed.process_id)
  logging.info("JAX process %d / %d, local devices %s, global device count %d",
               jax.process_index(), jax.process_count(), jax.local_devices(), jax.device_count())
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
  app.run(main)
