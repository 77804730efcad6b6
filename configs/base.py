"""Shared defaults of every experiment, taken from the authors' code (see PAPER.md).

`cifar10()` and `fmnist()` return complete configs; experiment files override a few fields and
end with `finish(config, arg)`, which applies the `smoke` variant (seconds on a CPU, for tests).
Every field can be overridden on the command line: `--config.perturb.eps=0.5`.
"""
import ml_collections
from ml_collections import config_dict

# Data sources. By name ('cifar10', 'cifar100', 'svhn', 'mnist', 'fashion_mnist'): the official
# files, downloaded on first use (or taken from data.archive_dir) and kept in data.data_dir.
CIFAR10 = "cifar10"
# This project's offline machines hold the CIFAR-10 train split only, as JPEGs (lossy): run the
# CIFAR-10 configs there with --config.data.source=folder:../shared/data/cifar10-jpeg-train.tar.xz
# --config.data.eval_split= --config.data.holdout=5000 (5,000 seeded train images for evaluation).
CIFAR10_TAR = "folder:../shared/data/cifar10-jpeg-train.tar.xz"
FMNIST_IDX = "idx:../shared/data/fashion-mnist"

# Per-channel input standardisation of the ResNet-18 (classifier.arch.mean/std), each dataset its
# own, as the authors' conf/dataset/{cifar10,cifar100,svhn}.yaml:4-5.
STANDARDIZE = {
    "cifar10": dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": dict(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761)),
    "svhn": dict(mean=(0.4376821, 0.4437697, 0.47280442),
                 std=(0.19803012, 0.20101562, 0.19703614)),
}


def standardize(dataset: str) -> dict:
  """Sweep overrides {classifier.arch.mean, classifier.arch.std} of `dataset`."""
  return {f"classifier.arch.{k}": v for k, v in STANDARDIZE[dataset].items()}


