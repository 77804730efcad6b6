"""End-to-end smoke runs of `train.main.run` on tiny synthetic datasets (npz sources)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_adv, cifar10_flow, fmnist_adv
from jaxflowaug import data, parallel
from train import attack, checkpoint, frozen, input_pipeline, main, models
from train.stages import classifier


def _npz(path, shape, num_train, num_test, num_classes=10, seed=0):
  """Images whose mean brightness encodes the class, so a classifier can learn something."""
  rng = np.random.default_rng(seed)

  def make(n):
    labels = np.arange(n) % num_classes
    base = (labels[:, None, None, None] + 0.5) / num_classes * 200 + 20
    images = np.clip(base + rng.normal(0, 25, (n,) + shape), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int32)

  x_train, y_train = make(num_train)
  x_test, y_test = make(num_test)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  return f"npz:{path}"


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
  root = tmp_path_factory.mktemp("cifar_like")
  return _npz(str(root / "data.npz"), (32, 32, 3), 320, 64), str(root / "tfds")


@pytest.fixture(scope="module")
def mnist_like(tmp_path_factory):
  root = tmp_path_factory.mktemp("mnist_like")
  return _npz(str(root / "data.npz"), (28, 28, 1), 256, 64), str(root / "tfds")


def _config(module, source):
  config = module.get_config("smoke")
  config.data.source, config.data.data_dir = source
  return config


def _frozen_flow(workdir, config, datasets):
  config = config.copy_and_resolve_references()
  config.flow.checkpoint = workdir
  return frozen.load_flow(config, workdir, datasets, parallel.make_mesh())


@pytest.fixture(scope="module")
def flow_run(cifar_like, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("flow_run"))
  config = _config(cifar10_flow, cifar_like)
  return config, workdir, main.run(config, workdir)


def test_flow_stage_writes_results_and_samples(flow_run):
  _, workdir, out = flow_run
  for key in ("val_bits_per_dim", "max_reconstruction_error", "steps", "device_count"):
    assert key in out
  assert np.isfinite(out["val_bits_per_dim"]) and 0 < out["val_bits_per_dim"] < 16
  assert out["max_reconstruction_error"] < 1e-4
  assert out["steps"] == 256 // 32  # train[:256]; the smoke variant evaluates on test[:64]
  assert os.path.exists(os.path.join(workdir, "flow", "samples.png"))
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["val_bits_per_dim"] == out["val_bits_per_dim"]


def test_flow_checkpoint_reloads_exactly_without_actnorm_reinit(flow_run, cifar_like):
  config, workdir, _ = flow_run
  datasets = input_pipeline.load(config)
  gen = _frozen_flow(workdir, config, datasets)
  flow, variables = gen.module, gen.variables
  # Re-initialising on other data would give other ActNorm parameters; the reloaded ones must
  # be the trained ones: the same reconstruction and bits/dim as the stage reported.
  x = data.to_float(jnp.asarray(datasets.eval.images[:8]))
  z, logdet = flow.apply(variables, x, method=flow.forward)
  np.testing.assert_allclose(flow.apply(variables, z, method=flow.decode), x, atol=1e-4)
  fresh = flow.init(jax.random.PRNGKey(1), x[::-1] * 0.5, method=flow.forward)
  _, fresh_logdet = flow.apply(fresh, x, method=flow.forward)
  assert not np.allclose(logdet, fresh_logdet)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "flow", "checkpoints"),
                                 models.flow_identity(config, datasets.image_shape,
                                                      datasets.num_classes))
  _, state, _ = ckpt.restore_latest()
  jax.tree.map(np.testing.assert_array_equal, state["params"], variables["params"])


def test_rerun_skips_finished_stage(flow_run):
  config, workdir, out = flow_run
  again = main.run(config, workdir)
  assert again["val_bits_per_dim"] == out["val_bits_per_dim"]


def test_rerun_with_another_config_is_refused_naming_the_fields(flow_run):
  config, workdir, _ = flow_run
  changed = config.copy_and_resolve_references()
  changed.flow.epochs, changed.seed = 2.0, 7
  with open(os.path.join(workdir, "results.json")) as f:
    before = f.read()
  with pytest.raises(ValueError, match=(
      r"The flow stage in .*/flow finished for a different experiment \(seed: 0 \(finished "
      r"run\) vs 7; training\.epochs: 1\.0 \(finished run\) vs 2\.0\); its results do not "
      r"hold for this config\. Use a new --workdir, or delete .*/flow to redo that stage\.")):
    main.run(changed, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    assert f.read() == before


def test_rerun_with_truncated_results_redoes_the_stage_from_its_checkpoint(flow_run, tmp_path,
                                                                          caplog):
  config, workdir, out = flow_run
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  path = os.path.join(copy, "flow", "results.json")
  with open(path, "r+") as f:
    f.truncate(10)
  again = main.run(config, copy)
  assert f"{path} is unreadable" in caplog.text
  assert again["val_bits_per_dim"] == out["val_bits_per_dim"]  # from the last checkpoint
  with open(path) as f:
    assert json.load(f)["val_bits_per_dim"] == out["val_bits_per_dim"]


def test_classifier_ala_uses_flow_checkpoint(flow_run, cifar_like, tmp_path):
  _, flow_dir, _ = flow_run
  config = _config(cifar10_adv, cifar_like)
  config.flow.checkpoint = flow_dir
  out = main.run(config, str(tmp_path))
  for key in ("test_accuracy", "train_accuracy", "device_count", "steps"):
    assert key in out
  assert 0.0 <= out["test_accuracy"] <= 1.0
  assert out["steps"] == 64 // 16
  assert not os.path.exists(os.path.join(tmp_path, "flow"))  # the named flow was used


def test_conditional_dense_flow_then_ala_classifier(mnist_like, tmp_path):
  config = _config(fmnist_adv, mnist_like)
  out = main.run(config, str(tmp_path))
  assert out["stages"]["flow"]["max_reconstruction_error"] < 1e-4
  assert 0.0 <= out["test_accuracy"] <= 1.0


def test_cached_latents_give_the_same_train_step(flow_run, cifar_like, tmp_path):
  _, flow_dir, _ = flow_run
  config = _config(cifar10_adv, cifar_like)
  config.classifier.augment.crop_flip = False  # exact only without pre-encoding augmentation
  datasets = input_pipeline.load(config)
  gen = _frozen_flow(flow_dir, config, datasets)
  mesh = parallel.make_mesh()
  split = datasets.train.take(np.arange(16))
  latents = frozen.encode_split(gen, split, 16, mesh)
  z, _ = gen.module.apply(gen.variables, data.to_float(jnp.asarray(split.images)),
                          method=gen.module.forward)
  np.testing.assert_allclose(latents, z, atol=1e-5)
  model = models.create_classifier(config, datasets.num_classes)
  tx = models.create_classifier_optimizer(config.classifier, 4)
  state = models.create_classifier_state(model, jax.random.PRNGKey(0), datasets.image_shape, tx)
  spec = attack.from_perturb(config.perturb)
  step = jax.jit(lambda s, b, f: classifier.train_step(
      s, b, jax.random.PRNGKey(1), f, model=model, config=config, spec=spec,
      num_classes=datasets.num_classes))
  frozen_models = frozen.Frozen(latent=gen)
  batch = {"image": jnp.asarray(split.images), "label": jnp.asarray(split.labels)}
  plain, m_plain = step(state, batch, frozen_models)
  cached, m_cached = step(state, dict(batch, latent=jnp.asarray(latents)), frozen_models)
  np.testing.assert_allclose(m_cached["loss"], m_plain["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               cached.params, plain.params)


def test_classifier_with_cached_latents_and_crop_flip_runs(flow_run, cifar_like, tmp_path):
  _, flow_dir, _ = flow_run
  config = _config(cifar10_adv, cifar_like)
  config.flow.checkpoint = flow_dir
  config.perturb.cache_latents = True
  out = main.run(config, str(tmp_path))
  assert 0.0 <= out["test_accuracy"] <= 1.0 and out["steps"] == 64 // 16


def _manual_augment(state, batch, key, frozen_models, model, config):
  """The classifier step's augmentation written out by hand: crop+flip, latent perturbation,
  cutout, mixup, each with the key `augment_batch` documents, each only when configured."""
  from jaxflowaug import augment
  aug = config.classifier.augment
  k_img, k_pert, k_cut, k_mix = jax.random.split(key, 4)
  x, y = data.to_float(batch["image"]), batch["label"]
  if aug.crop_flip:
    x = augment.random_crop_flip(k_img, x, pad=aug.crop_pad, flip=aug.flip)
  if config.perturb.method != "none":
    x = frozen.perturb_batch(state, x, y, k_pert, frozen_models, model=model,
                             spec=attack.from_perturb(config.perturb))[0]
  if aug.cutout:
    x = augment.cutout(k_cut, x, size=aug.cutout)
  labels = y
  if aug.mixup_alpha:
    x, labels = augment.mixup(k_mix, x, jax.nn.one_hot(y, 10), alpha=aug.mixup_alpha)
  return x, labels


@pytest.mark.parametrize("crop_flip,cutout,mixup,method", [
    (True, 8, 0.4, "rla"), (False, 0, 0.0, "none"), (False, 8, 0.4, "none")])
def test_combined_augmentation_applies_each_part_as_configured(crop_flip, cutout, mixup,
                                                               method):
  config = cifar10_adv.get_config("smoke")
  config.classifier.model = "_ResNetTiny"
  config.classifier.augment.update(crop_flip=crop_flip, cutout=cutout, mixup_alpha=mixup)
  config.perturb.update(method=method, norm="linf", eps=0.3)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)),
           "label": jnp.asarray(np.arange(8) % 10, jnp.int32)}
  x = data.to_float(batch["image"])
  flow = models.create_flow(config, 10)
  frozen_models = frozen.Frozen(latent=frozen.Generator(
      "flow", flow, flow.init(jax.random.PRNGKey(1), x, method=flow.forward)))
  model = models.create_classifier(config, 10)
  state = models.create_classifier_state(
      model, jax.random.PRNGKey(0), (32, 32, 3), models.create_classifier_optimizer(
          config.classifier, 4))
  key = jax.random.PRNGKey(5)
  spec = attack.from_perturb(config.perturb)
  got, labels, counts = jax.jit(lambda s, b, f: classifier.augment_batch(
      s, b, key, f, model=model, config=config, spec=spec, num_classes=10))(
          state, batch, frozen_models)
  want, want_labels = _manual_augment(state, batch, key, frozen_models, model, config)
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(labels, want_labels, atol=1e-6)
  if not (crop_flip or cutout or mixup or method != "none"):
    np.testing.assert_array_equal(got, x)  # nothing configured: the clean batch
  if cutout and not mixup:
    assert int(jnp.sum(jnp.all(got == 0, axis=-1))) >= 8 * cutout ** 2 // 4
  assert labels.ndim == (2 if mixup else 1)
  assert int(counts["nonfinite_decodes"]) == 0


def test_density_filtered_ala_trains_and_reports_the_kept_fraction(mnist_like, tmp_path):
  """A-LA with the flow's density filter (shrink, 50th percentile) in training, and a
  reject-filtered attack in the evaluate stage."""
  config = _config(fmnist_adv, mnist_like)
  config.stages = ("flow", "classifier", "evaluate")
  config.perturb.update(density_percentile=50.0, density_mode="shrink", density_shrink_steps=2)
  config.evaluation.update(num_examples=32, batch_size=16, fid_features="classifier",
                           fid_examples=32, kid_subset_size=8, kid_subsets=2, attacks=(
      ("rla", dict(method="rla", norm="linf", eps=0.5)),
      ("rla_p50", dict(method="rla", norm="linf", eps=0.5, density_percentile=50.0))))
  out = main.run(config, str(tmp_path))
  kept = out["stages"]["classifier"]["density_kept_fraction"]
  assert 0.0 <= kept <= 1.0
  attacks = out["stages"]["evaluate"]["attacks"]
  assert attacks["rla"].get("density_kept_fraction") is None
  assert 0.0 <= attacks["rla_p50"]["density_kept_fraction"] < 1.0
  assert attacks["rla_p50"]["l2"] <= attacks["rla"]["l2"] + 1e-6  # rejected rows are clean


def test_vaegan_stage_then_ala_in_its_latent(mnist_like, tmp_path):
  config = _config(fmnist_adv, mnist_like)
  config.stages = ("vaegan", "classifier")
  config.perturb.update(generator="vaegan", steps=2)
  out = main.run(config, str(tmp_path))
  assert 0.0 < out["stages"]["vaegan"]["val_reconstruction_mse"] < 1.0
  assert "flow" not in out["stages"]  # the VAE-GAN replaces the flow
  assert 0.0 <= out["test_accuracy"] <= 1.0
  assert os.path.exists(os.path.join(str(tmp_path), "vaegan", "samples.png"))
  config.vaegan.checkpoint, config.vaegan.width = str(tmp_path), 8
  with pytest.raises(ValueError, match=r"vaegan\.checkpoint=.* was trained for another vaegan"):
    main.run(config, str(tmp_path / "other"))
