"""oneDNN's CPU convolutions inside jitted JAX code, through XLA's FFI.

XLA:CPU's own 3x3 convolution runs at a third of oneDNN's speed where ResNet-18 spends much
of its time (batch 128, 32x32, 64 -> 64 channels, 2-core AMD EPYC: 166 ms forward against 61
ms; BENCHMARKS.md, issue 17). PyTorch's CPU convolutions are oneDNN's, so this module lets a
JAX program call the same kernels: `conv(x, k, strides, pads)` is
`lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=NHWC/HWIO)` for float32,
computed by three oneDNN primitives (forward, backward data, backward weights) that
`jaxflowaug/onednn_conv.cc` wraps as XLA FFI handlers.

Math. y = conv(x, k) with x (N, H, W, C), k (KH, KW, C, O), y (N, OH, OW, O),
OH = (H + ph_lo + ph_hi - KH) // sh + 1. The map is bilinear, so with
<a, b> the sum of a * b:
  * d<g, conv(x, k)>/dx = conv_data(g, k)    (oneDNN backward data, x's shape),
  * d<g, conv(x, k)>/dk = conv_weights(x, g) (oneDNN backward weights, k's shape);
and conv_data, conv_weights are bilinear too, with
  * <h, conv_data(g, k)> = <conv(h, k), g>: d/dg = conv(h, k), d/dk = conv_weights(h, g);
  * <m, conv_weights(x, g)> = <conv(x, m), g>: d/dx = conv_data(g, m), d/dg = conv(x, m).
Each of the three is a JAX primitive (`conv_p`, `conv_data_p`, `conv_weights_p`) declared
bilinear (`ad.defbilinear`) with those transposes, so forward mode (jvp, jacfwd), reverse mode
of any order (grad, grad of grad) and their mixes (hessian) all work. vmap over the first
operand alone (the input, or the cotangent of the data gradient) folds the batch into N, one
call; any other batching (a batched kernel, per-example weight gradients) runs the lax
reference, vmapped. The primitives lower to FFI calls on CPU and to
`lax.conv_general_dilated` (and its transposes) on other platforms.

Build. The C++ file is compiled on first use with the system C++ compiler (`CXX`, else `g++`)
against jaxlib's FFI headers and the oneDNN of the pip packages `onednn-cpu-gomp` (library) and
`onednn-devel-cpu-gomp` (headers), pinned in requirements.txt, into
`~/.cache/jaxflowaug/onednn/<hash>.so` (XDG_CACHE_HOME respected; the hash covers the source,
jax's and oneDNN's versions and oneDNN's directory), in about 10 s once. `available()` says
whether that worked and `unavailable_reason()` why not; lowering for CPU without it raises a
RuntimeError naming the fix.

Devices. XLA has no partitioning rule for these FFI calls, so under `jit` with operands sharded
over several CPU devices it replicates them (each device convolves the whole batch); the
backend is meant for one CPU device.

Threads. oneDNN here runs on GNU OpenMP, one team per call, with as many threads as cores.
Calls are serialised (one mutex) so that XLA running two thunks at once does not oversubscribe
the cores, and OMP_WAIT_POLICY defaults to PASSIVE (set before the library loads, if the user
has not) so that OpenMP's threads sleep instead of spinning on the cores XLA needs between
calls.
"""
import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jax.core import ShapedArray

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_conv.cc")
_TARGETS = {"forward": "OnednnConvForward", "data": "OnednnConvBackwardData",
            "weights": "OnednnConvBackwardWeights"}
_NHWC_HWIO = ("NHWC", "HWIO", "NHWC")
_STATE: dict = {}


def _onednn_paths() -> tuple[str, str, str]:
  """(include dir, lib dir, version) of the pip oneDNN, or a RuntimeError naming the fix."""
  try:
    dist = importlib.metadata.distribution("onednn-cpu-gomp")
  except importlib.metadata.PackageNotFoundError:
    raise RuntimeError("the oneDNN library is not installed: `pip install "
                       "onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0`") from None
  lib = [f for f in dist.files or () if f.name.startswith("libdnnl.so.")]
  if not lib:
    raise RuntimeError(f"onednn-cpu-gomp {dist.version} ships no libdnnl.so.*; reinstall it")
  lib_dir = os.path.dirname(os.path.abspath(dist.locate_file(lib[0])))
  include = os.path.join(os.path.dirname(lib_dir), "include")
  if not os.path.exists(os.path.join(include, "oneapi", "dnnl", "dnnl.hpp")):
    raise RuntimeError(f"oneDNN's headers are not in {include}: `pip install "
                       f"onednn-devel-cpu-gomp=={dist.version}`")
  return include, lib_dir, dist.version


def _target(name: str) -> str:
  """The FFI target name of the handler `_TARGETS[name]`."""
  return f"jaxflowaug_onednn_{name}"