def _common() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Stages run in order into one workdir: 'flow' trains the flow, 'classifier' trains and
  # evaluates the classifier (it runs the flow stage first when it needs a flow and
  # flow.checkpoint is empty).
  c.stages = ("classifier",)

  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = config_dict.placeholder(str)  # None: auto-detect
  c.distributed.num_processes = config_dict.placeholder(int)
  c.distributed.process_id = config_dict.placeholder(int)

  c.data = ml_collections.ConfigDict()
  c.data.source = CIFAR10              # a name: 'cifar10' | 'cifar100' | 'svhn' | 'mnist' |
                                       # 'fashion_mnist' (downloaded once); or 'tfds:NAME' |
                                       # 'folder:PATH' | 'idx:PATH' | 'npz:PATH'
  c.data.data_dir = ""                 # where sources are materialised (and named ones
                                       # downloaded); '' = ~/.cache/jaxflowaug/tfds
  c.data.archive_dir = ""              # offline machines: a folder holding the official files of
                                       # a named source (e.g. cifar-10-binary.tar.gz), used
                                       # instead of downloading them; '' = download
  c.data.train_split = "train"          # flow training set; classifier subset drawn from it
  c.data.eval_split = "test"           # a split; or '' = a held-out part of train_split (below)
  # Reduced variants: keep a seeded class-balanced sample of this many images of train_split /
  # eval_split (0 = all). Not a slice such as 'train[:256]': on a class-sorted source (the
  # CIFAR-10 tar) that is one class.
  c.data.max_train_examples = 0
  c.data.max_eval_examples = 0
  c.data.holdout = 0                   # with eval_split '': images held out of train_split
                                       # (seeded, class-balanced), disjoint from every training
                                       # set (5000 for the CIFAR-10 tar of CIFAR10_TAR)
  c.data.train_size = 0                # classifier training images (count); 0 = all
  c.data.train_fraction = 0.0          # ... or a fraction of train_split; 0 = unused
  c.data.subset_seed = 9999            # the authors' seed: the same subset for every method
  c.data.balanced = False              # class-balanced subset

  c.flow = ml_collections.ConfigDict()
  c.flow.model = "Glow"
  c.flow.arch = ml_collections.ConfigDict(dict(
      num_levels=3, num_steps=32, hidden_channels=512, coupling="affine", scale_fn="tanh",
      permutation="plain", logit_bound=0.9, authors_decode=False,
      remat="dots"))                   # speed/memory only, not in a checkpoint's identity:
                                       # what backprop keeps per step (flows.bijector.REMAT)
  c.flow.conditional = False
  # Geometric augmentation of the flow's training batches (fields as classifier.augment; cutout
  # and mixup are refused: a flow models images, not occluded or blended ones). The authors' flow
  # sees its dataset's train transforms (conf/dataset/*.yaml): CIFAR pad-4 crop + flip (here),
  # SVHN translate 0.1 (svhn_flow.py), Fashion-MNIST none (fmnist()). Part of the flow's identity.
  c.flow.augment = ml_collections.ConfigDict(dict(
      crop_flip=True, crop_pad=4, flip=True, translate=0.0, cutout=0, mixup_alpha=0.0))
  c.flow.checkpoint = ""               # workdir of a finished flow run; '' = this workdir's own
  c.flow.optimizer = "adamax"          # 'adamax' (the authors' Glow) | 'adam' (their FMNIST notebook)
  c.flow.allow_unfinished = False      # True: freeze a flow whose training did not finish
  c.flow.batch_size = 64
  c.flow.epochs = 250.0
  c.flow.learning_rate = 5e-4
  c.flow.weight_decay = 5e-5
  c.flow.warmup_samples = 500_000
  c.flow.max_grad_norm = 0.0           # 0 = no clipping (the authors clip nothing)
  c.flow.init_batch_size = 512         # ActNorm's data-dependent init batch: a seeded random
                                       # sample (the authors: their first shuffled batch)
  c.flow.log_every = 100
  c.flow.checkpoint_every = 1000
  c.flow.eval_examples = 0             # validation bits/dim on this many eval images (seeded
                                       # sample); 0 = all
  c.flow.recon_examples = 64
  c.flow.num_samples = 64
  c.flow.sample_temperature = 0.7

  # The VAE-GAN of the exact-vs-approximate ablation (train/vaegan_trainer.py; stage 'vaegan').
  c.vaegan = ml_collections.ConfigDict()
  c.vaegan.latent_dim = 128
  c.vaegan.width = 64
  c.vaegan.per_class = False           # True: one VAE-GAN per class (Stutz et al.)
  c.vaegan.beta = 1.0                  # weight of KL(q(z|x) || N(0, I))
  c.vaegan.gan_weight = 1.0            # weight of the decoder's adversarial loss
  c.vaegan.checkpoint = ""             # workdir of a finished vaegan run; '' = this workdir's own
  c.vaegan.allow_unfinished = False    # True: freeze a VAE-GAN whose training did not finish
  c.vaegan.batch_size = 100
  c.vaegan.epochs = 30.0
  c.vaegan.learning_rate = 1e-3
  c.vaegan.log_every = 100
  c.vaegan.checkpoint_every = 1000
  c.vaegan.recon_examples = 64
  c.vaegan.num_samples = 100

  c.classifier = ml_collections.ConfigDict()
  c.classifier.model = "ResNet18"
  # dtype: computation dtype ('bfloat16' on GPU/TPU halves memory traffic; params stay float32).
  # mean/std: input standardisation inside the model (STANDARDIZE; set per dataset).
  c.classifier.arch = ml_collections.ConfigDict(dict(width=64, dtype="float32",
                                                     **STANDARDIZE["cifar10"]))
  # BatchNorm of the training forward: 'train' (batch statistics, running ones updated) | 'eval'
  # (frozen at the initial running statistics, mean 0 / var 1: the Fashion-MNIST notebook's A-LA
  # classifier, see fig5_fmnist.py:notebook).
  c.classifier.train_bn_mode = "train"
  c.classifier.optimizer = "sgd"
  c.classifier.learning_rate = 0.1
  c.classifier.momentum = 0.9
  c.classifier.nesterov = True
  c.classifier.weight_decay = 5e-4
  c.classifier.lr_boundaries = (60, 120, 160)  # epochs
  c.classifier.lr_decay = 0.2
  c.classifier.batch_size = 128        # the last partial batch of an epoch is dropped (2,500
                                       # images: 19 steps, the authors' DataLoader takes 20)
  c.classifier.epochs = 200.0
  c.classifier.eval_batch_size = 500
  c.classifier.log_every = 50
  c.classifier.checkpoint_every = 500
  c.classifier.eval_every_epochs = 10.0  # learning curves (Fig. 4)
  c.classifier.curves_train_accuracy = True
  # Refuse a frozen flow whose max |F^-1(F(x)) - x| on flow.recon_examples training images (a
  # sample seeded by `seed`) exceeds this (pixels in [0, 1]: 1e-2 is 2.5 grey levels of 255);
  # with flow.arch.authors_decode the decode is compared with the authors' a + b x instead.
  c.classifier.max_flow_reconstruction_error = 1e-2
  c.classifier.augment = ml_collections.ConfigDict(dict(
      crop_flip=False, crop_pad=4, flip=True, translate=0.0, cutout=0, mixup_alpha=0.0))

  c.perturb = ml_collections.ConfigDict()
  c.perturb.method = "none"            # 'none' | 'rla' | 'ala' | 'pgd' (image space)
  c.perturb.generator = "flow"         # latent of 'rla'/'ala': 'flow' (exact code) | 'vaegan'
                                       # (approximate: x~ = G(mu(x) + delta), stage 'vaegan')
  c.perturb.norm = "l2"                # 'l2' | 'linf'
  c.perturb.eps = 1.0
  c.perturb.step_size = 0.5
  c.perturb.steps = 3
  c.perturb.random_start = True
  c.perturb.labels = "pred"            # the attack's target: 'pred' = the classifier's argmax on
                                       # the clean batch (authors: "avoid label leaking") | 'true'
  c.perturb.bn_mode = "train"          # classifier BatchNorm mode during the attack
  # 'keep': the running statistics moved by the attack's train-mode passes (the clean pass of
  # labels 'pred', then each of the k PGD/A-LA passes) stay, in that order, before the training
  # forward (the authors' CIFAR training: all run on the module in train mode); 'discard': only
  # the training forward moves them. Needs bn_mode 'train'.
  c.perturb.bn_update = "keep"
  c.perturb.fraction = 1.0             # fraction of each batch replaced by perturbed images
  c.perturb.unroll = False             # unroll PGD's fori_loop (speed only; see perturb.pgd)
  # Encode the training images once (z = F(x), deterministic) and skip the flow's forward pass
  # in every step. Exact without crop/flip/translate; with them, they are applied to the decoded
  # image instead of before the encoding (the cached z is the un-augmented image's).
  c.perturb.cache_latents = False
  # Density filter: a perturbed image whose flow log-density log p(x~|y) falls below the
  # `density_percentile`-th percentile of the clean training images' is rejected (replaced by
  # its clean image) or shrunk (the perturbation scaled by 1/2, 1/4, ... 2^-density_shrink_steps,
  # the largest scale that passes; clean if none does). 0 = off.
  c.perturb.density_percentile = 0.0
  c.perturb.density_mode = "reject"    # 'reject' | 'shrink'
  c.perturb.density_shrink_steps = 3

  # The 'evaluate' stage (train/evaluate.py; also `python -m train.evaluate`): the classifier of
  # this workdir on data.eval_split, clean and under attack (Tables 4-6, Figs. 3-4).
  c.evaluation = ml_collections.ConfigDict()
  c.evaluation.num_examples = 0        # eval images (a seeded subset of data.eval_split); 0 = all
                                       # (the paper's Table 6; :cpu uses 1000, :smoke 64)
  c.evaluation.batch_size = 250        # global batch of the attack steps (clipped to num_examples)
  # (name, attack) pairs; method 'rla' | 'ala' (latent, through the frozen flow) | 'pgd' (image
  # space), with the classifier in eval mode; optional: random_start (True) and labels ('pred', the
  # classifier's clean predictions, as the authors' evaluation; or 'true').
  c.evaluation.attacks = (
      ("rla", dict(method="rla", norm="linf", eps=0.25)),
      ("ala", dict(method="ala", norm="l2", eps=1.0, step_size=0.5, steps=3)),
      ("pgd", dict(method="pgd", norm="linf", eps=0.03, step_size=0.008, steps=10)),
  )
  c.evaluation.fid_features = "auto"   # 'inception' (pip install -r requirements-fid.txt) |
                                       # 'classifier' (its penultimate features; reported as
                                       # fid_classifier_features, not FID) | 'auto' (inception if
                                       # installed)
  c.evaluation.fid_examples = 0        # training images (seeded subset) for FID/KID; 0 = all (the
                                       # paper's Table 4; :cpu uses 5000, :smoke 64). The report
                                       # shows the paper's numbers only at full sizes.
  c.evaluation.kid_subset_size = 1000  # KID subset size m (clipped to the smaller set)
  c.evaluation.kid_subsets = 100       # KID subset draws
  c.evaluation.grid_examples = 8       # columns of the Fig. 3 sample grid
  c.evaluation.amplify = 5.0           # the grid shows |x~ - x| * amplify
  return c


