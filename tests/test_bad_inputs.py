"""The catalogue of user mistakes: each one costs one clear message and writes nothing.

Every case runs `train.main.run` as `python -m train.main` would, asserts the exception's type
and message (the config field or flag to change), and that the work directory holds nothing
new afterwards: no checkpoints, no results. The README's troubleshooting table lists them.
"""
import io
import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import cifar10_adv, cifar10_flow, cifar10_pgd, cifar10_standard
from jaxflowaug import parallel
from test_train import _npz
from train import checkpoint, errors, frozen, input_pipeline, main, models, results
from train import workdir as workdirs
from train.stages import flow as flow_stage

pytestmark = pytest.mark.slow  # end to end: `pytest -m 'not slow'` skips it


@pytest.fixture(scope="module")
def good(tmp_path_factory):
  """8x8 RGB images in an npz (train 256, test 64) and a TFDS data_dir for it."""
  root = tmp_path_factory.mktemp("good")
  return _npz(str(root / "data.npz"), (8, 8, 3), 256, 64), str(root / "tfds")


def _config(module, data, **overrides):
  """The smoke config of `module` on `data` = (source, data_dir), a tiny one-level Glow, and
  `overrides` ('section__field' = value)."""
  config = module.get_config("smoke")
  config.data.source, config.data.data_dir = data
  config.data.update(train_split="train", eval_split="test", train_size=64)
  config.flow.arch.update(num_levels=1, num_steps=1)
  for name, value in overrides.items():
    *sections, field = name.split("__")
    node = config
    for section in sections:
      node = node[section]
    node[field] = value
  return config


def _tree(path):
  """Every file and folder under `path` (relative paths)."""
  return {os.path.relpath(os.path.join(d, n), path)
          for d, dirs, files in os.walk(path) for n in dirs + files}


def _refused(config, workdir, error, match):
  """Runs the experiment; asserts it raises `error` matching `match` and writes nothing (not
  even an empty workdir)."""
  workdir = str(workdir)
  before, existed = _tree(workdir), os.path.exists(workdir)
  with pytest.raises(error, match=match) as raised:
    main.run(config, workdir)
  assert _tree(workdir) == before, "a refused run must leave nothing behind"
  assert os.path.exists(workdir) == existed, "a refused run must not create its workdir"
  return str(raised.value)


def _save_flow(workdir, config, poison=False):
  """A finished flow 'workdir' (checkpoint and results.json of step 1) whose checkpoint holds a
  freshly initialised Glow for `config`'s data (its decode is exact), or with `poison` one whose
  parameters are all NaN."""
  datasets = input_pipeline.load(config)
  flow = models.create_flow(config, datasets.num_classes)
  state = jax.jit(lambda key, batch: flow_stage.create_train_state(
      flow, key, batch, flow_stage.create_optimizer(config.flow)))(
          jax.random.PRNGKey(0),
          input_pipeline.sample_rows(datasets.flow_train, 32, 0, parallel.make_mesh()))
  if poison:
    state = state.replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
  ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, "flow", "checkpoints"),
      models.flow_identity(config, datasets.image_shape, datasets.num_classes))
  ckpt.save(1, state)
  ckpt.close()
  results.write_json_atomic(os.path.join(workdir, "flow", results.RESULTS_FILE), {"steps": 1})
  return str(workdir)


@pytest.fixture(scope="module")
def flow_dir(good, tmp_path_factory):
  return _save_flow(tmp_path_factory.mktemp("flow"), _config(cifar10_adv, good))


# --- data -----------------------------------------------------------------------------------


def _folder(root, files):
  """An image tree {relative path: bytes} under root -> 'folder:root'."""
  for name, payload in files.items():
    os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
    with open(os.path.join(root, name), "wb") as f:
      f.write(payload)
  os.makedirs(root, exist_ok=True)
  return f"folder:{root}"


def _png(value):
  buffer = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def _labels_npz(path, labels, class_names):
  images = np.zeros((len(labels), 8, 8, 3), np.uint8)
  np.savez(path, x_train=images, y_train=np.asarray(labels, np.int32), x_test=images,
           y_test=np.asarray(labels, np.int32), class_names=np.asarray(list(class_names)))
  return f"npz:{path}"


