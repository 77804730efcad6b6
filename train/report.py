"""`python -m train.report RUNS_DIR`: every result under RUNS_DIR, laid out as the paper's tables.

Reads each stage's `results.json` below RUNS_DIR (`<run>/{flow,vaegan,classifier,evaluate}/results.json`;
a run is the directory holding the stage directories, so single runs and the runs of sweeps
(`train/sweep.py`) count alike) and writes `RUNS_DIR/REPORT.md`, also printed:
- test accuracy (%) by method (rows) and classifier training-set size (columns), mean ± std
  (population, as `sweep.summarize`) over the runs that differ only in their seed (an equal
  `labels.setting`: the stored identity less the seed; runs of one method that differ in
  anything else are separate rows, labelled by the fields that differ): Table 1 for
  CIFAR-10, Fig. 5 for Fashion-MNIST; a dataset with several sizes also gets the Fig. 5 plot
  `RUNS_DIR/fig5_<dataset>.png` (mean ± std error bars per method);
- from the evaluate stage: Table 4 (FID/KID of perturbed images to the training images),
  Table 5 (mean l2 / linf image-space size of the perturbations), Table 6 (accuracy under
  attack and its relative drop);
  Table 4 rows of runs that differ only in their seed (named alike, `labels.group_key`, and of
  an equal `labels.setting`) are merged, mean ±
  std, with the fraction of perturbations a density filter kept;
- the flows' bits/dim, the VAE-GANs' reconstruction errors, and links to every run's figures.
The paper's numbers (`PAPER`, from PAPER.md) stand in brackets beside ours where dataset, method
and size match. A table has only the rows that the runs provide; a section without rows is left
out.
"""
import os
import re
from typing import Optional

import numpy as np
from absl import app

from train import errors, figures, labels, results

STAGES = ("flow", "vaegan", "classifier", "evaluate")
SIZE_FIELDS = ("data.train_size", "data.train_fraction")  # a column of the tables, not a row
REPORT_FILE = "REPORT.md"

# The paper's numbers, keyed by our labels (`labels.method_label`, `labels.attack_label`).
PAPER = {
    # Table 1: CIFAR-10 test accuracy (%), ResNet-18, on the fixed 5% subset and the full set.
    "accuracy": {"CIFAR-10": {
        "standard": {"5%": 49.8, "full": 89.7},
        "standard + DA": {"5%": 64.1, "full": 95.2},
        "VAE-GAN": {"5%": 58.9, "full": 94.2},
        "Cutout": {"5%": 66.8, "full": 96.0},
        "Mixup": {"5%": 73.4, "full": 95.9},
        "R-LA linf ε 0.25": {"5%": 70.1, "full": 96.3},
        "A-LA l2 ε 1 α 0.5 k 3": {"5%": 80.4, "full": 96.6},
    }},
    # The paper's size columns: classifier training images -> column ('full': the whole split).
    "sizes": {"CIFAR-10": {2500: "5%"}},
    # Fig. 5 gives no numbers, only this.
    "fig5": ("Paper (Fig. 5; 600 / 2,400 / 6,000 / 50,000 images, 3 seeds, no numbers "
             "published): A-LA (linf ε 0.05 α 0.01 k 10) beats standard at every size, the gap "
             "shrinking with size; R-LA (linf ε 0.15) is about equal to standard."),
    # Table 4: FID of perturbed CIFAR-10 images to the training set (Inception features).
    "fid": {"PGD linf ε 0.03 α 0.008 k 10": 23.61, "R-LA linf ε 0.25": 3.71,
            "A-LA l2 ε 1 α 0.5 k 3": 3.65},
    # Table 5: mean image-space (l2, linf) size of the perturbations, CIFAR-10 test images.
    "norms": {"PGD linf ε 0.03 α 0.008 k 10": (1.13, 0.03),
              "PGD l2 ε 2 α 0.5 k 10": (1.98, 0.15),
              "R-LA linf ε 0.25": (4.18, 0.41), "A-LA l2 ε 1 α 0.5 k 3": (4.61, 0.44)},
    # Table 6: CIFAR-10, full training set: (attack, trained with) -> (accuracy %, relative drop
    # %). The paper's "standard" is Table 1's "standard + common DA": its clean accuracy is
    # 90.5 / (1 - 0.048) = 95.1.
    "robustness": {
        ("R-LA linf ε 0.25", "standard + DA"): (90.5, 4.8),
        ("R-LA linf ε 0.25", "PGD linf ε 0.03 α 0.008 k 10"): (76.9, 9.4),
        ("R-LA linf ε 0.25", "R-LA linf ε 0.25"): (94.1, 2.1),
        ("R-LA linf ε 0.25", "A-LA l2 ε 1 α 0.5 k 3"): (94.6, 2.0),
        ("A-LA l2 ε 1 α 0.5 k 3", "standard + DA"): (58.8, 38.2),
        ("A-LA l2 ε 1 α 0.5 k 3", "PGD linf ε 0.03 α 0.008 k 10"): (36.2, 57.3),
        ("A-LA l2 ε 1 α 0.5 k 3", "R-LA linf ε 0.25"): (71.2, 25.9),
        ("A-LA l2 ε 1 α 0.5 k 3", "A-LA l2 ε 1 α 0.5 k 3"): (76.4, 20.8),
    },
}
_DATASETS = (("cifar100", "CIFAR-100"), ("cifar10", "CIFAR-10"), ("svhn", "SVHN"),
             ("fashion", "Fashion-MNIST"), ("fmnist", "Fashion-MNIST"), ("mnist", "MNIST"))


