"""A sweep: several experiments run one after another into sub-directories of one workdir.

`config.sweep` is a tuple of `(name, config_module, overrides)`; each run is the config of
`configs/<config_module>.py` (in the sweep's variant, `config.sweep_variant`: '' or 'smoke' or
'cpu') with the dotted-field `overrides` applied (`{"perturb.eps": 0.5, "seed": 1}`), run by
`run_one` (`train.main.run`) into `<workdir>/<name>`. A string value `"@other"` stands for `<workdir>/other`, so a run can use the
flow that an earlier run of the sweep trained (`{"flow.checkpoint": "@flow"}`). Finished runs
(with a `results.json`) are skipped and interrupted ones resume, so rerunning a killed sweep
finishes it (a finished run whose stored config differs from the sweep's is refused, naming the
fields). `config.every_run` holds fields set in every run (unset ones are left alone; a field the
sweep sets per run is refused there), e.g. a local copy of the data; `config.only`, a regular
expression, keeps the runs whose names it matches and the runs those take a model from. The sweep's own `results.json` lists every run and the mean ± std of the test
accuracy of each group of runs whose names differ only in a `_s<seed>` suffix, and each group's
per-seed difference to the group 'standard' (mean and minimum over the seeds both ran).
"""
import importlib
import os
import re
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from train import checkpoint, labels, results, workdir as workdirs


def _apply(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
  *path, name = field.split(".")
  node = config
  for part in path:
    node = node[part]
  if name not in node:
    raise ValueError(f"sweep override {field!r}: the config has no field {name!r} there.")
  node[name] = value


def _set_fields(node: ml_collections.ConfigDict, prefix: str = "") -> dict:
  """{dotted field: value} of the fields of `node` that are set (not None)."""
  out = {}
  for name, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_set_fields(value, f"{prefix}{name}."))
    elif value is not None:
      out[prefix + name] = value
  return out


def _selected(entries: list, only: str) -> list:
  """The entries whose names match the regular expression `only` ('' = all), with the runs
  they reference ('@name'), transitively; in the sweep's order."""
  if not only:
    return list(entries)
  by_name = {entry[0]: entry for entry in entries}
  keep = {name for name in by_name if re.search(only, name)}
  if not keep:
    raise ValueError(f"--config.only={only!r} matches no run of the sweep; its runs are "
                     f"{', '.join(by_name)}.")
  todo = list(keep)
  while todo:
    for value in by_name[todo.pop()][2].values():
      if isinstance(value, str) and value.startswith("@") and value[1:] not in keep:
        keep.add(value[1:])
        todo.append(value[1:])
  return [entry for entry in entries if entry[0] in keep]


def expand(config: ml_collections.ConfigDict, workdir: str) -> list:
  """[(name, config of that run)] of the selected runs (`config.only`), each with
  `config.every_run`'s set fields and then its own overrides applied, '@run' paths resolved."""
  names = [entry[0] for entry in config.sweep]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep run names must be unique, got {names}.")
  shared = _set_fields(config.every_run) if "every_run" in config else {}
  runs, own_sources = [], set()
  for name, module, overrides in _selected(config.sweep, config.get("only", "")):
    try:
      get_config = importlib.import_module(f"configs.{module}").get_config
    except ModuleNotFoundError:
      raise ValueError(f"sweep run {name!r}: no config file configs/{module}.py.") from None
    child = get_config(config.sweep_variant or None)
    child.distributed = config.distributed
    own_sources.add(child.data.source)
    for field, value in shared.items():
      if field in overrides:
        raise ValueError(f"--config.every_run.{field}: the sweep sets {field} per run (run "
                         f"{name!r}: {overrides[field]!r}), so it cannot be set for every run.")
      _apply(child, field, value)
    for field, value in overrides.items():
      if isinstance(value, str) and value.startswith("@"):
        if value[1:] not in names:
          raise ValueError(f"sweep run {name!r}: {field}={value!r} names no run of the sweep.")
        value = os.path.join(workdir, value[1:])
      _apply(child, field, value)
    runs.append((name, child))
  if len(own_sources) > 1 and any(field.startswith("data.") for field in shared):
    raise ValueError(f"--config.every_run.data.*: these runs read different datasets "
                     f"({', '.join(sorted(own_sources))}), so one data setting cannot hold for "
                     "all; select one dataset's runs with --config.only=REGEX.")
  return runs


