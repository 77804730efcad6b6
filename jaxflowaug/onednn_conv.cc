// oneDNN's float32 2-D convolutions as XLA FFI handlers, for jaxflowaug/onednn.py (which
// compiles this file on first use; see its docstring for the math and the layouts).
//
// Three handlers, each (a, b) -> out with attributes ph_lo, ph_hi, pw_lo, pw_hi, sh, sw:
//   OnednnConvForward:       a = x (N, H, W, C),    b = k (KH, KW, C, O) -> y (N, OH, OW, O)
//   OnednnConvBackwardData:  a = dy (N, OH, OW, O), b = k (KH, KW, C, O) -> dx (N, H, W, C)
//   OnednnConvBackwardWeights: a = x (N, H, W, C),  b = dy (N, OH, OW, O) -> dk (KH, KW, C, O)
// Activations are NHWC ("nhwc"), weights HWIO ("hwio"): XLA's row-major buffers as they are.
// Each primitive lets oneDNN choose its weight layout ("any"); the weights are reordered to it
// (or the weight gradient back from it) at each call, which is small next to the convolution.
// Primitives are cached per shape. Calls run one at a time (a mutex): XLA may run independent
// thunks on its two threads at once, and two oneDNN calls, each with its own OpenMP team,
// would oversubscribe the cores. XLA runs a thunk on whichever of its threads is free, so a
// primitive is often executed on another thread than the one that created it; oneDNN's default
// ("library") scratchpad is a thread-local buffer sized when a primitive is created on its
// thread, so the primitives here take a scratchpad from the caller ("user" mode), allocated
// per call (without it, the gemm-based weight gradient of tiny images crashed in im2col) and
// zeroed, as a fresh library scratchpad would be. (The spin-barrier stalls of issue 17 were
// oneDNN's strided 1x1 weight gradient overflowing its workspace, which onednn.py avoids.)
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Key {
  int kind;
  int64_t n, h, w, c, o, kh, kw, ph_lo, ph_hi, pw_lo, pw_hi, sh, sw;
  auto tie() const {
    return std::tie(kind, n, h, w, c, o, kh, kw, ph_lo, ph_hi, pw_lo, pw_hi, sh, sw);
  }
  bool operator<(const Key& other) const { return tie() < other.tie(); }
  int64_t oh() const { return (h + ph_lo + ph_hi - kh) / sh + 1; }
  int64_t ow() const { return (w + pw_lo + pw_hi - kw) / sw + 1; }
  memory::desc src() const { return memory::desc({n, c, h, w}, memory::data_type::f32, Tag::nhwc); }
  memory::desc dst() const {
    return memory::desc({n, o, oh(), ow()}, memory::data_type::f32, Tag::nhwc);
  }
  memory::desc weights(Tag tag) const {
    return memory::desc({o, c, kh, kw}, memory::data_type::f32, tag);
  }
};

struct Primitive {
  dnnl::primitive primitive;
  memory::desc weights;     // the layout the primitive wants its (diff) weights in
  memory::desc scratchpad;  // the temporary memory it needs per call
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

Primitive Create(const Key& k) {
  memory::dims strides{k.sh, k.sw}, pad_lo{k.ph_lo, k.pw_lo}, pad_hi{k.ph_hi, k.pw_hi};
  auto algorithm = dnnl::algorithm::convolution_direct;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc forward(
      Engine(), dnnl::prop_kind::forward_training, algorithm, k.src(), k.weights(Tag::any),
      k.dst(), strides, pad_lo, pad_hi, attr);
  if (k.kind == kForward) {
    return {dnnl::convolution_forward(forward), forward.weights_desc(),
            forward.scratchpad_desc()};
  }
  if (k.kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), algorithm, k.src(), k.weights(Tag::any), k.dst(), strides, pad_lo, pad_hi,
        forward, attr);
    return {dnnl::convolution_backward_data(pd), pd.weights_desc(), pd.scratchpad_desc()};
  }
  dnnl::convolution_backward_weights::primitive_desc pd(
      Engine(), algorithm, k.src(), k.weights(Tag::any), k.dst(), strides, pad_lo, pad_hi,
      forward, attr);
  return {dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(), pd.scratchpad_desc()};
}