def collect(runs_dir: str) -> dict:
  """{run directory relative to runs_dir: {stage: that stage's results.json}}, sorted by run."""
  runs = {}
  for root, dirs, files in os.walk(runs_dir):
    dirs[:] = sorted(d for d in dirs if d != "checkpoints")
    if os.path.basename(root) not in STAGES or results.RESULTS_FILE not in files:
      continue
    payload = results.read(root)  # None, with a warning, if unreadable
    # A run's own results.json (it has 'stages') in a directory named like a stage, e.g. the
    # run 'flow' of a sweep, is not a stage's.
    if isinstance(payload, dict) and "config" in payload and "stages" not in payload:
      run = os.path.relpath(os.path.dirname(root), runs_dir)
      runs.setdefault(run, {})[os.path.basename(root)] = payload
  return dict(sorted(runs.items()))


def dataset_name(config: dict) -> str:
  """'CIFAR-10', 'Fashion-MNIST', ... from `data.source`; the source itself when unknown."""
  source = config["data"]["source"]
  normalised = source.lower().replace("-", "").replace("_", "")
  return next((name for key, name in _DATASETS if key in normalised), source)


def _size(config: dict, stage: dict) -> tuple:
  """(classifier training images, whether that is the whole train split)."""
  full = not config["data"]["train_size"] and not config["data"]["train_fraction"]
  return int(stage.get("train_examples") or config["data"]["train_size"]), full


def _size_label(size: tuple) -> str:
  return f"{size[0]} (all)" if size[1] else str(size[0])


def _paper_column(dataset: str, size: tuple) -> Optional[str]:
  return "full" if size[1] else PAPER["sizes"].get(dataset, {}).get(size[0])


def _table(header: list, rows: list) -> list:
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _mean_std(values: list) -> str:
  """Accuracies in [0, 1] as '%': one value alone, several as 'mean ± std (n=k)'."""
  values = 100 * np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.1f}"
  return f"{values.mean():.1f} ± {values.std():.1f} (n={len(values)})"


def _spread(values: list, spec: str, scale: float = 1.0) -> str:
  """'mean ± std' of the non-None values (one alone as itself), '–' when there are none."""
  values = [scale * v for v in values if v is not None]
  if not values:
    return "–"
  if len(values) == 1:
    return format(values[0], spec)
  return f"{format(np.mean(values), spec)} ± {format(np.std(values), spec)}"


def _paper(value) -> str:
  return f" [paper {value}]" if value is not None else ""


