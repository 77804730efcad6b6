"""`train.report`: markdown tables from fixture results.json files."""
import os

import pytest

from configs import cifar10_adv, cifar10_da, cifar10_standard, fmnist_adv, fmnist_standard
from train import labels, report, results


def _write(root, run, stage, config, **metrics):
  directory = os.path.join(root, run, stage)
  os.makedirs(directory, exist_ok=True)
  results.write_json_atomic(os.path.join(directory, results.RESULTS_FILE),
                            dict(metrics, config=config.to_dict()))
  return directory


def _attack(label, accuracy, drop, l2, linf, **distances):
  return dict(label=label, accuracy=accuracy, relative_drop=drop, l2=l2, linf=linf, **distances)


@pytest.fixture
def runs(tmp_path):
  root = str(tmp_path)
  _write(root, "cifar/standard", "classifier", cifar10_standard.get_config(), test_accuracy=0.5,
         train_examples=2500)
  for seed, acc in ((0, 0.80), (1, 0.82)):  # a sweep over seeds: one group
    config = cifar10_adv.get_config()
    config.seed = seed
    _write(root, f"sweep/ala_s{seed}", "classifier", config, test_accuracy=acc,
           train_examples=2500)
  evaluated = _write(
      root, "sweep/ala_s0", "evaluate", cifar10_adv.get_config(), clean_accuracy=0.8,
      train_examples=2500, fid_features="inception", clean=dict(fid=1.25, kid=0.0002),
      attacks={"rla": _attack("R-LA linf ε 0.25", 0.6, 25.0, 4.0, 0.4, fid=3.5, kid=0.001)},
      perturbations_png="/elsewhere/perturbations.png", curves_png=None)
  with open(os.path.join(evaluated, "perturbations.png"), "wb") as f:
    f.write(b"png")
  density = _attack("R-LA linf ε 0.25, density p10 reject", 0.7, 12.5, 2.0, 0.2, fid=2.0, kid=0.0)
  config = cifar10_adv.get_config()
  config.seed = 1
  _write(root, "sweep/ala_s1", "evaluate", config, clean_accuracy=0.8, train_examples=2500,
         fid_features="inception", clean=dict(fid=1.75, kid=0.0004),
         attacks={"rla": _attack("R-LA linf ε 0.25", 0.6, 25.0, 4.0, 0.4, fid=4.5, kid=0.003),
                  "rla_p10": dict(density, density_kept_fraction=0.9)})
  vaegan = fmnist_adv.get_config()
  vaegan.vaegan.per_class = True
  _write(root, "fmnist/vaegan", "vaegan", vaegan, val_reconstruction_mse=0.0166,
         val_reconstruction_mae=0.0669)
  full = cifar10_da.get_config()
  full.data.train_size = 0
  _write(root, "cifar/da_full", "evaluate", full, clean_accuracy=0.95, train_examples=45000,
         fid_features="classifier", clean=dict(fid_classifier_features=2.0),
         attacks={"ala": _attack("A-LA l2 ε 1 α 0.5 k 3", 0.6, 36.84, 4.7, 0.45,
                                 fid_classifier_features=7.0, kid_classifier_features=0.002)})
  _write(root, "cifar/flow", "flow", cifar10_adv.get_config(), val_bits_per_dim=3.456,
         max_reconstruction_error=2e-6)
  for method, module in (("std", fmnist_standard), ("ala", fmnist_adv)):
    for size in (600, 2400):
      config = module.get_config()
      config.data.train_size = size
      _write(root, f"fmnist/{method}_{size}", "classifier", config,
             test_accuracy=0.7 + size / 1e5, train_examples=size)
  os.makedirs(os.path.join(root, "junk", "classifier"))
  with open(os.path.join(root, "junk", "classifier", results.RESULTS_FILE), "w") as f:
    f.write("{not json")
  results.write_json_atomic(os.path.join(root, "sweep", results.RESULTS_FILE),
                            {"runs": [], "summary": []})  # a sweep summary: not a stage
  return root