@pytest.mark.parametrize("case,error,match", [
    ("missing path", FileNotFoundError, r"data\.source='npz:.*missing\.npz'.*does not exist"),
    ("empty folder", ValueError, r"data\.source='folder:.*empty'.*no image files"),
    ("corrupt image", ValueError, r"data\.source=.*cannot decode image file 'cat/1\.png'"),
    ("label out of range", ValueError, r"data\.source=.*labels .* go up to 5, out of range for "
                                       r"its class list of 3 names"),
    ("negative label", ValueError, r"data\.source=.*include -1; class labels must be "
                                   r"non-negative"),
    ("unknown dataset", ValueError, r"data\.source='tfds:no_such_dataset'.*unknown TFDS dataset"),
])
def test_bad_data_is_refused_naming_data_source(case, error, match, tmp_path):
  sources = {
      "missing path": lambda: f"npz:{tmp_path / 'missing.npz'}",
      "empty folder": lambda: _folder(str(tmp_path / "empty"), {}),
      "corrupt image": lambda: _folder(str(tmp_path / "images"), {
          "cat/0.png": _png(10), "cat/1.png": b"not a png", "dog/0.png": _png(200)}),
      "label out of range": lambda: _labels_npz(tmp_path / "labels.npz", [0, 1, 5], "abc"),
      "negative label": lambda: _labels_npz(tmp_path / "labels.npz", [0, -1, 2], "abc"),
      "unknown dataset": lambda: "tfds:no_such_dataset",
  }
  data_dir = tmp_path / "tfds"
  config = _config(cifar10_standard, (sources[case](), str(data_dir)))
  _refused(config, tmp_path / "work", error, match)
  assert not _tree(str(data_dir)), "bad data must not be half-materialised"


def test_read_only_data_dir_is_refused(tmp_path, monkeypatch):
  # Tests run as root, who may write anywhere: the check asks os.access, so refuse there.
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK and real_access(path, mode))
  data = (_npz(str(tmp_path / "d.npz"), (8, 8, 3), 64, 16), str(tmp_path / "tfds"))
  _refused(_config(cifar10_standard, data), tmp_path / "work", ValueError,
           r"data\.source=.*\(data\.data_dir=.*tfds'\): data_dir '.*tfds' is not writable "
           r".*set data\.data_dir to a writable directory")


def test_images_the_flow_cannot_take_are_refused(tmp_path):
  # Glow with 2 levels squeezes twice: H and W must be divisible by 4.
  data = (_npz(str(tmp_path / "six.npz"), (6, 6, 3), 64, 16), str(tmp_path / "tfds"))
  config = _config(cifar10_flow, data, flow__arch__num_levels=2)
  _refused(config, tmp_path / "work", ValueError,
           r"flow\.model='Glow' with flow\.arch=.* cannot model the 6x6x3 images of "
           r"data\.source=.*divisible by 2\*\*num_levels=4")


# --- flow checkpoints ------------------------------------------------------------------------


def test_flow_checkpoint_for_other_channels_is_refused(flow_dir, tmp_path):
  grey = (_npz(str(tmp_path / "grey.npz"), (8, 8, 1), 256, 64), str(tmp_path / "tfds"))
  config = _config(cifar10_adv, grey, flow__checkpoint=flow_dir)
  _refused(config, tmp_path / "work", ValueError,
           r"flow\.checkpoint='.*' was trained for another flow or data \(image_shape: "
           r"\[8, 8, 3\] \(checkpoint\) vs \[8, 8, 1\]\)")


def test_flow_checkpoint_of_another_config_is_refused(good, flow_dir, tmp_path):
  config = _config(cifar10_adv, good, flow__checkpoint=flow_dir)
  config.flow.arch.hidden_channels = 16
  _refused(config, tmp_path / "work", ValueError,
           r"flow\.checkpoint='.*' was trained for another flow or data \("
           r"arch\.hidden_channels: 8 \(checkpoint\) vs 16\)")


def test_missing_flow_checkpoint_is_refused(good, tmp_path):
  config = _config(cifar10_adv, good, flow__checkpoint=str(tmp_path / "nowhere"))
  _refused(config, tmp_path / "work", FileNotFoundError,
           r"flow\.checkpoint='.*nowhere': no such directory")


