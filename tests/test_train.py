"""End-to-end smoke runs of `train.main.run` on tiny synthetic datasets (npz sources)."""
import json
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_adv, cifar10_flow, fmnist_adv, fmnist_standard
from jaxflowaug import data, parallel
from train import attack, checkpoint, frozen, input_pipeline, main, models, results
from train.stages import classifier

pytestmark = pytest.mark.slow  # end to end: `pytest -m 'not slow'` skips it


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


def test_flow_stage_writes_results_and_samples(flow_run, cifar_like):
  _, workdir, out = flow_run
  for key in ("val_bits_per_dim", "max_reconstruction_error", "steps", "device_count"):
    assert key in out
  # A uniform model of the data's 8-bit values over their range [lo, hi] (the best
  # data-independent baseline a flow must beat) has log2(hi - lo + 1) bits/dim; the flow, which
  # can learn the class-dependent brightness and the pixels' spread, must end below it.
  images = np.load(cifar_like[0][len("npz:"):])["x_test"]
  uniform = np.log2(int(images.max()) - int(images.min()) + 1)
  assert out["val_bits_per_dim"] < uniform - 0.1, (out["val_bits_per_dim"], uniform)
  assert out["max_reconstruction_error"] < 1e-4
  assert out["steps"] == 256 // 32  # 256 training images; the smoke variant evaluates on 64
  assert os.path.exists(os.path.join(workdir, "flow", "samples.png"))
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["val_bits_per_dim"] == out["val_bits_per_dim"]
  tags = _event_tags(os.path.join(workdir, "flow"))  # what TensorBoard shows
  assert {"train/bits_per_dim", "figures/samples", "config/text_summary",
          "final/val_bits_per_dim"} <= tags


def _event_tags(logdir):
  """The summary tags in the TensorBoard event files under `logdir`."""
  from tensorboardX.proto import event_pb2
  tags = set()
  for root, _, files in os.walk(logdir):
    for name in files:
      if name.startswith("events."):
        with open(os.path.join(root, name), "rb") as f:
          data = f.read()
        while data:  # TFRecords: 8-byte length, 4-byte CRC, payload, 4-byte CRC
          length = int.from_bytes(data[:8], "little")
          event = event_pb2.Event.FromString(data[12:12 + length])
          tags.update(v.tag for v in event.summary.value)
          data = data[16 + length:]
  return tags


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


def test_results_name_the_code_they_ran_under(flow_run, tmp_path):
  _, _, out = flow_run
  assert out["versions"]["jaxflowaug"] == results.code_version(
      os.path.dirname(os.path.dirname(os.path.abspath(results.__file__))))
  assert results.code_version(str(tmp_path)) is None  # not a checkout: nothing to name
  git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t",
                                   "-c", "user.email=t@t", *a], check=True, capture_output=True)
  (tmp_path / "f.py").write_text("a = 1\n")
  git("init", "-q")
  git("add", "f.py")
  git("commit", "-qm", "c")
  head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                        text=True, check=True).stdout.strip()
  assert results.code_version(str(tmp_path)) == {"commit": head, "dirty": False}
  (tmp_path / "f.py").write_text("a = 2\n")
  assert results.code_version(str(tmp_path)) == {"commit": head, "dirty": True}


def test_rerun_skips_finished_stage(flow_run):
  config, workdir, out = flow_run
  again = main.run(config, workdir)
  assert again["val_bits_per_dim"] == out["val_bits_per_dim"]


def test_classifier_stage_learns_the_brightness_coded_classes(mnist_like, tmp_path):
  """The CNN trained on 256 images whose brightness encodes the class (10 classes) must reach
  test accuracy far above chance (0.1): a broken step, loss or data path does not."""
  config = _config(fmnist_standard, mnist_like)
  config.data.train_size = 0
  config.classifier.update(epochs=15.0, eval_every_epochs=15.0)
  out = main.run(config, str(tmp_path))
  assert out["test_accuracy"] > 0.5, out["test_accuracy"]


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
  assert np.isfinite(out["test_loss"]) and out["steps"] == 64 // 16
  assert not os.path.exists(os.path.join(tmp_path, "flow"))  # the named flow was used


def test_conditional_dense_flow_then_ala_classifier(mnist_like, tmp_path):
  config = _config(fmnist_adv, mnist_like)
  out = main.run(config, str(tmp_path))
  assert out["stages"]["flow"]["max_reconstruction_error"] < 1e-4
  assert np.isfinite(out["test_loss"])


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
  assert np.isfinite(out["test_loss"]) and out["steps"] == 64 // 16


