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
Each of the three is a `jax.custom_vjp` whose backward pass uses the other two, so reverse mode
of any order works (grad, grad of grad). Forward mode (`jax.jvp`, `jax.jacfwd`) does not: a
`custom_vjp` has no JVP. That is why `jaxflowaug.conv` uses this only when asked
(`conv.set_cpu_backend("onednn")` or JAXFLOWAUG_CPU_CONV=onednn), never by default.

Build. The C++ file is compiled on first use with the system C++ compiler (`CXX`, else `g++`)
against jaxlib's FFI headers and the oneDNN of the pip packages `onednn-cpu-gomp` (library) and
`onednn-devel-cpu-gomp` (headers), pinned in requirements.txt, into
`~/.cache/jaxflowaug/onednn/<hash>.so` (XDG_CACHE_HOME respected; the hash covers the source,
jax's and oneDNN's versions), in about 10 s once. `available()` says whether that worked and
`unavailable_reason()` why not; `conv` raises a RuntimeError naming the fix.

Devices. XLA has no partitioning rule for these FFI calls, so under `jit` with operands sharded
over several CPU devices it replicates them (each device convolves the whole batch); the
backend is meant for one CPU device, the case it was written for.

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
import numpy as np

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_conv.cc")
_TARGETS = {"forward": "OnednnConvForward", "data": "OnednnConvBackwardData",
            "weights": "OnednnConvBackwardWeights"}
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


def _cache_dir() -> str:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "jaxflowaug", "onednn")


def _build() -> str:
  """Path of the compiled extension, compiling it if the cache has none for this source."""
  include, lib_dir, version = _onednn_paths()
  compiler = os.environ.get("CXX") or shutil.which("g++")
  with open(_SOURCE, "rb") as f:
    source = f.read()
  digest = hashlib.sha256(source + f"{jax.__version__} {version} {sys.platform}".encode())
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
      jax.ffi.register_ffi_target(f"jaxflowaug_onednn_{name}",
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


def _call(name, out_shape, a, b, strides, pads):
  if not available():
    raise RuntimeError(f"jaxflowaug.onednn is unavailable: {_STATE['error']}")
  (ph_lo, ph_hi), (pw_lo, pw_hi) = pads
  return jax.ffi.ffi_call(f"jaxflowaug_onednn_{name}",
                          jax.ShapeDtypeStruct(out_shape, np.float32))(
      a, b, ph_lo=np.int64(ph_lo), ph_hi=np.int64(ph_hi), pw_lo=np.int64(pw_lo),
      pw_hi=np.int64(pw_hi), sh=np.int64(strides[0]), sw=np.int64(strides[1]))


def output_shape(x_shape, k_shape, strides, pads) -> tuple[int, int, int, int]:
  """(N, OH, OW, O) of conv(x, k)."""
  n, h, w, _ = x_shape
  (ph_lo, ph_hi), (pw_lo, pw_hi) = pads
  return (n, (h + ph_lo + ph_hi - k_shape[0]) // strides[0] + 1,
          (w + pw_lo + pw_hi - k_shape[1]) // strides[1] + 1, k_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, k, strides, pads):
  """y = conv(x, k): NHWC float32 x (N, H, W, C), HWIO k (KH, KW, C, O) -> (N, OH, OW, O).

  `strides` (sh, sw), `pads` ((ph_lo, ph_hi), (pw_lo, pw_hi)), non-negative, as Python ints.
  """
  return _call("forward", output_shape(x.shape, k.shape, strides, pads), x, k, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_data(g, k, x_shape, strides, pads):
  """The input gradient of `conv`: d<g, conv(x, k)>/dx, shape `x_shape`."""
  return _call("data", tuple(x_shape), g, k, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_weights(x, g, window, strides, pads):
  """The weight gradient of `conv`: d<g, conv(x, k)>/dk, HWIO (KH, KW, C, O), `window` (KH, KW)."""
  return _call("weights", (*window, x.shape[3], g.shape[3]), x, g, strides, pads)


def _conv_fwd(x, k, strides, pads):
  return conv(x, k, strides, pads), (x, k)


def _conv_bwd(strides, pads, res, g):
  x, k = res
  return (conv_data(g, k, x.shape, strides, pads),
          conv_weights(x, g, k.shape[:2], strides, pads))


def _data_fwd(g, k, x_shape, strides, pads):
  return conv_data(g, k, x_shape, strides, pads), (g, k)


def _data_bwd(x_shape, strides, pads, res, h):
  g, k = res
  return conv(h, k, strides, pads), conv_weights(h, g, k.shape[:2], strides, pads)


def _weights_fwd(x, g, window, strides, pads):
  return conv_weights(x, g, window, strides, pads), (x, g)


def _weights_bwd(window, strides, pads, res, m):
  x, g = res
  return conv_data(g, m, x.shape, strides, pads), conv(x, m, strides, pads)


conv.defvjp(_conv_fwd, _conv_bwd)
conv_data.defvjp(_data_fwd, _data_bwd)
conv_weights.defvjp(_weights_fwd, _weights_bwd)