def test_missing_vaegan_checkpoint_is_refused(good, tmp_path):
  config = _config(cifar10_adv, good, perturb__generator="vaegan",
                   vaegan__checkpoint=str(tmp_path / "nowhere"))
  _refused(config, tmp_path / "work", FileNotFoundError,
           r"vaegan\.checkpoint='.*nowhere': no such directory")


@pytest.mark.parametrize("poison,limit,match", [
    (False, 1e-12, r"max \|F\^-1\(F\(x\)\) - target\| = \d.*, target x, on 32 training images "
                   r"exceeds classifier\.max_flow_reconstruction_error=1e-12"),
    (True, 1e-2, r"max \|F\^-1\(F\(x\)\) - target\| = inf, target x, on 32 training images "
                 r"exceeds classifier\.max_flow_reconstruction_error=0\.01"),
])
def test_flow_that_does_not_invert_is_refused(good, tmp_path, poison, limit, match):
  config = _config(cifar10_adv, good, classifier__max_flow_reconstruction_error=limit)
  config.flow.recon_examples = 32
  config.flow.checkpoint = _save_flow(tmp_path / "flow", config, poison=poison)
  _refused(config, tmp_path / "work", ValueError, match)


def test_unfinished_flow_is_refused_unless_allowed(good, tmp_path):
  config = _config(cifar10_adv, good)
  config.flow.checkpoint = _save_flow(tmp_path / "flow", config)
  os.remove(os.path.join(config.flow.checkpoint, "flow", results.RESULTS_FILE))  # killed run
  _refused(config, tmp_path / "work", ValueError,
           r"The flow of '.*flow' did not finish training \(no .*flow/results\.json\)\. Rerun "
           r"its flow stage to finish it \(it resumes\), or set flow\.allow_unfinished=True")
  results.write_json_atomic(os.path.join(config.flow.checkpoint, "flow", results.RESULTS_FILE),
                            {"steps": 400})  # finished, but its last checkpoint is lost
  _refused(config, tmp_path / "work", ValueError,
           r"did not finish training \(its newest restorable checkpoint is step 1 of 400\)")
  config.flow.allow_unfinished = True
  datasets = input_pipeline.load(config)
  gen = frozen.load_flow(config, str(tmp_path / "work"), datasets, parallel.make_mesh())
  assert frozen.origins(gen) == {"flow": {
      "path": os.path.join(config.flow.checkpoint, "flow", "checkpoints"), "step": 1,
      "finished": False,
      "identity": checkpoint.canonical(models.flow_identity(config, (8, 8, 3), 10))}}


def test_evaluation_of_a_workdir_without_classifier_names_the_workdir(good, tmp_path):
  config = _config(cifar10_adv, good, stages=("evaluate",))
  _refused(config, tmp_path / "nowhere", FileNotFoundError,
           r"--workdir=.*nowhere holds no trained classifier .*; name that run's --workdir, or "
           r"add 'classifier' to config\.stages")


# --- damaged files ---------------------------------------------------------------------------