def _cache_dir() -> str:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "jaxflowaug", "onednn")


def _build() -> str:
  """Path of the compiled extension, compiling it if the cache has none for this source."""
  include, lib_dir, version = _onednn_paths()
  compiler = os.environ.get("CXX") or shutil.which("g++")
  with open(_SOURCE, "rb") as f:
    source = f.read()
  # The library's directory too: it is the .so's rpath, and another environment's may vanish.
  digest = hashlib.sha256(
      source + f"{jax.__version__} {version} {sys.platform} {lib_dir}".encode())
  path = os.path.join(_cache_dir(), digest.hexdigest()[:16] + ".so")
  if os.path.exists(path):
    return path
  if not compiler:
    raise RuntimeError("no C++ compiler to build the oneDNN extension: install g++ "
                       "(`apt-get install g++`) or set CXX")
  os.makedirs(_cache_dir(), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=_cache_dir())
  os.close(fd)
  cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", _SOURCE, "-o", tmp,
         f"-I{jax.ffi.include_dir()}", f"-I{include}", f"-L{lib_dir}", "-l:libdnnl.so.3",
         f"-Wl,-rpath,{lib_dir}"]
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    os.unlink(tmp)
    raise RuntimeError(f"building the oneDNN extension failed ({' '.join(cmd)}):\n"
                       f"{done.stderr[-2000:]}")
  os.replace(tmp, path)  # atomic: a concurrent build of the same source writes the same file
  return path


