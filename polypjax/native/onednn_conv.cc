// XLA FFI handlers running 2-D NHWC/HWIO convolutions through oneDNN: forward, input gradient and
// kernel gradient, in float32, or in bfloat16 (float32 accumulation) where the CPU has AVX512-BF16.
// XLA:CPU's own kernel gradient runs at 3-20 GFLOP/s on AVX2 CPUs; oneDNN's JIT kernels are the
// ones PyTorch uses on the CPU.
//
// Primitives are created once per shape and kept per calling thread: XLA may run two convolutions
// at once on different threads, and a thread-local cache needs no lock.
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <sstream>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// One convolution's geometry, from the buffers' shapes and the call's attributes.
struct Geometry {
  memory::dim n, h, w, c, kh, kw, o, oh, ow;
  memory::dims strides, dilates, pad_l, pad_r;
  dt type;  // of every operand

  memory::desc Src(tag t = tag::nhwc) const { return {{n, c, h, w}, type, t}; }
  memory::desc Dst(tag t = tag::nhwc) const { return {{n, o, oh, ow}, type, t}; }
  memory::desc Weights(tag t = tag::hwio) const { return {{o, c, kh, kw}, type, t}; }

  std::string Key(const char* op) const {
    std::ostringstream s;
    s << op << ',' << static_cast<int>(type);
    for (auto v : {n, h, w, c, kh, kw, o, oh, ow}) s << ',' << v;
    for (const auto* d : {&strides, &dilates, &pad_l, &pad_r})
      for (auto v : *d) s << ',' << v;
    return s.str();
  }

  dnnl::convolution_forward::primitive_desc Forward() const {
    return {Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
            Src(), Weights(tag::any), Dst(), strides, dilates, pad_l, pad_r};
  }
};

// x: [N, H, W, C]; w: [KH, KW, C, O]; y: [N, OH, OW, O]; all three of one element type.
Geometry MakeGeometry(const ffi::AnyBuffer& xb, const ffi::AnyBuffer& wb, const ffi::AnyBuffer& yb,
                      ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                      ffi::Span<const int64_t> dilation) {
  const ffi::DataType type = xb.element_type();
  if (wb.element_type() != type || yb.element_type() != type ||
      (type != ffi::DataType::F32 && type != ffi::DataType::BF16)) {
    throw std::invalid_argument("operands must all be float32 or all bfloat16");
  }
  auto x = xb.dimensions(), w = wb.dimensions(), y = yb.dimensions();
  Geometry g;
  g.type = type == ffi::DataType::F32 ? dt::f32 : dt::bf16;
  g.n = x[0]; g.h = x[1]; g.w = x[2]; g.c = x[3];
  g.kh = w[0]; g.kw = w[1]; g.o = w[3];
  g.oh = y[1]; g.ow = y[2];
  g.strides = {strides[0], strides[1]};
  g.dilates = {dilation[0] - 1, dilation[1] - 1};  // oneDNN counts the gaps, XLA the step
  g.pad_l = {padding[0], padding[2]};
  g.pad_r = {padding[1], padding[3]};
  return g;
}

// A reordered copy's buffer. Up to kKeepBytes it is kept between calls (no page faults on reuse);
// larger ones are allocated per call: kept, the copies of every layer shape on every thread would
// pin GiBs at the paper's 256 px scale.
constexpr size_t kKeepBytes = size_t{16} << 20;

struct Scratch {
  memory::desc desc;
  std::unique_ptr<memory> kept;

  memory Get() {
    if (kept) return *kept;
    memory buffer(desc, Engine());
    if (desc.get_size() <= kKeepBytes) kept = std::make_unique<memory>(buffer);
    return buffer;
  }
};

// Data moving between XLA's layout and the one a primitive chose: through a reorder into (inputs)
// or out of (outputs) a Scratch copy; nothing where the two agree.
struct Relayout {
  memory::desc user;
  Scratch copy;                            // in the chosen layout
  std::unique_ptr<dnnl::reorder> reorder;  // null when the layouts agree

  Relayout(const memory::desc& user_desc, const memory::desc& chosen, bool output)
      : user(user_desc), copy{chosen, nullptr} {
    if (user != chosen) {
      reorder = std::make_unique<dnnl::reorder>(
          output ? dnnl::reorder::primitive_desc(Engine(), chosen, Engine(), user)
                 : dnnl::reorder::primitive_desc(Engine(), user, Engine(), chosen));
    }
  }

  // An input's data in the chosen layout.
  memory In(const void* ptr) {
    memory data(user, Engine(), const_cast<void*>(ptr));
    if (!reorder) return data;
    memory chosen = copy.Get();
    reorder->execute(Stream(), data, chosen);
    return chosen;
  }

  // Where the primitive writes an output that Out() then moves to ptr.
  memory Target(void* ptr) { return reorder ? copy.Get() : memory(user, Engine(), ptr); }
  void Out(memory target, void* ptr) {
    if (!reorder) return;
    memory data(user, Engine(), ptr);
    reorder->execute(Stream(), target, data);
  }
};

// A primitive that reads XLA's HWIO weights.
struct Plan {
  dnnl::primitive prim;
  Relayout weights;
};

// Primitives and their relayouts, built once per shape and kept per calling thread.
template <typename T, typename Build>
T& Cached(const std::string& key, Build build) {
  thread_local std::unordered_map<std::string, std::unique_ptr<T>> cache;
  auto& slot = cache[key];
  if (!slot) slot.reset(new T(build()));
  return *slot;
}

template <typename F>
ffi::Error Guard(F body) {
  try {
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, e.what());
  }
}