def cifar10() -> ml_collections.ConfigDict:
  """ResNet-18 on the fixed 5% (2,500 images) CIFAR-10 subset; Glow 3x32x512."""
  c = _common()
  c.data.train_size = 2500
  return c


def fmnist() -> ml_collections.ConfigDict:
  """Stutz et al. CNN on Fashion-MNIST with the conditional 12-block dense flow (Fig. 5)."""
  c = _common()
  c.data.source = FMNIST_IDX
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.holdout = 0
  c.data.train_size = 600
  c.flow.model = "DenseFlow"
  c.flow.arch = ml_collections.ConfigDict(dict(num_blocks=12, hidden=512, clamp=2.0,
                                               noise_std=0.1, remat="none"))
  c.flow.conditional = True
  c.flow.augment.crop_flip = False     # the notebook's flow trains on unaugmented images
  c.flow.epochs = 100.0
  # Kept: Adamax lr 5e-4, wd 5e-5, batch 64, as the CIFAR Glow. The notebook's Adam at lr 1e-6
  # (batch 100, no weight decay) barely moves a flow in 100 epochs; fig5_fmnist_notebook.py runs it.
  c.flow.warmup_samples = 0
  c.classifier.model = "SmallCNN"
  c.classifier.arch = ml_collections.ConfigDict(dict(dtype="float32"))
  c.classifier.optimizer = "adam"
  c.classifier.learning_rate = 0.01
  c.classifier.weight_decay = 1e-4
  c.classifier.lr_decay = 0.9
  c.classifier.lr_boundaries = ()
  c.classifier.batch_size = 100
  c.classifier.epochs = 20.0
  c.classifier.eval_every_epochs = 1.0
  # Kept: BatchNorm in train mode in the training forward (classifier.train_bn_mode). The
  # notebook's A-LA classifier trains with it frozen at init (its attack's .eval() is never
  # undone), a bug rather than a choice; fig5_fmnist_notebook.py reproduces it.
  c.vaegan.latent_dim = 10             # Stutz et al.'s Fashion-MNIST code size
  c.vaegan.width = 32
  c.vaegan.epochs = 10.0
  c.perturb.norm = "linf"
  # The authors' notebook attacks with the true labels (`conv_loss(preds, y)` in preprocess_adv).
  c.perturb.labels = "true"
  c.perturb.bn_mode = "eval"           # the notebook's A-LA calls .eval() on the classifier
  c.perturb.bn_update = "discard"      # (nothing to keep: eval-mode passes move no statistics)
  c.perturb.random_start = False
  c.evaluation.attacks = (
      ("rla", dict(method="rla", norm="linf", eps=0.15)),
      ("ala", dict(method="ala", norm="linf", eps=0.05, step_size=0.01, steps=10,
                   random_start=False)),
  )
  return c


