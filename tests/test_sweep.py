"""The sweep runner: runs into sub-directories, shares a flow, skips finished runs, resumes."""
import json
import os

import numpy as np
import pytest

from configs import base
from train import main, sweep

pytestmark = pytest.mark.slow  # end to end: `pytest -m 'not slow'` skips it


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep_data")
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (320, 28, 28, 1), dtype=np.uint8)
  y = (np.arange(320) % 10).astype(np.int32)
  np.savez(root / "d.npz", x_train=x[:256], y_train=y[:256], x_test=x[256:], y_test=y[256:])
  return {"data.source": f"npz:{root / 'd.npz'}", "data.data_dir": str(root / "tfds")}


def _config(source):
  runs = [("flow", "fmnist_flow", source),
          ("standard_s0", "fmnist_standard", dict(source, seed=0)),
          ("standard_s1", "fmnist_standard", dict(source, seed=1)),
          ("rla_s0", "fmnist_rla", dict(source, **{"flow.checkpoint": "@flow"}))]
  return base.sweep(runs, "smoke")


def test_expand_applies_overrides_and_resolves_run_paths(source, tmp_path):
  runs = dict(sweep.expand(_config(source), str(tmp_path)))
  assert runs["standard_s1"].seed == 1
  assert runs["rla_s0"].flow.checkpoint == os.path.join(str(tmp_path), "flow")
  assert runs["rla_s0"].classifier.batch_size == 16  # the smoke variant was applied
  bad = base.sweep([("a", "fmnist_standard", {"perturb.nope": 1})], "smoke")
  with pytest.raises(ValueError, match="perturb.nope"):
    sweep.expand(bad, str(tmp_path))


def test_sweep_skips_finished_runs_and_resumes_after_a_kill(source, tmp_path):
  real_run, calls = main.run, []

  def killed_on_third(config, workdir):
    calls.append(os.path.basename(workdir))
    if len(calls) == 3:
      raise KeyboardInterrupt  # the process dies in the middle of the sweep
    return real_run(config, workdir)

  with pytest.raises(KeyboardInterrupt):
    sweep.run(_config(source), str(tmp_path), killed_on_third)
  assert calls == ["flow", "standard_s0", "standard_s1"]

  calls.clear()
  out = sweep.run(_config(source), str(tmp_path),
                  lambda c, w: (calls.append(os.path.basename(w)), real_run(c, w))[1])
  assert calls == ["standard_s1", "rla_s0"]  # finished runs were skipped
  groups = {g["group"]: g for g in out["summary"]}
  assert groups["standard"]["n"] == 2 and groups["rla"]["n"] == 1
  accs = [r["test_accuracy"] for r in out["runs"] if r["name"].startswith("standard")]
  assert groups["standard"]["mean"] == pytest.approx(np.mean(accs))
  with open(tmp_path / "results.json") as f:
    assert [r["name"] for r in json.load(f)["runs"]] == ["flow", "standard_s0", "standard_s1",
                                                         "rla_s0"]


@pytest.mark.parametrize("module", ["quickstart", "table1", "table2_cifar100", "table3_svhn",
                                    "fig5_fmnist", "grid_cutout", "grid_mixup"])
@pytest.mark.parametrize("variant", [None, "cpu", "smoke"])
def test_every_sweep_config_expands_to_valid_runs(module, variant, tmp_path):
  import importlib

  from train.stages import classifier
  config = importlib.import_module(f"configs.{module}").get_config(variant)
  runs = sweep.expand(config, str(tmp_path))
  assert runs
  for _, child in runs:
    if "classifier" in child.stages:
      classifier.validate(child)


def test_sweep_refuses_a_finished_run_of_another_config(source, tmp_path):
  runs = [("standard_s0", "fmnist_standard", dict(source, seed=0))]
  sweep.run(base.sweep(runs, "smoke"), str(tmp_path),
            lambda c, w: (os.makedirs(w), {"config": c.to_dict(), "test_accuracy": 0.5})[1])
  changed = [("standard_s0", "fmnist_standard", dict(source, seed=0,
                                                    **{"classifier.epochs": 25.0}))]
  with pytest.raises(ValueError, match=r"sweep run 'standard_s0' in .* finished with another "
                                       r"config \(classifier\.epochs: 1\.0 \(finished run\) vs "
                                       r"25\.0\)"):
    sweep.run(base.sweep(changed, "smoke"), str(tmp_path), main.run)


def test_every_run_sets_a_field_in_each_run_and_only_selects_runs_with_their_flow(tmp_path):
  from configs import fig5_fmnist
  config = fig5_fmnist.get_config("smoke")
  config.every_run.data.source = "npz:/elsewhere/d.npz"
  config.every_run.flow.epochs = 3.0
  config.only = r"^ala_n600_s1$|_n2400_s0$"
  runs = dict(sweep.expand(config, str(tmp_path)))
  assert list(runs) == ["flow", "ala_n600_s1", "standard_n2400_s0", "rla_n2400_s0",
                        "ala_n2400_s0"]  # the flow they take, in the sweep's order
  assert {c.data.source for c in runs.values()} == {"npz:/elsewhere/d.npz"}
  assert {c.flow.epochs for c in runs.values()} == {3.0}
  assert runs["ala_n600_s1"].seed == 1 and runs["ala_n600_s1"].data.train_size == 600
  assert runs["ala_n600_s1"].data.holdout == 0  # unset every_run fields leave the run's own


def test_every_run_refuses_fields_the_sweep_sets_per_run_or_data_of_mixed_datasets(tmp_path):
  from configs import ablation_coding, fig5_fmnist
  config = fig5_fmnist.get_config("smoke")
  config.every_run.seed = 5
  with pytest.raises(ValueError, match=r"every_run.seed: the sweep sets seed per run"):
    sweep.expand(config, str(tmp_path))
  config = ablation_coding.get_config("smoke")
  config.every_run.data.holdout = 10
  with pytest.raises(ValueError, match=r"read different datasets .* --config.only"):
    sweep.expand(config, str(tmp_path))
  config.only = "^fmnist_"
  assert len(sweep.expand(config, str(tmp_path))) == 27
  config.only = "nothing"
  with pytest.raises(ValueError, match=r"matches no run of the sweep"):
    sweep.expand(config, str(tmp_path))