memory Wrap(const memory::desc& md, const void* ptr) {
  return memory(md, Engine(), const_cast<void*>(ptr));
}

ffi::Error ConvForward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                       ffi::Span<const int64_t> dilation) {
  return Guard([&] {
    Geometry g = MakeGeometry(x, w, *y, strides, padding, dilation);
    Plan& p = Cached<Plan>(g.Key("fwd"), [&] {
      auto pd = g.Forward();
      return Plan{dnnl::convolution_forward(pd), Relayout(g.Weights(), pd.weights_desc(), false)};
    });
    memory weights = p.weights.In(w.untyped_data());  // alive until the stream is done
    p.prim.execute(Stream(), {{DNNL_ARG_SRC, Wrap(g.Src(), x.untyped_data())},
                              {DNNL_ARG_WEIGHTS, weights},
                              {DNNL_ARG_DST, Wrap(g.Dst(), y->untyped_data())}});
    Stream().wait();
  });
}

bool HasIsa(dnnl::cpu_isa isa) {
  const auto want = static_cast<unsigned>(isa);
  return (static_cast<unsigned>(dnnl::get_effective_cpu_isa()) & want) == want;
}

// dx from dy and w; x's shape comes from the result buffer.
ffi::Error ConvInputGrad(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                         ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                         ffi::Span<const int64_t> dilation) {
  return Guard([&] {
    Geometry g = MakeGeometry(*dx, w, dy, strides, padding, dilation);
    Plan& p = Cached<Plan>(g.Key("bwd_data"), [&] {
      auto pd = dnnl::convolution_backward_data::primitive_desc(
          Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.Weights(tag::any), g.Dst(),
          g.strides, g.dilates, g.pad_l, g.pad_r, g.Forward());
      return Plan{dnnl::convolution_backward_data(pd),
                  Relayout(g.Weights(), pd.weights_desc(), false)};
    });
    memory weights = p.weights.In(w.untyped_data());
    p.prim.execute(Stream(), {{DNNL_ARG_DIFF_DST, Wrap(g.Dst(), dy.untyped_data())},
                              {DNNL_ARG_WEIGHTS, weights},
                              {DNNL_ARG_DIFF_SRC, Wrap(g.Src(), dx->untyped_data())}});
    Stream().wait();
  });
}

// dw from x and dy; w's shape comes from the result buffer. On AVX2, oneDNN 3.2's NHWC
// kernel-gradient kernel runs 1.3-1.45x slower than its blocked one, so there the primitive picks
// the activations' layout and gets reordered copies (two passes over memory, a few % of the step;
// buffers outside XLA's memory planning). With AVX-512 the NHWC kernel is 1.1-1.2x faster than
// blocked plus reorders, and reads XLA's buffers as they are.
struct KernelGradPlan {
  dnnl::convolution_backward_weights prim;
  Relayout src, diff_dst, diff_weights;
};

ffi::Error ConvKernelGrad(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                          ffi::Span<const int64_t> dilation) {
  return Guard([&] {
    Geometry g = MakeGeometry(x, *dw, dy, strides, padding, dilation);
    KernelGradPlan& p = Cached<KernelGradPlan>(g.Key("bwd_weights"), [&] {
      const tag activations = HasIsa(dnnl::cpu_isa::avx512_core) ? tag::nhwc : tag::any;
      auto pd = dnnl::convolution_backward_weights::primitive_desc(
          Engine(), dnnl::algorithm::convolution_direct, g.Src(activations), g.Weights(tag::any),
          g.Dst(activations), g.strides, g.dilates, g.pad_l, g.pad_r, g.Forward());
      return KernelGradPlan{dnnl::convolution_backward_weights(pd),
                            Relayout(g.Src(), pd.src_desc(), false),
                            Relayout(g.Dst(), pd.diff_dst_desc(), false),
                            Relayout(g.Weights(), pd.diff_weights_desc(), true)};
    });
    memory src = p.src.In(x.untyped_data());  // alive until the stream is done
    memory diff_dst = p.diff_dst.In(dy.untyped_data());
    memory target = p.diff_weights.Target(dw->untyped_data());
    p.prim.execute(Stream(), {{DNNL_ARG_SRC, src},
                              {DNNL_ARG_DIFF_DST, diff_dst},
                              {DNNL_ARG_DIFF_WEIGHTS, target}});
    p.diff_weights.Out(target, dw->untyped_data());
    Stream().wait();
  });
}

}  // namespace

#define POLYPJAX_CONV_BINDING                                                    \
  ffi::Ffi::Bind()                                                               \
      .Arg<ffi::AnyBuffer>()                                                     \
      .Arg<ffi::AnyBuffer>()                                                     \
      .Ret<ffi::AnyBuffer>()                                                     \
      .Attr<ffi::Span<const int64_t>>("strides")                                 \
      .Attr<ffi::Span<const int64_t>>("padding")                                 \
      .Attr<ffi::Span<const int64_t>>("dilation")

XLA_FFI_DEFINE_HANDLER_SYMBOL(PolypjaxConvForward, ConvForward, POLYPJAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(PolypjaxConvInputGrad, ConvInputGrad, POLYPJAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(PolypjaxConvKernelGrad, ConvKernelGrad, POLYPJAX_CONV_BINDING);

// Whether bfloat16 convolutions run on native instructions here (AVX512-BF16 or AMX); elsewhere
// oneDNN would emulate them slower than float32, or have no kernel at all.
extern "C" int PolypjaxOnednnHasBf16() { return HasIsa(dnnl::cpu_isa::avx512_core_bf16) ? 1 : 0; }