def test_report_renders_the_paper_tables(runs, capsys):
  report.main(["report", runs])
  text = capsys.readouterr().out
  with open(os.path.join(runs, report.REPORT_FILE)) as f:
    assert f.read() == text
  lines = text.splitlines()
  # Table 1: method x size, mean ± std over the seeds of the sweep, the paper in brackets.
  i = lines.index("## CIFAR-10: test accuracy (%) by method and training images (Table 1)")
  assert lines[i + 2:i + 6] == [
      "| method | 2500 |",
      "|---|---|",
      "| standard | 50.0 [paper 49.8] |",
      "| A-LA l2 ε 1 α 0.5 k 3 | 81.0 ± 1.0 (n=2) [paper 80.4] |",
  ]
  # Fig. 5: two sizes per method, a plot beside the table.
  i = lines.index("## Fashion-MNIST: test accuracy (%) by method and training images (Fig. 5)")
  assert lines[i + 2:i + 6] == [
      "| method | 600 | 2400 |",
      "|---|---|---|",
      "| standard | 70.6 | 72.4 |",
      "| A-LA linf ε 0.05 α 0.01 k 10 (no DA) | 70.6 | 72.4 |",
  ]
  assert "![Fashion-MNIST: test accuracy against training images](fig5_fashion_mnist.png)" in lines
  with open(os.path.join(runs, "fig5_fashion_mnist.png"), "rb") as f:
    assert f.read(4) == b"\x89PNG"
  # Table 4: the seeds of a group merged, mean ± std; a density filter's kept fraction.
  assert ("| sweep/ala (n=2) | A-LA l2 ε 1 α 0.5 k 3 | R-LA linf ε 0.25 | Inception | 4.00 ± 0.50 "
          "| 2.00 ± 1.00 | – | 3.71 |") in lines
  assert ("| sweep/ala (n=2) | A-LA l2 ε 1 α 0.5 k 3 | clean (reference) | Inception "
          "| 1.50 ± 0.25 | 0.30 ± 0.10 | – |  |") in lines
  assert ("| sweep/ala | A-LA l2 ε 1 α 0.5 k 3 | R-LA linf ε 0.25, density p10 reject | Inception "
          "| 2.00 | 0.00 | 0.90 |  |") in lines
  # Classifier-feature distances never get the paper's FID beside them.
  assert ("| cifar/da_full | standard + DA | A-LA l2 ε 1 α 0.5 k 3 | classifier features (not "
          "FID) | 7.00 | 2.00 | – |  |") in lines
  assert "| fmnist/vaegan | Fashion-MNIST | per class | 10 | 0.0166 | 0.0669 |" in lines
  assert "| sweep/ala_s0 | R-LA linf ε 0.25 | 4.00 | 0.400 | 4.18 / 0.41 |" in lines
  # Table 6: the paper's full-data numbers only beside a full-data run.
  assert ("| cifar/da_full | standard + DA | 45000 (all) | A-LA l2 ε 1 α 0.5 k 3 | 95.0 | 60.0 "
          "| 36.8 | 58.8 / 38.2 |") in lines
  assert ("| sweep/ala_s0 | A-LA l2 ε 1 α 0.5 k 3 | 2500 | R-LA linf ε 0.25 | 80.0 | 60.0 "
          "| 25.0 |  |") in lines
  assert "| cifar/flow | CIFAR-10 | Glow | 3.456 | 2.0e-06 |" in lines
  # Figures are linked where they are now, whatever path results.json recorded.
  assert "- `sweep/ala_s0`: [perturbations (Fig. 3)](sweep/ala_s0/evaluate/perturbations.png)" \
      in lines
  assert not any("junk" in line for line in lines)


def test_report_has_only_the_sections_with_rows(tmp_path):
  _write(str(tmp_path), "flow_only", "flow", cifar10_adv.get_config(), val_bits_per_dim=3.5)
  text = report.write_report(str(tmp_path))
  assert "## Flows" in text
  for missing in ("Table 1", "Table 4", "Table 5", "Table 6", "Fig. 5", "## Figures"):
    assert missing not in text


def test_sampled_evaluation_names_its_sample_sizes_instead_of_the_papers_numbers(tmp_path):
  config = cifar10_adv.get_config()
  config.data.train_size = 0
  config.evaluation.update(num_examples=1000, fid_examples=5000)
  _write(str(tmp_path), "ala", "evaluate", config, clean_accuracy=0.9, train_examples=45000,
         num_examples=1000, fid_reference_examples=5000, fid_features="inception",
         clean=dict(fid=30.0, kid=0.0001),
         attacks={"rla": _attack("R-LA linf ε 0.25", 0.8, 11.1, 2.5, 0.18, fid=37.0, kid=0.004)})
  lines = report.write_report(str(tmp_path)).splitlines()
  # Table 4 compares FIDs, which depend on both sample sizes; Tables 5 and 6 only on the first.
  assert ("| ala | A-LA l2 ε 1 α 0.5 k 3 | R-LA linf ε 0.25 | Inception | 37.00 | 4.00 | – "
          "| not comparable: 1000 test images, 5000 training images for FID |") in lines
  assert ("| ala | R-LA linf ε 0.25 | 2.50 | 0.180 | not comparable: 1000 test images |"
          in lines)
  assert ("| ala | A-LA l2 ε 1 α 0.5 k 3 | 45000 (all) | R-LA linf ε 0.25 | 90.0 | 80.0 | 11.1 "
          "| not comparable: 1000 test images |") in lines