def _fmt(value, spec: str, scale: float = 1.0) -> str:
  return "–" if value is None else format(scale * value, spec)


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def accuracy_sections(runs: dict, runs_dir: str) -> list:
  """Per dataset: test accuracy by method x training-set size (mean ± std over seeds), the
  paper's number beside it, and the Fig. 5 plot when there are several sizes. Rows: the
  standard methods first, then the others by name."""
  grouped, settings = {}, {}  # dataset -> (method, setting) -> size -> [accuracy]; settings
  for stages in runs.values():
    out = stages.get("classifier")
    if not out or "test_accuracy" not in out:
      continue
    config = out["config"]
    method, flat = labels.method_label(config), labels.setting(out)
    row = (method, labels.setting_key(flat, SIZE_FIELDS))
    settings[row] = flat
    grouped.setdefault(dataset_name(config), {}).setdefault(row, {}).setdefault(
        _size(config, out), []).append((config["seed"], out["test_accuracy"]))
  lines = []
  for dataset, by_row in grouped.items():
    names = labels.row_names({row: settings[row] for row in by_row}, SIZE_FIELDS)
    methods = {names[row]: (row[0], by_size) for row, by_size in by_row.items()}
    sizes = sorted({s for _, by_size in methods.values() for s in by_size})
    paper = PAPER["accuracy"].get(dataset, {})
    rows = []
    for name, (method, by_size) in sorted(methods.items(),
                                          key=lambda m: (m[0].split()[0] != "standard", m[0])):
      row = [name]
      for size in sizes:
        if size in by_size:
          row.append(_mean_std([acc for _, acc in by_size[size]])
                     + _paper(paper.get(method, {}).get(_paper_column(dataset, size))))
        else:
          row.append("")
      rows.append(row)
    tag = {"CIFAR-10": " (Table 1)", "Fashion-MNIST": " (Fig. 5)"}.get(dataset, "")
    lines += [f"## {dataset}: test accuracy (%) by method and training images{tag}", ""]
    lines += _table(["method"] + [_size_label(s) for s in sizes], rows) + [""]
    if dataset == "Fashion-MNIST":
      lines += [PAPER["fig5"], ""]
    lines += paired_section(methods, sizes)
    if len(sizes) > 1:
      series = {m: [(s[0], 100 * np.mean([a for _, a in v]), 100 * np.std([a for _, a in v]))
                    for s, v in by_size.items()] for m, (_, by_size) in methods.items()}
      name = f"fig5_{_slug(dataset)}.png"
      figures.size_sweep(series, os.path.join(runs_dir, name), title=dataset)
      lines += [f"![{dataset}: test accuracy against training images]({name})", ""]
  return lines


BASELINES = ("standard", "standard + DA")  # the methods others are paired with, seed by seed


def paired_section(methods: dict, sizes: list) -> list:
  """Per size, each method with several seeds minus each baseline method (`BASELINES`), over
  the seeds both ran (`labels.paired`): mean, minimum and per-seed differences in points.
  `methods`: {row name: (method label, {size: [(seed, accuracy)]})}."""
  rows = []
  for size in sizes:
    for base_name, (base_method, base_by_size) in methods.items():
      if base_method not in BASELINES or size not in base_by_size:
        continue
      for name, (_, by_size) in sorted(methods.items()):
        if name == base_name or size not in by_size:
          continue
        pair = labels.paired(dict(by_size[size]), dict(base_by_size[size]))
        if pair and pair["n"] > 1:
          rows.append([name, base_name, _size_label(size), pair["n"],
                       f"{100 * pair['mean_diff']:+.2f}", f"{100 * pair['min_diff']:+.2f}",
                       " / ".join(f"{100 * d:+.2f}" for d in pair["diffs"])])
  if not rows:
    return []
  return (["Paired by seed (points; a method minus a baseline over the seeds both ran):", ""]
          + _table(["method", "minus", "images", "seeds", "mean", "min", "per seed"], rows)
          + [""])