def _step_parts(config, batch_size=8, seed=0):
  """A tiny classifier state, an initialised smoke Glow as the frozen flow and a random batch."""
  config.classifier.model = "_ResNetTiny"
  rng = np.random.default_rng(seed)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)),
           "label": jnp.asarray(np.arange(batch_size) % 10, jnp.int32)}
  flow = models.create_flow(config, 10)
  variables = flow.init(jax.random.PRNGKey(1), data.to_float(batch["image"]), method=flow.forward)
  frozen_models = frozen.Frozen(latent=frozen.Generator("flow", flow, variables))
  model = models.create_classifier(config, 10)
  state = models.create_classifier_state(
      model, jax.random.PRNGKey(0), (32, 32, 3), models.create_classifier_optimizer(
          config.classifier, 4))
  return model, state, frozen_models, batch


def _augment(config, state, batch, key, frozen_models, model):
  spec = attack.from_perturb(config.perturb)
  return jax.jit(lambda s, b, f: classifier.augment_batch(
      s, b, key, f, model=model, config=config, spec=spec, num_classes=10))(
          state, batch, frozen_models)


def _manual_augment(state, batch, key, frozen_models, model, config):
  """The classifier step's augmentation written out by hand, independently of perturb.py's
  attack code: crop+flip, A-LA (l_inf PGD from a uniform start in the flow's latent, targets the
  classifier's clean predictions, BatchNorm in train mode), cutout, mixup, with the keys that
  `augment_batch` documents."""
  from jaxflowaug import augment
  aug, p = config.classifier.augment, config.perturb
  k_img, k_pert, k_cut, k_mix = jax.random.split(key, 4)
  x, y = data.to_float(batch["image"]), batch["label"]
  if aug.crop_flip:
    x = augment.random_crop_flip(k_img, x, pad=aug.crop_pad, flip=aug.flip)
  if p.method == "ala":
    gen = frozen_models.latent
    logits = lambda images: model.apply({"params": state.params, "batch_stats": state.batch_stats},
                                        images, train=True, mutable=["batch_stats"])[0]
    target = jnp.argmax(logits(x), -1)
    attack_key, _ = jax.random.split(k_pert)
    z = gen.encode(x, y)
    delta = p.eps * jax.random.uniform(attack_key, z.shape, minval=-1.0, maxval=1.0)
    loss = lambda d: jnp.sum(-jnp.take_along_axis(
        jax.nn.log_softmax(logits(jnp.clip(gen.decode(z + d, y), -1e3, 1e3))), target[:, None],
        -1))
    for _ in range(p.steps):
      delta = jnp.clip(delta + p.step_size * jnp.sign(jax.grad(loss)(delta)), -p.eps, p.eps)
    x = jnp.clip(gen.decode(z + delta, y), 0.0, 1.0)
  if aug.cutout:
    x = augment.cutout(k_cut, x, size=aug.cutout)
  labels = y
  if aug.mixup_alpha:
    x, labels = augment.mixup(k_mix, x, jax.nn.one_hot(y, 10), alpha=aug.mixup_alpha)
  return x, labels


@pytest.mark.parametrize("crop_flip,cutout,mixup,method", [
    (True, 8, 0.4, "ala"), (False, 0, 0.0, "none"), (False, 8, 0.4, "none")])
def test_combined_augmentation_applies_each_part_as_configured(crop_flip, cutout, mixup,
                                                               method):
  config = cifar10_adv.get_config("smoke")
  config.classifier.augment.update(crop_flip=crop_flip, cutout=cutout, mixup_alpha=mixup)
  config.perturb.update(method=method, norm="linf", eps=0.3, step_size=0.1, steps=2)
  model, state, frozen_models, batch = _step_parts(config)
  key = jax.random.PRNGKey(5)
  got, labels, counts, _ = _augment(config, state, batch, key, frozen_models, model)
  want, want_labels = _manual_augment(state, batch, key, frozen_models, model, config)
  np.testing.assert_allclose(got, want, atol=1e-4)
  np.testing.assert_allclose(labels, want_labels, atol=1e-6)
  if not (crop_flip or cutout or mixup or method != "none"):
    np.testing.assert_array_equal(got, data.to_float(batch["image"]))  # the clean batch
  if cutout and not mixup:
    assert int(jnp.sum(jnp.all(got == 0, axis=-1))) >= 8 * cutout ** 2 // 4
  assert labels.ndim == (2 if mixup else 1)
  assert int(counts["nonfinite_decodes"]) == 0


def _pgd_config(**perturb):
  config = cifar10_adv.get_config("smoke")
  config.classifier.augment.crop_flip = False
  config.perturb.update(method="pgd", norm="linf", eps=0.1, step_size=0.05, steps=2)
  config.perturb.update(perturb)
  return config


def test_attack_labels_pred_targets_the_classifiers_own_predictions():
  """'pred' attacks the clean-batch argmax: it equals 'true' on a batch relabelled with those
  predictions, and differs from 'true' on the real labels (an untrained net gets them wrong)."""
  config = _pgd_config(labels="pred")
  model, state, frozen_models, batch = _step_parts(config, batch_size=16)
  key = jax.random.PRNGKey(3)
  pred, *_ = _augment(config, state, batch, key, frozen_models, model)
  predicted = jnp.argmax(models.classify(model, state.params, state.batch_stats,
                                         data.to_float(batch["image"]), train=True)[0], -1)
  assert not np.array_equal(predicted, batch["label"])
  config.perturb.labels = "true"
  true, *_ = _augment(config, state, batch, key, frozen_models, model)
  relabelled, *_ = _augment(config, state, dict(batch, label=predicted), key, frozen_models,
                            model)
  np.testing.assert_allclose(pred, relabelled, atol=1e-6)
  assert not np.allclose(pred, true)