def test_report_of_an_empty_or_missing_directory(tmp_path):
  assert "No `results.json`" in report.write_report(str(tmp_path))
  with pytest.raises(ValueError, match="RUNS_DIR"):
    report.write_report(str(tmp_path / "absent"))


@pytest.mark.parametrize("module,change,label", [
    (cifar10_standard, {}, "standard"),
    (cifar10_da, {}, "standard + DA"),
    (cifar10_da, {"classifier.augment.cutout": 16}, "Cutout"),
    (cifar10_da, {"classifier.augment.mixup_alpha": 1.0}, "Mixup"),
    (cifar10_adv, {}, "A-LA l2 ε 1 α 0.5 k 3"),
    (cifar10_adv, {"classifier.augment.crop_flip": False}, "A-LA l2 ε 1 α 0.5 k 3 (no DA)"),
    (fmnist_adv, {"perturb.method": "rla", "perturb.eps": 0.15}, "R-LA linf ε 0.15 (no DA)"),
])
def test_method_labels_match_the_papers_rows(module, change, label):
  config = module.get_config()
  for field, value in change.items():
    *path, name = field.split(".")
    node = config
    for part in path:
      node = node[part]
    node[name] = value
  assert labels.method_label(config.to_dict()) == label


def test_method_labels_name_the_generator_fraction_and_density_filter():
  config = fmnist_adv.get_config()
  config.perturb.update(generator="vaegan", fraction=0.5)
  config.vaegan.per_class = True
  assert labels.method_label(config.to_dict()) == (
      "A-LA linf ε 0.05 α 0.01 k 10 via VAE-GAN (per class) on 50% of each batch (no DA)")
  config = fmnist_adv.get_config()
  config.perturb.update(density_percentile=10.0, density_mode="shrink")
  config.classifier.augment.update(crop_flip=True, cutout=8, mixup_alpha=0.2)
  assert labels.method_label(config.to_dict()) == (
      "A-LA linf ε 0.05 α 0.01 k 10, density p10 shrink + Cutout + Mixup")


def test_report_pools_only_runs_that_differ_in_their_seed(tmp_path):
  sweep_dir = os.path.join(str(tmp_path), "sweep")
  for seed, epochs, accuracy in ((0, 1.0, 0.40), (1, 1.0, 0.42), (2, 25.0, 0.56)):
    config = fmnist_adv.get_config()
    config.seed, config.classifier.epochs = seed, epochs
    _write(sweep_dir, f"ala_s{seed}", "classifier", config, test_accuracy=accuracy,
           train_examples=600)
  # The sweep's own results.json, and its run 'flow', whose run-level results.json sits in a
  # directory named like a stage: neither is a stage's.
  _write(sweep_dir, "flow", "flow", fmnist_adv.get_config(), val_bits_per_dim=1.5)
  results.write_json_atomic(os.path.join(sweep_dir, "flow", results.RESULTS_FILE),
                            dict(val_bits_per_dim=1.5, config=fmnist_adv.get_config().to_dict(),
                                 stages={"flow": {}}))
  results.write_json_atomic(os.path.join(sweep_dir, results.RESULTS_FILE),
                            {"runs": [], "summary": []})
  lines = report.write_report(sweep_dir).splitlines()
  method = "A-LA linf ε 0.05 α 0.01 k 10 (no DA)"
  assert f"| {method} (classifier.epochs=1.0) | 41.0 ± 1.0 (n=2) |" in lines
  assert f"| {method} (classifier.epochs=25.0) | 56.0 |" in lines
  assert "| flow | Fashion-MNIST | DenseFlow | 1.500 | – |" in lines
  assert not any(line.startswith("| . |") for line in lines)


def test_report_pairs_each_method_with_the_baselines_seed_by_seed(tmp_path):
  root = str(tmp_path)
  accs = {"da": (cifar10_da, (0.60, 0.62, 0.64)), "ala": (cifar10_adv, (0.65, 0.61, 0.70))}
  for name, (module, values) in accs.items():
    for seed, acc in enumerate(values):
      config = module.get_config()
      config.seed, config.data.train_size = seed, 2500
      _write(root, f"{name}_s{seed}", "classifier", config, test_accuracy=acc,
             train_examples=2500)
  config = cifar10_adv.get_config()  # a seed the baseline lacks is not paired
  config.seed, config.data.train_size = 7, 2500
  _write(root, "ala_s7", "classifier", config, test_accuracy=0.99, train_examples=2500)
  lines = report.render(root).splitlines()
  i = lines.index("| method | minus | images | seeds | mean | min | per seed |")
  assert lines[i + 2] == ("| A-LA l2 ε 1 α 0.5 k 3 | standard + DA | 2500 | 3 | +3.33 | -1.00 "
                          "| +5.00 / -1.00 / +6.00 |")
  assert len(lines) == i + 3 or not lines[i + 3].startswith("|")  # DA: not paired with itself
