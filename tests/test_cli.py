"""`python -m train.main`'s command line: the default work directory and --print_config."""
import os
import subprocess
import sys

import pytest

from train import main

pytestmark = pytest.mark.slow  # end to end: `pytest -m 'not slow'` skips it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_workdir_is_named_after_the_config_and_variant():
  assert main.default_workdir("configs/cifar10_adv.py") == os.path.join("runs", "cifar10_adv")
  assert main.default_workdir("configs/cifar10_adv.py:cpu") == os.path.join(
      "runs", "cifar10_adv_cpu")


def test_print_config_shows_fields_and_stages_and_writes_nothing(tmp_path):
  """Run from an empty directory: the default workdir would be created there."""
  out = subprocess.run(
      [sys.executable, "-m", "train.main", f"--config={ROOT}/configs/fmnist_adv.py:smoke",
       "--config.perturb.eps=0.25", "--print_config"],
      cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
      timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "eps: 0.25" in out.stdout  # the override is resolved
  assert out.stdout.rstrip().endswith("stages that would run: flow, classifier")
  assert os.listdir(tmp_path) == []