def test_bn_update_keep_carries_every_attack_pass_into_the_training_step():
  """'keep': the running statistics after a step reflect the clean pass and the k attack passes
  before the training forward; 'discard' (and R-LA, which calls no classifier): only the
  training forward, i.e. one BatchNorm update from the state's own statistics."""
  stats = {}
  for name, perturb in (("keep", dict(bn_update="keep")), ("discard", dict(bn_update="discard")),
                        ("rla", dict(method="rla", bn_update="keep"))):
    config = _pgd_config(**perturb)
    model, state, frozen_models, batch = _step_parts(config, batch_size=16)
    spec = attack.from_perturb(config.perturb)
    new, _ = jax.jit(lambda s, b, f: classifier.train_step(
        s, b, jax.random.PRNGKey(4), f, model=model, config=config, spec=spec,
        num_classes=10))(state, batch, frozen_models)
    x, *_, before = _augment(config, state, batch,
                             jax.random.fold_in(jax.random.PRNGKey(4), state.step), frozen_models,
                             model)
    one_update = models.classify(model, state.params, before, x, train=True)[1]
    stats[name] = (new.batch_stats, one_update, before, state.batch_stats)
  keep, discard, rla = stats["keep"], stats["discard"], stats["rla"]
  for new, one_update, _, _ in (discard, rla):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new,
                 one_update)
  jax.tree.map(np.testing.assert_array_equal, discard[2], discard[3])  # attack moved nothing
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), keep[2],
                                       keep[3]))
  assert max(moved) > 1e-4  # 'keep': the attack's 1 + k passes moved the statistics
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), keep[0],
               keep[1])  # ... and the training forward started from them


def test_bn_update_keep_needs_train_mode():
  config = _pgd_config(bn_mode="eval", bn_update="keep")
  with pytest.raises(ValueError, match="perturb.bn_update='keep'"):
    attack.from_perturb(config.perturb)


def test_fraction_replaces_that_share_of_the_batch():
  config = _pgd_config(random_start=False)
  model, state, frozen_models, batch = _step_parts(config, batch_size=64)
  clean = data.to_float(batch["image"])
  perturbed = {}
  for fraction in (0.0, 0.5, 1.0):
    config.perturb.fraction = fraction
    x, *_ = _augment(config, state, batch, jax.random.PRNGKey(6), frozen_models, model)
    perturbed[fraction] = np.asarray(jnp.any(x != clean, axis=(1, 2, 3)))
  assert perturbed[0.0].sum() == 0 and perturbed[1.0].sum() == 64
  assert 16 <= perturbed[0.5].sum() <= 48  # Binomial(64, 1/2): 8 standard deviations wide


def test_flow_augment_reaches_the_flows_training_batches():
  """The flow's step loss is the bits/dim of the crop+flipped batch: the same as the loss on
  images augmented by hand with the step's key, and not that of the un-augmented batch."""
  from jaxflowaug import augment
  from train.stages import flow as flow_stage
  config = cifar10_flow.get_config("smoke")
  _, _, _, batch = _step_parts(config)
  flow = models.create_flow(config, 10)
  state = flow_stage.create_train_state(flow, jax.random.PRNGKey(0), batch,
                                        flow_stage.create_optimizer(config.flow))
  key = jax.random.PRNGKey(2)
  step = lambda s, b, aug: jax.jit(
      lambda s, b: flow_stage.train_step(s, b, key, flow, aug)[1]["bits_per_dim"])(s, b)
  dequant = jax.random.fold_in(key, state.step)
  crop = augment.random_crop_flip(jax.random.fold_in(dequant, 1), data.to_float(batch["image"]),
                                  pad=4, flip=True)
  by_hand = jnp.mean(flow.apply(state.variables(), crop, dequantize=True,
                                method=flow.bits_per_dim, rngs={"dequant": dequant}))
  aug = config.flow.augment
  assert aug.crop_flip
  np.testing.assert_allclose(step(state, batch, aug), by_hand, rtol=1e-5)
  aug.crop_flip = False
  assert abs(float(step(state, batch, aug)) - float(by_hand)) > 1e-4


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
  assert np.isfinite(out["test_loss"])
  assert os.path.exists(os.path.join(str(tmp_path), "vaegan", "samples.png"))
  config.vaegan.checkpoint, config.vaegan.width = str(tmp_path), 8
  with pytest.raises(ValueError, match=r"vaegan\.checkpoint=.* was trained for another vaegan"):
    main.run(config, str(tmp_path / "other"))