def _damage(step_dir, how):
  """Damages checkpoint `step_dir` as a disk fault or a copy cut short would."""
  if how == "no meta/metadata":
    os.remove(os.path.join(step_dir, "meta", "metadata"))
  elif how == "no state/_METADATA":
    os.remove(os.path.join(step_dir, "state", "_METADATA"))
  else:  # every file of the state truncated ('truncated') or overwritten ('garbled')
    for d, _, files in os.walk(os.path.join(step_dir, "state")):
      for name in files:
        with open(os.path.join(d, name), "r+b") as f:
          if how == "truncated":
            f.truncate(os.path.getsize(f.name) // 2)
          else:
            f.write(b"garbage" * 8)


@pytest.mark.parametrize("how", ["garbled", "truncated", "no meta/metadata",
                                 "no state/_METADATA"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(how, tmp_path, caplog):
  directory = str(tmp_path / "checkpoints")
  ckpt = checkpoint.Checkpointer(directory, {"model": "m"})
  for step in (1, 2):
    ckpt.save(step, {"w": np.full(3, float(step))})
  ckpt.close()
  _damage(os.path.join(directory, "2"), how)
  # Read-only (a frozen model): the damaged step is skipped and kept.
  state, origin = checkpoint.load_frozen(directory, "flow", {"model": "m"}, "flow.checkpoint",
                                         "")
  assert origin["step"] == 1 and state["w"].tolist() == [1.0] * 3
  assert "Checkpoint 2 in " in caplog.text and "keeping it" in caplog.text
  assert os.path.isdir(os.path.join(directory, "2"))
  # Writable (a resuming stage): skipped and deleted, so that training can save step 2 again.
  ckpt = checkpoint.Checkpointer(directory, {"model": "m"})
  step, state, _ = ckpt.restore_latest({"w": np.zeros(3)})
  assert step == 1 and state["w"].tolist() == [1.0] * 3 and ckpt.latest_step() == 1
  ckpt.save(2, state)
  ckpt.close()
  # None restores: one error naming the directory to delete.
  _damage(os.path.join(directory, "1"), how)
  _damage(os.path.join(directory, "2"), how)
  with pytest.raises(ValueError, match=rf"No checkpoint in {directory} restores \(steps \[2, "
                                       rf"1\]: damaged, see the warnings above\)\. Delete "
                                       rf"{directory} to start that stage over\."):
    checkpoint.Checkpointer(directory, {"model": "m"}).restore_latest({"w": np.zeros(3)})


# --- config values ---------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,match", [
    ("perturb__method", "magic", r"perturb\.method='magic' is unknown"),
    ("perturb__norm", "l3", r"perturb\.norm='l3' is unknown; use one of \('linf', 'l2'\)"),
    ("classifier__optimizer", "rmsprop", r"classifier\.optimizer='rmsprop' is unknown"),
    ("perturb__eps", -0.1, r"perturb\.eps=-0\.1 must be a finite number >= 0"),
    ("perturb__step_size", 0.0, r"perturb\.step_size=0\.0 must be a finite number > 0"),
    ("perturb__steps", 0, r"perturb\.steps must be a Python int >= 1"),
    ("classifier__max_flow_reconstruction_error", 0.0,
     r"classifier\.max_flow_reconstruction_error=0\.0 must be > 0"),
    ("classifier__checkpoint_every", 0, r"classifier\.checkpoint_every=0 must be >= 1"),
    ("flow__model", "RealNVP", r"flow\.model='RealNVP' is unknown"),
    ("flow__arch__coupling", "cubic", r"flow\.arch=.* does not fit flow\.model='Glow': "
                                      r"coupling='cubic'"),
    ("flow__learning_rate", 0.0, r"flow\.learning_rate=0\.0 must be > 0"),
    ("perturb__generator", "gan", r"perturb\.generator='gan' is unknown"),
    ("perturb__density_percentile", 100.0, r"perturb\.density_percentile=100\.0 must be in"),
    ("perturb__density_mode", "clip", r"perturb\.density_mode='clip': use one of"),
])
def test_bad_config_values_are_refused_at_startup(good, tmp_path, field, value, match):
  _refused(_config(cifar10_adv, good, **{field: value}), tmp_path / "work", ValueError, match)


@pytest.mark.parametrize("module,field", [
    (cifar10_standard, "classifier.batch_size"),
    (cifar10_standard, "classifier.eval_batch_size"),
    (cifar10_flow, "flow.batch_size"),
])
def test_batch_size_not_divisible_by_device_count_is_refused(good, tmp_path, monkeypatch,
                                                            module, field):
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  config = _config(module, good, **{field.replace(".", "__"): 12})
  _refused(config, tmp_path / "work", ValueError,
           rf"{field}=12 must be a positive multiple of the device count \(8\); set {field} to "
           "a multiple of 8")


# --- work directories ------------------------------------------------------------------------


def test_workdir_of_another_experiment_is_refused(good, tmp_path):
  workdir = tmp_path / "work"
  theirs = _config(cifar10_standard, good)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "classifier", "checkpoints"),
                                 models.classifier_identity(theirs))
  ckpt.save(2, {"w": np.zeros(2)}, {"curves": [], "nonfinite_decodes": 0})
  ckpt.close()
  message = _refused(_config(cifar10_pgd, good), workdir, ValueError,
                     r"holds checkpoints of a different experiment")
  assert "perturb.method: 'none' (checkpoint) vs 'pgd'" in message
  assert "perturb.eps: 1.0 (checkpoint) vs 0.03" in message
  assert "Use a new --workdir, or delete" in message


