"""The evaluation stage: attacks, perturbation sizes, feature distances and figures."""
import functools
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar10_standard
from jaxflowaug import data, fid, metrics, models, parallel, perturb
from test_bad_inputs import _save_flow
from train import attack, frozen, input_pipeline, main
from train import models as run_models
from train.stages import evaluate

pytestmark = pytest.mark.slow  # end to end: `pytest -m 'not slow'` skips it

# 8x8 RGB images, a one-step Glow and SmallCNN (8 -> 4 -> 2 -> 1): compiles in seconds.
SHAPE = (8, 8, 3)


def _config(source, attacks):
  config = cifar10_standard.get_config("smoke")
  config.data.source, config.data.data_dir = source
  config.classifier.model = "SmallCNN"
  config.classifier.arch = dict(mean=(0.0,) * 3, std=(1.0,) * 3)
  config.classifier.epochs = 0.5
  config.flow.arch.update(num_levels=1, num_steps=1)
  config.evaluation.update(num_examples=48, batch_size=32, attacks=attacks,
                           fid_features="classifier", fid_examples=100, kid_subsets=5,
                           grid_examples=4)
  return config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny npz source whose mean brightness encodes the class (4 classes)."""
  root = tmp_path_factory.mktemp("tiny")
  rng = np.random.default_rng(0)
  splits = {}
  for split, n in (("train", 256), ("test", 64)):
    labels = np.arange(n) % 4
    images = np.clip(labels[:, None, None, None] * 50 + 50 + rng.normal(0, 20, (n,) + SHAPE),
                     0, 255).astype(np.uint8)
    splits.update({f"x_{split}": images, f"y_{split}": labels.astype(np.int32)})
  np.savez(root / "data.npz", **splits)
  return f"npz:{root / 'data.npz'}", str(root / "tfds")


@pytest.fixture(scope="module")
def flow_dir(tiny, tmp_path_factory):
  """A finished flow stage holding an initialised (untrained) smoke Glow: its decode is exact."""
  return _save_flow(tmp_path_factory.mktemp("flow"), _config(tiny, ()))


ATTACKS = (
    ("rla", dict(method="rla", norm="linf", eps=0.25)),
    ("ala", dict(method="ala", norm="l2", eps=1.0, step_size=0.5, steps=2)),
    ("pgd", dict(method="pgd", norm="linf", eps=0.03, step_size=0.008, steps=2)),
    # eps = 0 shares each compiled step with the attack above it of the same method.
    ("ala_zero", dict(method="ala", norm="l2", eps=0.0, step_size=0.5, steps=2)),
    ("pgd_zero", dict(method="pgd", norm="linf", eps=0.0, step_size=0.008, steps=2)),
)


@pytest.fixture(scope="module")
def evaluated(tiny, flow_dir, tmp_path_factory):
  """classifier + evaluate stages of one experiment, the flow taken from `flow_dir`."""
  config = _config(tiny, ATTACKS)
  config.stages = ("classifier", "evaluate")
  config.flow.checkpoint = flow_dir
  workdir = str(tmp_path_factory.mktemp("run"))
  out = main.run(config, workdir)
  return config, workdir, out


def test_evaluate_stage_writes_results_and_figures(evaluated):
  config, workdir, merged = evaluated
  out = merged["stages"]["evaluate"]
  assert out["num_examples"] == 48 and out["fid_features"] == "classifier"
  assert out["fid_reference_examples"] == 100
  assert set(out["attacks"]) == {name for name, _ in ATTACKS}
  for name, row in out["attacks"].items():
    for key in ("accuracy", "relative_drop", "l2", "linf", "fid_classifier_features",
                "kid_classifier_features", "kid_classifier_features_std", "label", "spec"):
      assert key in row, (name, key)
    assert "fid" not in row and "kid" not in row  # classifier features are never called FID
    if out["clean_accuracy"] > 0:
      np.testing.assert_allclose(
          row["relative_drop"],
          100 * (out["clean_accuracy"] - row["accuracy"]) / out["clean_accuracy"])
    assert row["nonfinite_decodes"] == 0
  attacks = out["attacks"]
  assert attacks["rla"]["label"] == "R-LA linf ε 0.25"
  assert attacks["ala"]["label"] == "A-LA l2 ε 1 α 0.5 k 2"
  np.testing.assert_allclose(attacks["pgd"]["linf"], 0.03, rtol=1e-5)  # sign steps reach eps
  assert attacks["rla"]["l2"] > attacks["pgd"]["l2"]  # latent noise is large in pixels
  assert attacks["pgd"]["fid_classifier_features"] >= 0.0
  for key in ("perturbations_png", "curves_png"):
    assert out[key] == os.path.join(workdir, "evaluate", os.path.basename(out[key]))
    with open(out[key], "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert merged["clean_accuracy"] == out["clean_accuracy"]  # merged into the run's results
  assert main.run(config, workdir)["attacks"] == merged["attacks"]  # rerun skips


def test_zero_eps_attacks_keep_clean_accuracy(evaluated):
  out = evaluated[2]["stages"]["evaluate"]
  for name in ("ala_zero", "pgd_zero"):
    assert out["attacks"][name]["accuracy"] == out["clean_accuracy"], name
    assert out["attacks"][name]["relative_drop"] in (0.0, None)
  assert out["attacks"]["pgd_zero"]["l2"] == 0.0
  assert out["attacks"]["ala_zero"]["linf"] < 1e-4  # F^-1(F(x)) = x to float32 round-off


def _evaluate(config, workdir):
  return evaluate.run(config, workdir, input_pipeline.load(config), parallel.make_mesh())


def test_latent_attack_without_a_flow_names_flow_checkpoint(evaluated, tmp_path):
  config = evaluated[0]
  config = _config((config.data.source, config.data.data_dir), ATTACKS[:1])
  with pytest.raises(FileNotFoundError, match="flow.checkpoint"):
    _evaluate(config, str(tmp_path))


def test_classifier_checkpoint_of_another_config_is_refused(evaluated, tmp_path):
  config, workdir, _ = evaluated
  config = _config((config.data.source, config.data.data_dir), ATTACKS[2:3])
  config.classifier.learning_rate = 0.5
  shutil.copytree(os.path.join(workdir, "classifier"), tmp_path / "classifier")
  with pytest.raises(ValueError, match="different experiment"):
    _evaluate(config, str(tmp_path))


def _small_cnn_state(channels=3):
  model = models.SmallCNN(num_classes=4, mean=(0.0,) * channels, std=(1.0,) * channels)
  state = jax.jit(lambda key: run_models.create_classifier_state(
      model, key, SHAPE[:2] + (channels,), optax.sgd(0.1)))(jax.random.PRNGKey(0))
  return model, state


def test_authors_decode_uses_the_same_flow_checkpoint_and_changes_table5_sizes(tiny, flow_dir):
  """One flow checkpoint, read with flow.arch.authors_decode off and on: both pass the
  invertibility guard (each against its own decode's target), and the authors' contrast
  compression 0.05 + 0.9 x changes the R-LA perturbation sizes of Table 5."""
  model, state = _small_cnn_state()
  mesh = parallel.make_mesh()
  spec = attack.Spec(perturb.Attack("rla", "linf", eps=0.25))
  step_fn = jax.jit(lambda *a, spec: evaluate.attack_step(*a, model=model, spec=spec),
                    static_argnames="spec")
  sizes = {}
  for authors in (False, True):
    config = _config(tiny, ())
    config.flow.checkpoint = flow_dir
    config.flow.arch.authors_decode = authors
    datasets = input_pipeline.load(config)
    gen = frozen.load_flow(config, flow_dir, datasets, mesh)
    assert gen.module.authors_decode == authors
    batch = input_pipeline.sample_rows(datasets.eval, 16, 0, mesh)
    x = data.to_float(batch["image"])
    np.testing.assert_allclose(gen.decode(gen.encode(x, None), None),
                               0.05 + 0.9 * (255 * x + 0.5) / 256 if authors else x, atol=1e-4)
    out = evaluate.run_attack(step_fn, state, datasets.eval, spec, jax.random.PRNGKey(0),
                              frozen.Frozen(latent=gen), 32, mesh)
    sizes[authors] = evaluate.summarize_attack(1.0, out)
  assert abs(sizes[True]["l2"] - sizes[False]["l2"]) > 0.05 * sizes[False]["l2"]


def test_table5_norms_match_hand_computed_values():
  """One PGD step of size eps from x in [0.25, 0.75] never meets the [0, 1] box, so every
  example moves by exactly eps: ||d||_2 = eps for l2 (a normalised gradient step) and
  ||d||_inf = eps for linf (a sign step)."""
  model, state = _small_cnn_state()
  rng = np.random.default_rng(1)
  split = input_pipeline.Split(rng.integers(64, 192, (12,) + SHAPE).astype(np.uint8),
                               np.arange(12, dtype=np.int32) % 4)
  mesh = parallel.make_mesh()
  step_fn = jax.jit(lambda *a, spec: evaluate.attack_step(*a, model=model, spec=spec),
                    static_argnames="spec")
  none = frozen.Frozen()

  def pgd(norm, eps):
    spec = attack.Spec(perturb.Attack("pgd", norm, eps=eps, step_size=eps, steps=1,
                                      random_start=False, labels="true"))
    return evaluate.run_attack(step_fn, state, split, spec, jax.random.PRNGKey(0), none, 8, mesh)

  out = pgd("l2", 0.1)
  assert out["l2"].shape == (12,) and out["perturbed"].shape == (12,) + SHAPE
  np.testing.assert_allclose(out["l2"], 0.1, rtol=1e-4)
  assert np.all(out["linf"] <= 0.1 + 1e-6)
  out = pgd("linf", 0.05)
  np.testing.assert_allclose(out["linf"], 0.05, rtol=1e-4)
  summary = evaluate.summarize_attack(0.5, out)
  np.testing.assert_allclose(summary["linf"], 0.05, rtol=1e-4)
  np.testing.assert_allclose(summary["l2"], np.mean(out["l2"]))
  # Hand-made per-example results: accuracy 1/4, relative drop 100 (0.5 - 0.25) / 0.5 = 50 %.
  hand = {"correct": np.array([True, False, False, False]), "l2": np.array([3.0, 4.0, 0.0, 1.0]),
          "linf": np.array([0.5, 0.1, 0.0, 0.2])}
  assert evaluate.summarize_attack(0.5, hand) == {"accuracy": 0.25, "relative_drop": 50.0,
                                                  "l2": 2.0, "linf": 0.2}
  assert evaluate.summarize_attack(0.0, hand)["relative_drop"] is None


@pytest.mark.parametrize("name,kwargs,dim", [
    ("SmallCNN", dict(mean=(0.0,) * 3, std=(1.0,) * 3), 100),
    ("_ResNetTiny", dict(), 16),
])
def test_penultimate_features_feed_the_last_layer(name, kwargs, dim):
  model = models.get(name, num_classes=4, **kwargs)
  x = jax.random.uniform(jax.random.PRNGKey(2), (6,) + SHAPE)
  variables = jax.jit(lambda key: model.init(key, x, train=False))(jax.random.PRNGKey(0))
  feats = jax.jit(functools.partial(fid.penultimate_features, model))(variables, x)
  assert feats.shape == (6, dim) and feats.dtype == jnp.float32
  last = sorted(k for k in variables["params"] if k.startswith("Dense"))[-1]
  dense = variables["params"][last]
  np.testing.assert_allclose(feats @ dense["kernel"] + dense["bias"],
                             model.apply(variables, x, train=False), rtol=1e-4, atol=1e-5)
  assert abs(metrics.fid(feats, feats)) < 1e-6


def test_feature_extractor_classifier_path():
  """Classifier features of uint8 images through the batched, padded path = a direct call."""
  model, state = _small_cnn_state()
  config = cifar10_standard.get_config("smoke")
  config.evaluation.fid_features = "classifier"
  kind, suffix, extract = evaluate.feature_extractor(config, model, state, parallel.make_mesh(), 8)
  assert (kind, suffix) == ("classifier", "_classifier_features")
  images = np.random.default_rng(3).integers(0, 256, (11,) + SHAPE).astype(np.uint8)
  feats = extract(images)
  direct = fid.penultimate_features(model, {"params": state.params,
                                             "batch_stats": state.batch_stats},
                                     data.to_float(jnp.asarray(images)))
  np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-6)
  scores = evaluate.distribution_distance(feats, feats, config.evaluation, suffix)
  assert abs(scores["fid_classifier_features"]) < 1e-6
  assert set(scores) == {"fid_classifier_features", "kid_classifier_features",
                         "kid_classifier_features_std"}


def test_cached_features_compute_each_image_set_once(tmp_path):
  """Same images and tag: read back, not recomputed; other images, another tag or a garbled
  file: recomputed; an unwritable directory only loses the cache."""
  calls = []

  def features(images):
    calls.append(len(images))
    return images.reshape(len(images), -1).astype(np.float64) * 2.0

  images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 1)).astype(np.uint8)
  cache = str(tmp_path / "cache")
  first = evaluate.cached_features(features, images, cache, "w1")
  again = evaluate.cached_features(features, images, cache, "w1")
  np.testing.assert_array_equal(first, again)
  np.testing.assert_array_equal(first, features(images))
  assert calls == [5, 5]  # the second call read the file (the third count is the check above)
  other = images.copy()
  other[0, 0, 0, 0] ^= 1
  evaluate.cached_features(features, other, cache, "w1")
  evaluate.cached_features(features, images, cache, "w2")
  assert calls == [5, 5, 5, 5]
  for path in (tmp_path / "cache").iterdir():
    path.write_bytes(b"garbled")
  np.testing.assert_array_equal(evaluate.cached_features(features, images, cache, "w1"), first)
  assert calls == [5, 5, 5, 5, 5]
  blocked = tmp_path / "file"
  blocked.write_text("")
  np.testing.assert_array_equal(
      evaluate.cached_features(features, images, str(blocked / "sub"), "w1"), first)


@pytest.mark.skipif(not fid.inception_available(),
                    reason="optional: pip install -r requirements-fid.txt")
def test_inception_features():
  images = np.random.default_rng(4).integers(0, 256, (3, 8, 8, 1)).astype(np.uint8)
  feats = fid.InceptionFeatures(batch_size=2)(images)
  assert feats.shape == (3, 2048) and np.all(np.isfinite(feats))


ENTRY = r"evaluation\.attacks\['x'\]"


@pytest.mark.parametrize("field,value,match", [
    ("attacks", (("x", dict(method="magic", norm="l2", eps=1.0)),), ENTRY + ".*method='magic'"),
    ("attacks", (("x", dict(method="ala", norm="l2", eps=1.0)),), ENTRY + ".*step_size"),
    ("attacks", (("x", dict(method="rla", norm="l3", eps=1.0)),), ENTRY + ".*norm='l3'"),
    ("attacks", (("x", dict(method="rla", norm="l2", eps=-1.0)),), ENTRY + ".*eps=-1.0"),
    ("attacks", (("x", dict(method="rla", norm="l2", eps=1.0, size=2)),), ENTRY + ".*unknown"),
    ("attacks", (("x", dict(method="rla", norm="l2", eps=1.0)),) * 2, ENTRY + ".*unique"),
    ("fid_features", "vgg", "evaluation.fid_features"),
    ("batch_size", 0, "evaluation.batch_size"),
    ("num_examples", -1, "evaluation.num_examples"),
])
def test_bad_evaluation_config_is_refused(field, value, match):
  config = cifar10_standard.get_config("smoke")
  config.evaluation[field] = value
  with pytest.raises(ValueError, match=match):
    evaluate.validate(config)
