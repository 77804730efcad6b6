"""Timing and cost measurement shared by the benchmarks.

`measure(fn, *args)` compiles `jax.jit(fn)` once (timing the compile), counts FLOPs per call,
then times calls (after one warm-up) and keeps the fastest of `repeats`: shared machines are
noisy, so minima and ratios measured in one process are what the benchmarks report, never
single wall times.

FLOPs. XLA's cost analysis (`compiled.cost_analysis()['flops']`) counts the body of a loop
once, whatever its trip count, and the flows scan their steps and the attacks loop over PGD
iterations, so it undercounts exactly the programs measured here (a 3x32 Glow by ~32x). The
benchmarks therefore count the arithmetic from the jaxpr (`jaxpr_flops`): 2*M*N*K for every
`dot_general` and 2*out*KH*KW*C_in/groups for every convolution, loop bodies multiplied by their
trip counts; of the per-platform implementations of `lax.platform_dependent` the cheapest (the
nominal arithmetic). Element-wise work is not counted. XLA's number is kept beside it (`xla_flops`).
"""
import dataclasses
import math
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.extend as jex
import jax.numpy as jnp

from jaxflowaug import onednn


@dataclasses.dataclass
class Measurement:
  name: str
  seconds: float              # fastest call
  compile_seconds: float
  flops: float                # per call, matmul/conv FLOPs counted from the jaxpr
  items: int                  # images per call
  xla_flops: float = 0.0      # per call, XLA's cost analysis (loop bodies counted once)
  note: str = ""

  @property
  def items_per_second(self) -> float:
    return self.items / self.seconds

  @property
  def flops_per_second(self) -> float:
    return self.flops / self.seconds

  def row(self, peak: Optional[float] = None) -> dict:
    out = {"name": self.name, "img_per_s": self.items_per_second, "seconds": self.seconds,
           "compile_s": self.compile_seconds, "gflop_per_call": self.flops / 1e9,
           "gflop_per_s": self.flops_per_second / 1e9, "xla_gflop_per_call": self.xla_flops / 1e9,
           "items": self.items, "note": self.note}
    if peak:
      out["fraction_of_matmul_peak"] = self.flops_per_second / peak
    return out


def _block(tree: Any) -> Any:
  return jax.block_until_ready(tree)


def measure(name: str, fn: Callable, *args, items: int, repeats: int = 3,
            carry: Optional[Callable[[Any, tuple], tuple]] = None, note: str = "",
            min_seconds: float = 0.0) -> Measurement:
  """Compiles and times `fn(*args)`.

  `carry(out, args) -> args` feeds a call's output into the next call's arguments (train
  steps whose state goes round); otherwise every call gets the same arguments. Stops after
  `repeats` timed calls, or keeps going until `min_seconds` have passed.
  """
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  xla_flops = float((cost or {}).get("flops", 0.0))
  flops = jaxpr_flops(fn, *args)
  out = _block(compiled(*args))  # warm-up
  if carry is not None:
    args = carry(out, args)
  best, total, calls = float("inf"), 0.0, 0
  while calls < repeats or total < min_seconds:
    t0 = time.perf_counter()
    out = _block(compiled(*args))
    elapsed = time.perf_counter() - t0
    best, total, calls = min(best, elapsed), total + elapsed, calls + 1
    if carry is not None:
      args = carry(out, args)
  print(f"  {name}: {items / best:.2f} items/s ({best * 1e3:.1f} ms a call, "
        f"{flops / best / 1e9:.1f} GFLOP/s), compile {compile_seconds:.1f} s", flush=True)
  return Measurement(name, best, compile_seconds, flops, items, xla_flops, note)


# oneDNN's three products (jaxflowaug.onednn): the positions of dy and the kernel among
# (operand a, operand b, output).
_ONEDNN_PRODUCTS = {onednn.conv_p.name: (2, 1), onednn.conv_data_p.name: (0, 1),
                    onednn.conv_weights_p.name: (1, 2)}