# Per-model overrides of the reduced variants: a new model adds a row here, not a branch.
# `:smoke` (seconds on a CPU, for tests): the architecture's fields.
SMOKE_ARCH = {
    "Glow": dict(num_levels=2, num_steps=2, hidden_channels=8),
    "DenseFlow": dict(num_blocks=2, hidden=16),
    "ResNet18": dict(width=4),
    "SmallCNN": dict(),
}
# `:cpu` (a 2-core CPU in minutes to hours): the flow's architecture and training, and the
# classifier's architecture and epochs (the lr drops at the same fractions of training).
CPU_FLOW = {
    "Glow": dict(arch=dict(num_levels=3, num_steps=4, hidden_channels=64), epochs=5.0,
                 warmup_samples=50_000),
    "DenseFlow": dict(arch=dict(), epochs=3.0),
}
CPU_CLASSIFIER = {
    "ResNet18": dict(arch=dict(width=16), epochs=60.0, eval_every_epochs=5.0),
    "SmallCNN": dict(arch=dict()),
}


def _row(table: dict, model: str, variant: str) -> dict:
  if model not in table:
    raise ValueError(f"The {variant!r} variant has no overrides for model {model!r}; add a row "
                     f"for it in configs/base.py.")
  return table[model]


def finish(c: ml_collections.ConfigDict, arg=None) -> ml_collections.ConfigDict:
  """Applies the variant named by `arg`: None (full scale), 'cpu' (reduced models and epochs
  that finish on a 2-core CPU in minutes to hours) or 'smoke' (seconds, for tests)."""
  if arg in (None, ""):
    return c
  if arg == "cpu":
    return _cpu(c)
  if arg != "smoke":
    raise ValueError(f"Unknown config variant {arg!r}; use FILE.py, FILE.py:cpu or FILE.py:smoke.")
  c.data.max_train_examples = 256
  if c.data.eval_split:
    c.data.max_eval_examples = 64
  else:
    c.data.max_train_examples, c.data.holdout = 256 + 64, 64
  c.data.train_size = 64
  c.data.train_fraction = 0.0
  c.flow.arch.update(_row(SMOKE_ARCH, c.flow.model, "smoke"))
  c.flow.update(batch_size=32, epochs=1.0, warmup_samples=64, init_batch_size=32, log_every=4,
                checkpoint_every=4, eval_examples=32, recon_examples=8, num_samples=4)
  c.vaegan.update(latent_dim=4, width=4, batch_size=20, epochs=1.0, log_every=4,
                  checkpoint_every=4, recon_examples=8, num_samples=10)
  c.classifier.arch.update(_row(SMOKE_ARCH, c.classifier.model, "smoke"))
  c.classifier.update(batch_size=16, epochs=1.0, eval_batch_size=32, log_every=2,
                      checkpoint_every=2, eval_every_epochs=1.0)
  c.evaluation.update(num_examples=64, fid_examples=64)
  return c