def test_workdir_that_cannot_be_created_is_refused(good, tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match=r"--workdir=.*file/work cannot be created \(Not a "
                                       r"directory\); choose a writable directory"):
    main.run(_config(cifar10_standard, good), str(tmp_path / "file" / "work"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
def test_read_only_workdir_is_refused(good, tmp_path):
  workdir = tmp_path / "work"
  workdir.mkdir(mode=0o500)
  _refused(_config(cifar10_standard, good), workdir, ValueError,
           r"--workdir=.* is not writable; choose a writable directory")


def _lock(workdir, pid):
  """A lock of `workdir` as a run of `pid` on this host leaves it."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdirs.LOCK_FILE), "w") as f:
    json.dump({"pid": pid, "host": socket.gethostname(), "started": "today",
               "command": "python -m train.main ..."}, f)


def test_workdir_in_use_by_another_run_is_refused(good, tmp_path):
  workdir = str(tmp_path / "work")
  _lock(workdir, os.getppid())  # a live process
  message = _refused(_config(cifar10_standard, good), workdir, ValueError,
                     rf"--workdir=.*work is in use by another run \(pid {os.getppid()} on host "
                     rf"{socket.gethostname()}, started today: python -m train\.main \.\.\.\)\. "
                     r"Wait for it to finish or stop it, or use another --workdir")
  assert f"delete {os.path.join(workdir, workdirs.LOCK_FILE)}" in message


def test_lock_of_a_killed_run_is_taken_over_and_released(tmp_path):
  workdir = str(tmp_path / "work")
  dead = subprocess.Popen(["true"])
  dead.wait()
  _lock(workdir, dead.pid)
  with workdirs.claimed(workdir):
    with open(os.path.join(workdir, workdirs.LOCK_FILE)) as f:
      assert json.load(f)["pid"] == os.getpid()
    with pytest.raises(ValueError, match="is in use by another run"):
      with workdirs.claimed(workdir):
        pass
  assert os.listdir(workdir) == []


def test_speed_only_settings_are_not_part_of_an_identity(good):
  """A flow trained with one remat policy, or a classifier with unrolled PGD, is the same run."""
  config = _config(cifar10_pgd, good)
  other = config.copy_and_resolve_references()
  with other.unlocked():
    other.flow.arch.remat = "full"
    other.perturb.unroll = not config.perturb.unroll
  assert models.flow_identity(other, (32, 32, 3), 10) == models.flow_identity(
      config, (32, 32, 3), 10)
  assert models.classifier_identity(other) == models.classifier_identity(config)


# --- how the programs end ----------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("args,match", [
    (("train.main", "--config=configs/fmnist_adv.py:smoke", "--config.perturb.epss=1"),
     r"^error: --config\.perturb\.epss: configs/fmnist_adv\.py has no field 'perturb\.epss'; "
     r"did you mean perturb\.eps\?$"),
    (("train.main", "--config=configs/fmnist_adv.py:smoke", "--config.perturb.method=magic"),
     r"^error: perturb\.method='magic' is unknown"),
    (("train.report", "nowhere"), r"^error: RUNS_DIR='nowhere' is not a directory"),
])
def test_user_errors_end_in_one_line_with_status_2(args, match, tmp_path):
  workdir = tmp_path / "work"
  extra = (f"--workdir={workdir}",) if args[0] == "train.main" else ()
  proc = subprocess.run([sys.executable, "-m", *args, *extra], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert re.search(match, proc.stderr.strip().splitlines()[-1]), proc.stderr[-3000:]
  assert not workdir.exists()


def test_library_errors_keep_their_traceback():
  """A ValueError raised inside a library (a bug, ours or theirs) is not one of our messages."""
  with pytest.raises(ValueError) as raised:
    jax.make_mesh((jax.device_count() + 1,), ("data",))
  assert not errors.is_user_error(raised.value)
  with pytest.raises(ValueError) as raised:
    main.run(_config(cifar10_standard, ("npz:", ""), stages=()), "unused")
  assert errors.is_user_error(raised.value)