def describe(config: ml_collections.ConfigDict) -> list:
  """Lines saying which runs the sweep would run, with what (raising what `expand` would)."""
  expand(config, "WORKDIR")
  entries = _selected(config.sweep, config.get("only", ""))
  lines = [f"sweep of {len(entries)} of {len(config.sweep)} runs "
           f"(variant {config.sweep_variant!r}):"]
  shared = _set_fields(config.every_run) if "every_run" in config else {}
  if shared:
    lines.append(f"  in every run: {shared}")
  return lines + [f"  {name}: configs/{module}.py {dict(overrides)}"
                  for name, module, overrides in entries]


def summarize(rows: list) -> list:
  """Mean ± std (over seeds) of test accuracy per group, in the order groups first appear."""
  groups = {}
  for row in rows:
    if "test_accuracy" in row:
      groups.setdefault(row["group"], []).append(row["test_accuracy"])
  return [{"group": g, "n": len(v), "mean": float(np.mean(v)), "std": float(np.std(v))}
          for g, v in groups.items()]


BASELINE = "standard"  # the group every other group is paired with, seed by seed


def paired(rows: list, baseline: str = BASELINE) -> list:
  """Per group g other than `baseline`, over the seeds both ran: the per-seed differences
  d_s = acc_g(s) - acc_baseline(s) of test accuracy, their mean and their minimum."""
  acc = {}
  for row in rows:
    if "test_accuracy" in row:
      acc.setdefault(row["group"], {})[row["seed"]] = row["test_accuracy"]
  out = []
  for group, by_seed in acc.items():
    pair = labels.paired(by_seed, acc.get(baseline, {})) if group != baseline else None
    if pair:
      out.append({"group": group, "n": pair["n"], "mean_diff": pair["mean_diff"],
                  "min_diff": pair["min_diff"]})
  return out


def table(summary: list, pairs: list = ()) -> str:
  lines = ["| runs | seeds | test accuracy (%) |", "|---|---|---|"]
  lines += [f"| {s['group']} | {s['n']} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} |"
            for s in summary]
  if pairs:
    lines += ["", f"| runs - {BASELINE} (paired by seed) | seeds | mean (points) | min (points) |",
              "|---|---|---|---|"]
    lines += [f"| {p['group']} | {p['n']} | {100 * p['mean_diff']:+.2f} | "
              f"{100 * p['min_diff']:+.2f} |" for p in pairs]
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str,
        run_one: Callable[[ml_collections.ConfigDict, str], dict]) -> dict:
  """Runs every experiment of the sweep with `run_one(config, workdir)` (skipping finished
  ones) and writes the summary; one sweep at a time per workdir (`workdirs.claimed`)."""
  with workdirs.claimed(workdir) as workdir:
    return _run_all(config, workdir, run_one)


def _run_all(config: ml_collections.ConfigDict, workdir: str,
             run_one: Callable[[ml_collections.ConfigDict, str], dict]) -> dict:
  rows, start = [], time.time()
  for name, child in expand(config, workdir):
    path = os.path.join(workdir, name)
    out = results.read(path)
    if out is not None:
      diff = checkpoint.identity_diff(out.get("config"), checkpoint.canonical(child.to_dict()),
                                      "finished run")
      if diff:
        raise ValueError(f"sweep run {name!r} in {path} finished with another config ({diff}); "
                         "its results do not hold for this sweep. Use a new --workdir, or delete "
                         f"{path} to redo that run.")
    if out is None:
      logging.info("sweep: running %s", name)
      t0 = time.time()
      out = run_one(child, path)
      out["wall_seconds"] = time.time() - t0
      if jax.process_index() == 0:
        results.write_json_atomic(os.path.join(path, results.RESULTS_FILE), out)
    else:
      logging.info("sweep: %s already finished, skipping", name)
    row = {"name": name, "group": labels.group_key(name), "seed": out["config"]["seed"],
           "wall_seconds": out.get("wall_seconds")}
    row.update({k: out[k] for k in ("test_accuracy", "train_accuracy", "val_bits_per_dim")
                if k in out})
    row["figures"] = sorted(v for k, v in out.items() if k.endswith("_png") and v)
    rows.append(row)
  summary, pairs = summarize(rows), paired(rows)
  payload = {"runs": rows, "summary": summary, "paired": pairs,
             "wall_seconds_this_call": time.time() - start}
  if jax.process_index() == 0:
    results.write_json_atomic(os.path.join(workdir, results.RESULTS_FILE), payload)
    print(table(summary, pairs))
    for row in rows:
      for path in row["figures"]:
        print(f"figure ({row['name']}): {path}")
    print(f"sweep results: {os.path.join(workdir, results.RESULTS_FILE)}")
  return payload