def _cpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Reduced scale for a 2-core CPU (`CPU_FLOW`, `CPU_CLASSIFIER`): e.g. Glow 3x4x64 for 5
  epochs, ResNet-18 at width 16 for 60 epochs; the VAE-GAN for at most 5 epochs."""
  flow = dict(_row(CPU_FLOW, c.flow.model, "cpu"))
  c.flow.arch.update(flow.pop("arch"))
  c.flow.update(flow)
  c.vaegan.epochs = min(c.vaegan.epochs, 5.0)
  clf = dict(_row(CPU_CLASSIFIER, c.classifier.model, "cpu"))
  c.classifier.arch.update(clf.pop("arch"))
  if "epochs" in clf:
    scale = clf["epochs"] / c.classifier.epochs
    c.classifier.lr_boundaries = tuple(int(e * scale) for e in c.classifier.lr_boundaries)
  c.classifier.update(clf)
  c.evaluation.update(num_examples=1000, fid_examples=5000)
  return c


def _unset_copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The scalar (str, int, float, bool) fields of `config`, each an unset placeholder of its
  type, so that `--config.every_run.FIELD=VALUE` parses as FIELD itself would."""
  out = ml_collections.ConfigDict()
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      if name != "distributed":  # the sweep's own field, shared by every run already
        out[name] = _unset_copy(value)
    elif isinstance(value, (str, bool, int, float)):
      out[name] = config_dict.placeholder(type(value))
  return out


def sweep(runs, arg=None) -> ml_collections.ConfigDict:
  """A sweep config (see train/sweep.py): `runs` = ((name, config_module, overrides), ...),
  each run in the variant `arg`. On the command line, `--config.every_run.FIELD=VALUE` sets
  FIELD in every run (e.g. a local data source) and `--config.only=REGEX` runs only the runs
  whose names match (and the runs they take a model from)."""
  finish(_common(), arg)  # rejects unknown variants early
  c = ml_collections.ConfigDict()
  c.distributed = _common().distributed
  c.sweep = tuple(runs)
  c.sweep_variant = arg or ""
  c.every_run = _unset_copy(_common())
  c.only = ""
  return c