def _eqn_flops(eqn, platform_indices=frozenset()) -> float:
  name, params = eqn.primitive.name, eqn.params
  if name == "dot_general":
    (lhs_contract, _), _ = params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    k = math.prod(lhs[d] for d in lhs_contract)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    spec = params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
    per_out = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_out
  if name in _ONEDNN_PRODUCTS:  # each is 2 * |dy| * KH*KW*C, dy (N, OH, OW, O), k (KH, KW, C, O)
    shapes = [v.aval.shape for v in (*eqn.invars, *eqn.outvars)]
    dy, k = (shapes[i] for i in _ONEDNN_PRODUCTS[name])
    return 2.0 * math.prod(dy) * math.prod(k[:3])
  inner = [v for v in params.values() if isinstance(v, (jex.core.Jaxpr, jex.core.ClosedJaxpr))]
  branches = params.get("branches")
  if name == "scan":
    return params["length"] * _jaxpr_flops(params["jaxpr"])
  if name == "while":
    return _jaxpr_flops(params["body_jaxpr"])  # trip count unknown: counted once, as XLA does
  if branches:
    per_branch = [_jaxpr_flops(b) for b in branches]
    return min(per_branch) if eqn.invars[0] in platform_indices else max(per_branch)
  return sum(_jaxpr_flops(j) for j in inner)


def _jaxpr_flops(jaxpr) -> float:
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  # Conditionals on `platform_index` (`lax.platform_dependent`) pick one implementation of the
  # same math per platform: count the cheapest, the nominal arithmetic (e.g. a convolution's
  # 2*out*KH*KW*C_in, not the padded frame a CPU form computes).
  platform_indices = {v for eqn in jaxpr.eqns if eqn.primitive.name == "platform_index"
                      for v in eqn.outvars}
  return sum(_eqn_flops(eqn, platform_indices) for eqn in jaxpr.eqns)


def jaxpr_flops(fn: Callable, *args) -> float:
  """Matmul and convolution FLOPs of one call of `fn(*args)`, loops times their trip counts."""
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args))


def _cpu_busy_seconds() -> Optional[float]:
  """CPU seconds all processes (and the hypervisor's steal) have used since boot, summed over
  the CPUs (the first line of /proc/stat); None where there is no /proc/stat."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:9]]
  except (OSError, ValueError):
    return None
  user, nice, system, _, _, irq, softirq, steal = fields  # idle and iowait are not busy
  return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
  """What other processes did to the CPUs while a `with` block ran:

    other_seconds = (CPU-seconds every process used) - (CPU-seconds this process used)
    fraction = other_seconds / (wall seconds * CPUs)

  A busy machine slows every timing, and PyTorch's the most: each of its many short OpenMP
  regions waits for a thread on a core that another process holds (on the 2-vCPU machine a
  2-thread `relu` of 1M floats took 8 ms beside a niced job and 0.45 ms on 1 thread), so a
  section with a large `fraction` is flagged in BENCHMARKS.md. Both are None without
  /proc/stat."""

  other_seconds: Optional[float] = None
  fraction: Optional[float] = None

  def __enter__(self):
    self._start = (_cpu_busy_seconds(), _own_cpu_seconds(), time.perf_counter())
    return self

  def __exit__(self, *exc_info):
    busy0, own0, t0 = self._start
    busy, own, wall = _cpu_busy_seconds(), _own_cpu_seconds(), time.perf_counter() - t0
    if busy is not None and busy0 is not None:
      self.other_seconds = max(0.0, (busy - busy0) - (own - own0))
      self.fraction = self.other_seconds / max(wall * (os.cpu_count() or 1), 1e-9)
    return False


def _own_cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system


def matmul_peak(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """The machine's measured dense matmul rate (FLOP/s) for an n x n x n product."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  m = measure(f"matmul {n} {jnp.dtype(dtype).name}", lambda x, y: x @ y, a, a, items=1,
              repeats=repeats)
  return 2.0 * n ** 3 / m.seconds


def markdown_table(rows: list, columns: list) -> str:
  """Rows (dicts) as a markdown table; `columns` = [(header, key, format)]."""
  lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
           "|" + "---|" * len(columns)]
  for row in rows:
    cells = []
    for _, key, fmt in columns:
      value = row.get(key)
      cells.append("" if value is None else (fmt.format(value) if fmt else str(value)))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