def evaluation_sections(runs: dict) -> list:
  """Tables 4, 5 and 6 from the runs' evaluate stages, one row per (run, attack)."""
  fid_groups, norm_rows, robust_rows = {}, [], []  # (group, trained, attack, features) -> rows
  group_settings = {}  # (run name less its seed tag, setting key) -> setting
  for run, stages in runs.items():
    out = stages.get("evaluate")
    if not out or "attacks" not in out:
      continue
    config = out["config"]
    dataset, trained = dataset_name(config), labels.method_label(config)
    size = _size(config, out)
    # The paper's numbers stand beside ours only at its sizes (the whole test split, and for
    # FID against the whole training set); otherwise the column says ours are samples.
    cifar = dataset == "CIFAR-10"
    sizes = config.get("evaluation", {})
    full_eval = cifar and sizes.get("num_examples") == 0
    full_fid = full_eval and sizes.get("fid_examples") == 0
    sampled = f"not comparable: {out.get('num_examples')} test images"  # Tables 5 and 6
    sampled_fid = f"{sampled}, {out.get('fid_reference_examples')} training images for FID"
    inception = out.get("fid_features") == "inception"
    suffix = "" if inception else "_classifier_features"
    features = "Inception" if inception else "classifier features (not FID)"
    clean = out.get("clean", {})
    flat = labels.setting(out)
    group = (labels.group_key(run), labels.setting_key(flat))
    group_settings[group] = flat
    fid_groups.setdefault((group, trained, "clean (reference)", features, ""), []).append(
        (clean.get(f"fid{suffix}"), clean.get(f"kid{suffix}"), None))
    for row in out["attacks"].values():
      label = row["label"]
      paper_fid = PAPER["fid"].get(label) if cifar and inception else None
      paper_fid = sampled_fid if paper_fid is not None and not full_fid else paper_fid
      fid_groups.setdefault((group, trained, label, features,
                             "" if paper_fid is None else paper_fid), []).append(
          (row.get(f"fid{suffix}"), row.get(f"kid{suffix}"), row.get("density_kept_fraction")))
      paper_norms = PAPER["norms"].get(label) if cifar else None
      norm_rows.append([run, label, _fmt(row["l2"], ".2f"), _fmt(row["linf"], ".3f"),
                        "" if paper_norms is None else
                        f"{paper_norms[0]} / {paper_norms[1]}" if full_eval else sampled])
      paper_robust = PAPER["robustness"].get((label, trained)) if cifar and size[1] else None
      paper_robust = sampled if paper_robust is not None and not full_eval else paper_robust
      robust_rows.append([run, trained, _size_label(size), label,
                          _fmt(out["clean_accuracy"], ".1f", 100),
                          _fmt(row["accuracy"], ".1f", 100), _fmt(row["relative_drop"], ".1f"),
                          "" if paper_robust is None else paper_robust if not full_eval else
                          f"{paper_robust[0]} / {paper_robust[1]}"])
  if not fid_groups:
    return []
  names = labels.row_names(group_settings)
  fid_rows = [[names[group] + (f" (n={len(values)})" if len(values) > 1 else ""), trained, label,
               features, _spread([v[0] for v in values], ".2f"),
               _spread([v[1] for v in values], ".2f", 1e3),
               _spread([v[2] for v in values], ".2f"), paper]
              for (group, trained, label, features, paper), values in fid_groups.items()]
  return (["## Table 4: distance of perturbed images to the training images", "",
           "KID x 10^3; mean ± std over the seeds of a run group. FID/KID in classifier features "
           "are not comparable with published FIDs, and each run's come from its own classifier; "
           "the clean row is the floor that the sample sizes alone give. 'kept': the fraction "
           "of perturbations a density filter kept.", ""]
          + _table(["runs", "trained with", "attack", "features", "FID", "KID", "kept",
                    "paper FID"], fid_rows)
          + ["", "## Table 5: mean image-space size of the perturbations", "",
             "Pixels in [0, 1]. The paper's latent-attack sizes include its decode's 10% contrast "
             "compression (flow.arch.authors_decode=True reproduces it).", ""]
          + _table(["run", "attack", "l2", "linf", "paper l2 / linf"], norm_rows)
          + ["", "## Table 6: accuracy (%) under attack and its relative drop (%)", ""]
          + _table(["run", "trained with", "training images", "attack", "clean",
                    "under attack", "drop", "paper acc / drop"], robust_rows) + [""])