def _load() -> None:
  if "error" in _STATE or "lib" in _STATE:
    return
  try:
    path = _build()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    lib = ctypes.cdll.LoadLibrary(path)
    for name, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(_target(name),
                                  jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    _STATE["lib"] = lib
  except (RuntimeError, OSError) as e:
    _STATE["error"] = str(e)


def available() -> bool:
  """Whether the extension is built (building it now if needed) and registered."""
  _load()
  return "lib" in _STATE


def unavailable_reason() -> str | None:
  """Why `available()` is False (None when it is True)."""
  _load()
  return _STATE.get("error")


def output_shape(x_shape, k_shape, strides, pads) -> tuple[int, int, int, int]:
  """(N, OH, OW, O) of conv(x, k)."""
  n, h, w, _ = x_shape
  (ph_lo, ph_hi), (pw_lo, pw_hi) = pads
  return (n, (h + ph_lo + ph_hi - k_shape[0]) // strides[0] + 1,
          (w + pw_lo + pw_hi - k_shape[1]) // strides[1] + 1, k_shape[3])


# The three products as JAX primitives. Parameters (hashable, static): strides (sh, sw), pads
# ((ph_lo, ph_hi), (pw_lo, pw_hi)), and for the data gradient the input's (H, W) `in_hw`, for
# the weight gradient the kernel's (KH, KW) `window`, which the operands do not determine.
conv_p = Primitive("jaxflowaug_onednn_conv")                 # (x, k) -> y
conv_data_p = Primitive("jaxflowaug_onednn_conv_data")       # (g, k) -> dx
conv_weights_p = Primitive("jaxflowaug_onednn_conv_weights")  # (x, g) -> dk


def _shape(prim, a_shape, b_shape, strides, pads, in_hw=None, window=None):
  if prim is conv_p:
    return output_shape(a_shape, b_shape, strides, pads)
  if prim is conv_data_p:
    return (a_shape[0], *in_hw, b_shape[2])
  return (*window, a_shape[3], b_shape[3])


def _abstract_eval(prim, a, b, **params):
  if a.dtype != np.float32 or b.dtype != np.float32 or a.ndim != 4 or b.ndim != 4:
    raise TypeError(f"{prim.name} takes 4-D float32 operands, got {a.str_short()} and "
                    f"{b.str_short()}")
  return ShapedArray(_shape(prim, a.shape, b.shape, **params), np.float32)


def _lax_conv(x, k, strides, pads):
  return lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=_NHWC_HWIO)


def _reference(prim, a, b, strides, pads, in_hw=None, window=None):
  """The product in lax (`lax.conv_general_dilated` and its transposes): the lowering off CPU
  and under `vmap` where the batch cannot be folded into N."""
  if prim is conv_p:
    return _lax_conv(a, b, strides, pads)
  if prim is conv_data_p:  # the transpose of x -> conv(x, k) applied to g
    x = jax.ShapeDtypeStruct((a.shape[0], *in_hw, b.shape[2]), a.dtype)
    return jax.linear_transpose(lambda x: _lax_conv(x, b, strides, pads), x)(a)[0]
  k = jax.ShapeDtypeStruct((*window, a.shape[3], b.shape[3]), a.dtype)
  return jax.linear_transpose(lambda k: _lax_conv(a, k, strides, pads), k)(b)[0]


def _ffi(prim, a, b, strides, pads, in_hw=None, window=None):
  """The product through the extension's FFI handler (CPU)."""
  if not available():
    raise RuntimeError(f"jaxflowaug.onednn is unavailable: {_STATE['error']}")
  (ph_lo, ph_hi), (pw_lo, pw_hi) = pads
  out = _shape(prim, a.shape, b.shape, strides, pads, in_hw, window)
  return jax.ffi.ffi_call(_target(_FFI_TARGETS[prim]), jax.ShapeDtypeStruct(out, np.float32))(
      a, b, ph_lo=np.int64(ph_lo), ph_hi=np.int64(ph_hi), pw_lo=np.int64(pw_lo),
      pw_hi=np.int64(pw_hi), sh=np.int64(strides[0]), sw=np.int64(strides[1]))


def _batch(prim, args, dims, **params):
  """vmap: a batch over the first operand alone (x, or the cotangent g of the data gradient)
  folds into N, one call; anything else (a batched kernel, per-example weight gradients) is
  the lax reference, vmapped."""
  (a, b), (da, db) = args, dims
  if db is None and prim is not conv_weights_p:
    a = jnp.moveaxis(a, da, 0)
    out = prim.bind(a.reshape(-1, *a.shape[2:]), b, **params)
    return out.reshape(a.shape[0], -1, *out.shape[1:]), 0
  return jax.vmap(functools.partial(_reference, prim, **params), in_axes=(da, db))(a, b), 0


_FFI_TARGETS = {conv_p: "forward", conv_data_p: "data", conv_weights_p: "weights"}
for _prim in _FFI_TARGETS:
  _prim.def_abstract_eval(functools.partial(_abstract_eval, _prim))
  _prim.def_impl(functools.partial(lambda prim, a, b, **p: jax.jit(
      functools.partial(prim.bind, **p))(a, b), _prim))
  mlir.register_lowering(_prim, mlir.lower_fun(functools.partial(_reference, _prim),
                                               multiple_results=False))
  mlir.register_lowering(_prim, mlir.lower_fun(functools.partial(_ffi, _prim),
                                               multiple_results=False), platform="cpu")
  batching.primitive_batchers[_prim] = functools.partial(_batch, _prim)

# Transposes (see the module doc); in each rule exactly one operand is the unknown whose
# cotangent is returned, and `.aval` gives its shape.
ad.defbilinear(
    conv_p,
    lambda ct, x, k, strides, pads: conv_data_p.bind(ct, k, strides=strides, pads=pads,
                                                     in_hw=x.aval.shape[1:3]),
    lambda ct, x, k, strides, pads: conv_weights_p.bind(x, ct, strides=strides, pads=pads,
                                                        window=k.aval.shape[:2]))
ad.defbilinear(
    conv_data_p,
    lambda ct, g, k, strides, pads, in_hw: conv_p.bind(ct, k, strides=strides, pads=pads),
    lambda ct, g, k, strides, pads, in_hw: conv_weights_p.bind(ct, g, strides=strides,
                                                               pads=pads,
                                                               window=k.aval.shape[:2]))
ad.defbilinear(
    conv_weights_p,
    lambda ct, x, g, strides, pads, window: conv_data_p.bind(g, ct, strides=strides,
                                                             pads=pads,
                                                             in_hw=x.aval.shape[1:3]),
    lambda ct, x, g, strides, pads, window: conv_p.bind(x, ct, strides=strides, pads=pads))


def _static(strides, pads):
  return (tuple(int(s) for s in strides), tuple((int(lo), int(hi)) for lo, hi in pads))


def conv(x, k, strides, pads):
  """y = conv(x, k): NHWC float32 x (N, H, W, C), HWIO k (KH, KW, C, O) -> (N, OH, OW, O).

  `strides` (sh, sw), `pads` ((ph_lo, ph_hi), (pw_lo, pw_hi)), non-negative ints.
  """
  strides, pads = _static(strides, pads)
  if k.shape[:2] == (1, 1) and strides != (1, 1):
    # A strided 1x1 convolution is a unit-stride one of the pixels it reads, gathered here by
    # a pad and a strided slice. oneDNN would gather them itself into a workspace ("rtus"),
    # but its 1x1 weight gradient writes past that workspace when C is below its channel block
    # (8 with AVX2, 16 with AVX-512), in NHWC with a batch above 1: a hang in its spin barrier
    # with several threads, a crash with one, wrong weight gradients in between (oneDNN issue
    # 6035; ResNet's projections with C = 4). Copying the pixels costs what oneDNN's copy did.
    (ph_lo, ph_hi), (pw_lo, pw_hi) = pads
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (ph_lo, ph_hi, 0), (pw_lo, pw_hi, 0),
                                            (0, 0, 0)))[:, ::strides[0], ::strides[1]]
    strides, pads = (1, 1), ((0, 0), (0, 0))
  return conv_p.bind(x, k, strides=strides, pads=pads)