ffi::Error Run(Kind kind, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
               ffi::ResultBuffer<ffi::F32> out, int64_t ph_lo, int64_t ph_hi, int64_t pw_lo,
               int64_t pw_hi, int64_t sh, int64_t sw) {
  auto x = kind == kBackwardData ? out->dimensions() : a.dimensions();
  auto k_dims = kind == kBackwardWeights ? out->dimensions() : b.dimensions();
  if (x.size() != 4 || k_dims.size() != 4) {
    return ffi::Error::InvalidArgument("onednn conv: expected 4-D NHWC and HWIO buffers");
  }
  Key key{kind, x[0], x[1], x[2], x[3], k_dims[3], k_dims[0], k_dims[1],
          ph_lo, ph_hi, pw_lo, pw_hi, sh, sw};
  static std::mutex mutex;
  static std::map<Key, Primitive> cache;
  std::lock_guard<std::mutex> lock(mutex);
  try {
    auto it = cache.find(key);
    if (it == cache.end()) it = cache.emplace(key, Create(key)).first;
    const Primitive& p = it->second;
    memory::desc user_weights = key.weights(Tag::hwio);
    bool reorder = p.weights != user_weights;
    memory scratchpad(p.scratchpad, Engine());
    if (p.scratchpad.get_size()) {  // fresh, zeroed: it holds the kernels' spin-barrier counters
      std::memset(scratchpad.get_data_handle(), 0, p.scratchpad.get_size());
    }
    dnnl::stream stream(Engine());
    if (kind == kBackwardWeights) {
      memory x_mem(key.src(), Engine(), a.typed_data());
      memory dy(key.dst(), Engine(), b.typed_data());
      memory dk_user(user_weights, Engine(), out->typed_data());
      memory dk = reorder ? memory(p.weights, Engine()) : dk_user;
      p.primitive.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_DST, dy},
                                   {DNNL_ARG_DIFF_WEIGHTS, dk},
                                   {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (reorder) dnnl::reorder(dk, dk_user).execute(stream, dk, dk_user);
    } else {
      memory k_user(user_weights, Engine(), b.typed_data());
      memory k_mem = reorder ? memory(p.weights, Engine()) : k_user;
      if (reorder) dnnl::reorder(k_user, k_mem).execute(stream, k_user, k_mem);
      if (kind == kForward) {
        memory x_mem(key.src(), Engine(), a.typed_data());
        memory y(key.dst(), Engine(), out->typed_data());
        p.primitive.execute(stream, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, k_mem},
                                     {DNNL_ARG_DST, y},
                                     {DNNL_ARG_SCRATCHPAD, scratchpad}});
      } else {
        memory dy(key.dst(), Engine(), a.typed_data());
        memory dx(key.src(), Engine(), out->typed_data());
        p.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, k_mem},
                                     {DNNL_ARG_DIFF_SRC, dx},
                                     {DNNL_ARG_SCRATCHPAD, scratchpad}});
      }
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

#define ONEDNN_HANDLER(NAME, KIND)                                                           \
  ffi::Error NAME##Impl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,                   \
                        ffi::ResultBuffer<ffi::F32> out, int64_t ph_lo, int64_t ph_hi,      \
                        int64_t pw_lo, int64_t pw_hi, int64_t sh, int64_t sw) {             \
    return Run(KIND, a, b, out, ph_lo, ph_hi, pw_lo, pw_hi, sh, sw);                        \
  }

ONEDNN_HANDLER(Forward, kForward)
ONEDNN_HANDLER(BackwardData, kBackwardData)
ONEDNN_HANDLER(BackwardWeights, kBackwardWeights)

}  // namespace

#define ONEDNN_BIND(NAME)                                                                    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv##NAME, NAME##Impl,                               \
                                ffi::Ffi::Bind()                                            \
                                    .Arg<ffi::Buffer<ffi::F32>>()                           \
                                    .Arg<ffi::Buffer<ffi::F32>>()                           \
                                    .Ret<ffi::Buffer<ffi::F32>>()                           \
                                    .Attr<int64_t>("ph_lo")                                 \
                                    .Attr<int64_t>("ph_hi")                                 \
                                    .Attr<int64_t>("pw_lo")                                 \
                                    .Attr<int64_t>("pw_hi")                                 \
                                    .Attr<int64_t>("sh")                                    \
                                    .Attr<int64_t>("sw"));

ONEDNN_BIND(Forward)
ONEDNN_BIND(BackwardData)
ONEDNN_BIND(BackwardWeights)