def flow_section(runs: dict) -> list:
  rows = []
  for run, stages in runs.items():
    out = stages.get("flow")
    if out:
      rows.append([run, dataset_name(out["config"]), out["config"]["flow"]["model"],
                   _fmt(out.get("val_bits_per_dim"), ".3f"),
                   _fmt(out.get("max_reconstruction_error"), ".1e")])
  if not rows:
    return []
  return (["## Flows: validation bits/dim (Glow paper: 3.35 on lossless CIFAR-10)", ""]
          + _table(["run", "dataset", "model", "bits/dim", "max reconstruction error"], rows)
          + [""])


def vaegan_section(runs: dict) -> list:
  rows = []
  for run, stages in runs.items():
    out = stages.get("vaegan")
    if out:
      cfg = out["config"]["vaegan"]
      rows.append([run, dataset_name(out["config"]), "per class" if cfg["per_class"] else "one",
                   cfg["latent_dim"], _fmt(out.get("val_reconstruction_mse"), ".4f"),
                   _fmt(out.get("val_reconstruction_mae"), ".4f")])
  if not rows:
    return []
  return (["## VAE-GANs: reconstruction error of G(mu(x)) on the evaluation images", "",
           "Pixels in [0, 1]; a flow's is ~1e-6 (its code is exact).", ""]
          + _table(["run", "dataset", "models", "code size", "MSE", "MAE"], rows) + [""])


def figure_links(runs: dict, runs_dir: str) -> list:
  """Links to the figures every run wrote (those that exist on disk)."""
  names = (("flow", "samples_png", "flow samples"),
           ("vaegan", "samples_png", "VAE-GAN samples"),
           ("vaegan", "reconstructions_png", "VAE-GAN reconstructions"),
           ("evaluate", "perturbations_png", "perturbations (Fig. 3)"),
           ("evaluate", "curves_png", "learning curves (Fig. 4)"))
  lines = []
  for run, stages in runs.items():
    links = []
    for stage, key, text in names:
      path = (stages.get(stage) or {}).get(key)
      if path and os.path.exists(os.path.join(runs_dir, run, stage, os.path.basename(path))):
        links.append(f"[{text}]({os.path.join(run, stage, os.path.basename(path))})")
    if links:
      lines.append(f"- `{run}`: " + ", ".join(links))
  return ["## Figures", ""] + lines + [""] if lines else []


def render(runs_dir: str) -> str:
  """The report's markdown for every run under `runs_dir` (writes its Fig. 5 plots there)."""
  runs = collect(runs_dir)
  lines = ["# jaxflowaug results", "",
           f"{len(runs)} run(s) under `{os.path.abspath(runs_dir)}`. Accuracies in %, mean ± std "
           "over seeds where several; the paper's numbers in brackets where the setting matches.",
           ""]
  if runs:
    lines += (accuracy_sections(runs, runs_dir) + evaluation_sections(runs) + flow_section(runs)
              + vaegan_section(runs))
    lines += figure_links(runs, runs_dir)
  else:
    lines.append(f"No `{results.RESULTS_FILE}` of a stage found.")
  return "\n".join(lines).rstrip("\n") + "\n"


def write_report(runs_dir: str) -> str:
  """Renders the report, writes `runs_dir/REPORT.md` and returns its text."""
  if not os.path.isdir(runs_dir):
    raise ValueError(f"RUNS_DIR={runs_dir!r} is not a directory; pass the directory that holds "
                     "the runs' work directories.")
  text = render(runs_dir)
  with open(os.path.join(runs_dir, REPORT_FILE), "w") as f:
    f.write(text)
  return text


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m train.report RUNS_DIR")
  with errors.one_line():
    print(write_report(argv[1]), end="")


if __name__ == "__main__":
  app.run(main)
