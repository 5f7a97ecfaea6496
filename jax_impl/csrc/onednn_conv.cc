// XLA FFI handlers: channels-last 2-D convolution through oneDNN (issue 11).
//
// Three custom calls, all float32, activations NHWC and kernels HWIO (JAX's layouts), with
// the window strides and the explicit (lo, hi) padding of each spatial axis as attributes:
//
//   scorediff_onednn_conv_fwd          y[n, oh, ow, o]  = sum_{kh, kw, c} xpad[n, oh*sh + kh, ow*sw + kw, c] w[kh, kw, c, o]
//   scorediff_onednn_conv_bwd_data     dx = the adjoint of the above in x  (given dy and w)
//   scorediff_onednn_conv_bwd_weights  dw = the adjoint of the above in w  (given x and dy)
//
// jax_impl/onednn.py builds, loads and registers them and wraps them as one differentiable
// JAX function. Threading (the ``threading`` attribute): 1 (the default) splits the batch into
// one equal part per thread of XLA's own intra-op pool (the FFI thread pool) and runs each
// part as a one-thread oneDNN primitive on one of those threads (the kernel gradient's parts
// are summed), so oneDNN's convolutions and XLA's other kernels share one set of threads;
// 0, or a batch that does not split evenly, lets oneDNN thread the whole call itself (TBB),
// whose worker threads then compete for the cores with XLA's spinning ones. Primitives are
// built once per shape and kept (a mutex-guarded map); each thread has its own stream and
// scratchpad, so concurrent calls from XLA's threads are safe.

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"
#include "one_thread.h"
#include "xla_threads.h"

namespace ffi = xla::ffi;
using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// which primitive, one thread or oneDNN's own, N, H, W, C (input), OH, OW, O (output), KH,
// KW, strides, paddings.
using Key = std::tuple<int, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;

struct Shape {
  int64_t n, h, w, c, oh, ow, o, kh, kw, sh, sw, pt, pb, pl, pr;
};

struct Plan {
  dnnl::primitive prim;
  dnnl::memory::desc src, wei, dst, scratch;  // the primitive's descriptors
  dnnl::memory::desc user_wei;                // HWIO
  bool reorder_wei = false;
  bool flipped = false;                       // backward data as a forward convolution: src dy, dst dx
  dnnl::reorder wei_reorder;                  // HWIO -> prim's (bwd data) or back (bwd weights)
};

std::mutex cache_mutex;
std::map<Key, std::shared_ptr<Plan>> cache;

// The convolution's input (NHWC), kernel (``wei_tag``) and output (NHWC) descriptors; oneDNN
// takes their dimensions in N C H W / O I H W order whatever the memory layout.
struct Descs {
  dnnl::memory::desc src, wei, dst;
};

Descs ConvDescs(const Shape& s, tag wei_tag) {
  return {dnnl::memory::desc({s.n, s.c, s.h, s.w}, dt::f32, tag::nhwc),
          dnnl::memory::desc({s.o, s.c, s.kh, s.kw}, dt::f32, wei_tag),
          dnnl::memory::desc({s.n, s.o, s.oh, s.ow}, dt::f32, tag::nhwc)};
}

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardPd(const Shape& s, tag wei_tag) {
  auto d = ConvDescs(s, wei_tag);
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, d.src, d.wei, d.dst,
      {s.sh, s.sw}, {s.pt, s.pl}, {s.pb, s.pr}, UserScratchpad());
}

using scorediff::OneThread;

std::shared_ptr<Plan> MakePlan(int kind, const Shape& s);

std::shared_ptr<Plan> GetPlan(int kind, const Shape& s, bool one_thread) {
  Key key{kind, one_thread, s.n, s.h, s.w, s.c, s.oh, s.ow, s.o, s.kh, s.kw, s.sh, s.sw, s.pt, s.pb, s.pl, s.pr};
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  std::shared_ptr<Plan> plan;
  if (one_thread) {
    OneThread().execute([&] { plan = MakePlan(kind, s); });
  } else {
    plan = MakePlan(kind, s);
  }
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.emplace(key, plan).first;
  return it->second;
}

std::shared_ptr<Plan> MakePlan(int kind, const Shape& s) {
  auto plan = std::make_shared<Plan>();
  plan->user_wei = dnnl::memory::desc({s.o, s.c, s.kh, s.kw}, dt::f32, tag::hwio);
  // The forward convolution reads the HWIO kernel as it is (brgconv, no reorder: fastest);
  // oneDNN's backward passes get its blocked kernel layout (with a plain one they fall back to
  // gemm, 2-2.5x slower), reordered from / to HWIO on each call.
  if (kind == 0) {
    auto fwd = ForwardPd(s, tag::hwio);
    plan->prim = dnnl::convolution_forward(fwd);
    plan->src = fwd.src_desc();
    plan->wei = fwd.weights_desc();
    plan->dst = fwd.dst_desc();
    plan->scratch = fwd.scratchpad_desc();
  } else if (kind == 1 && s.sh == 1 && s.sw == 1 && s.pt < s.kh && s.pb < s.kh && s.pl < s.kw && s.pr < s.kw) {
    // Stride 1: dx is the forward convolution of dy, padded by (k - 1 - p), with the kernel
    // flipped in space and its channel axes swapped, w'[a, b, o, c] = w[KH-1-a, KW-1-b, c, o]
    // (what oneDNN's own backward data does inside, here without a kernel reorder).
    Shape t{s.n, s.oh, s.ow, s.o, s.h, s.w, s.c, s.kh, s.kw, 1, 1,
            s.kh - 1 - s.pt, s.kh - 1 - s.pb, s.kw - 1 - s.pl, s.kw - 1 - s.pr};
    auto fwd = ForwardPd(t, tag::hwio);
    plan->prim = dnnl::convolution_forward(fwd);
    plan->src = fwd.src_desc();   // dy
    plan->wei = fwd.weights_desc();
    plan->dst = fwd.dst_desc();   // dx
    plan->scratch = fwd.scratchpad_desc();
    plan->flipped = true;
  } else if (kind == 1) {
    auto d = ConvDescs(s, tag::any);
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, d.src, d.wei, d.dst, {s.sh, s.sw}, {s.pt, s.pl},
        {s.pb, s.pr}, ForwardPd(s, tag::any), UserScratchpad());
    plan->prim = dnnl::convolution_backward_data(pd);
    plan->src = pd.diff_src_desc();
    plan->wei = pd.weights_desc();
    plan->dst = pd.diff_dst_desc();
    plan->scratch = pd.scratchpad_desc();
  } else {
    auto d = ConvDescs(s, tag::any);
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, d.src, d.wei, d.dst, {s.sh, s.sw}, {s.pt, s.pl},
        {s.pb, s.pr}, ForwardPd(s, tag::any), UserScratchpad());
    plan->prim = dnnl::convolution_backward_weights(pd);
    plan->src = pd.src_desc();
    plan->wei = pd.diff_weights_desc();
    plan->dst = pd.diff_dst_desc();
    plan->scratch = pd.scratchpad_desc();
  }
  plan->reorder_wei = !plan->flipped && plan->wei != plan->user_wei;
  if (plan->reorder_wei) {
    plan->wei_reorder = kind == 2 ? dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), plan->wei, Engine(), plan->user_wei))
                                  : dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), plan->user_wei, Engine(), plan->wei));
  }
  return plan;
}

ffi::Error CheckRank(const char* what, ffi::Span<const int64_t> d) {
  if (d.size() != 4) return ffi::Error::InvalidArgument(std::string(what) + " must be a 4-D array");
  return ffi::Error::Success();
}

// Grown on demand and reused, per thread (not cleared: oneDNN writes before it reads).
uint8_t* Buffer(std::vector<uint8_t>& v, size_t size) {
  if (v.size() < size) v.resize(size);
  return v.data();
}

// One primitive call on this thread: kind 0 a = x -> out = y, kind 1 a = dy -> out = dx,
// kind 2 a = x, b = dy -> wei = dw (``wei`` in the primitive's layout); kinds 0 / 1 read the
// kernel from ``wei``.
void Execute(const Plan& plan, int kind, const float* a, const float* b, float* out, void* wei) {
  auto& eng = Engine();
  thread_local dnnl::stream stream(eng);
  thread_local std::vector<uint8_t> scratch;
  dnnl::memory scratch_mem(plan.scratch, eng, Buffer(scratch, plan.scratch.get_size()));
  dnnl::memory w(plan.wei, eng, wei);
  if (kind == 0 || plan.flipped) {  // a forward convolution: a (x, or dy) -> out (y, or dx)
    dnnl::memory src(plan.src, eng, const_cast<float*>(a));
    dnnl::memory dst(plan.dst, eng, out);
    plan.prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dst},
                               {DNNL_ARG_SCRATCHPAD, scratch_mem}});
  } else if (kind == 1) {
    dnnl::memory ddst(plan.dst, eng, const_cast<float*>(a));
    dnnl::memory dsrc(plan.src, eng, out);
    plan.prim.execute(stream, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, dsrc},
                               {DNNL_ARG_SCRATCHPAD, scratch_mem}});
  } else {
    dnnl::memory src(plan.src, eng, const_cast<float*>(a));
    dnnl::memory ddst(plan.dst, eng, const_cast<float*>(b));
    plan.prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_DIFF_WEIGHTS, w},
                               {DNNL_ARG_SCRATCHPAD, scratch_mem}});
  }
  stream.wait();
}

// kind 0: (x, w) -> y; kind 1: (dy, w) -> dx; kind 2: (x, dy) -> dw.
ffi::Error Run(ffi::ThreadPool& pool, int kind, const float* a, ffi::Span<const int64_t> ad, const float* b,
               ffi::Span<const int64_t> bd, float* out, ffi::Span<const int64_t> od, int64_t sh,
               int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t threading) {
  for (auto [what, d] : {std::pair{"operand 0", ad}, std::pair{"operand 1", bd}, std::pair{"result", od}}) {
    auto e = CheckRank(what, d);
    if (e.failure()) return e;
  }
  Shape s;
  ffi::Span<const int64_t> x = kind == 1 ? od : ad;              // NHWC input
  ffi::Span<const int64_t> y = kind == 0 ? od : (kind == 1 ? ad : bd);  // NHWC output
  ffi::Span<const int64_t> w = kind == 2 ? od : bd;              // HWIO kernel
  s.n = x[0]; s.h = x[1]; s.w = x[2]; s.c = x[3];
  s.oh = y[1]; s.ow = y[2]; s.o = y[3];
  s.kh = w[0]; s.kw = w[1];
  s.sh = sh; s.sw = sw; s.pt = pt; s.pb = pb; s.pl = pl; s.pr = pr;
  if (w[2] != s.c || w[3] != s.o || y[0] != s.n)
    return ffi::Error::InvalidArgument("onednn conv: operand shapes do not match");
  // the batch in `parts` equal parts, one per thread of XLA's pool (or one part, oneDNN's threads)
  int parts = 1;
  if (threading == 1) {
    int64_t t = pool.num_threads();
    if (t >= 2 && s.n >= t && s.n % t == 0) parts = static_cast<int>(t);
  }
  Shape part = s;
  part.n = s.n / parts;
  const int64_t x_part = part.n * s.h * s.w * s.c, y_part = part.n * s.oh * s.ow * s.o;
  try {
    auto plan = GetPlan(kind, part, parts > 1);
    auto& eng = Engine();
    thread_local dnnl::stream stream(eng);
    thread_local std::vector<uint8_t> wei_buf, dw_parts;
    const size_t wei_size = plan->wei.get_size();
    // the kernel in the primitive's layout, prepared once for every part
    void* wei = kind == 2 ? nullptr : const_cast<float*>(b);
    if (plan->flipped) {
      const float* wptr = b;
      float* t = reinterpret_cast<float*>(Buffer(wei_buf, wei_size));
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j = 0; j < s.kw; ++j)
          for (int64_t c = 0; c < s.c; ++c)
            for (int64_t o = 0; o < s.o; ++o)
              t[((i * s.kw + j) * s.o + o) * s.c + c] = wptr[(((s.kh - 1 - i) * s.kw + (s.kw - 1 - j)) * s.c + c) * s.o + o];
      wei = t;
    } else if (plan->reorder_wei && kind != 2) {
      dnnl::memory user_wei(plan->user_wei, eng, const_cast<float*>(b));
      wei = Buffer(wei_buf, wei_size);
      dnnl::memory blocked(plan->wei, eng, wei);
      plan->wei_reorder.execute(stream, user_wei, blocked);
      stream.wait();
    }
    // the kernel gradient: each part's in its own buffer (the primitive's layout), summed into
    // the first; the output's own memory when it needs neither a reorder nor a sum
    const bool direct_dw = kind == 2 && parts == 1 && !plan->reorder_wei;
    uint8_t* dw = kind == 2 && !direct_dw ? Buffer(dw_parts, wei_size * parts) : nullptr;
    auto work = [&](int i) {
      if (kind == 0) {
        Execute(*plan, 0, a + i * x_part, nullptr, out + i * y_part, wei);
      } else if (kind == 1) {
        Execute(*plan, 1, a + i * y_part, nullptr, out + i * x_part, wei);
      } else {
        Execute(*plan, 2, a + i * x_part, b + i * y_part, nullptr, direct_dw ? static_cast<void*>(out) : dw + i * wei_size);
      }
    };
    std::string error;  // the first part's
    std::mutex error_mutex;
    if (parts > 1) {
      scorediff::Parallel(pool, parts, [&](int i) {
        try {
          OneThread().execute([&] { work(i); });
        } catch (const dnnl::error& err) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (error.empty()) error = std::string("oneDNN: ") + err.what();
        }
      });
    } else {
      work(0);
    }
    if (!error.empty()) return ffi::Error::Internal(error);
    if (kind == 2 && !direct_dw) {
      float* sum = reinterpret_cast<float*>(dw);
      const size_t count = wei_size / sizeof(float);
      for (int i = 1; i < parts; ++i) {
        const float* p = reinterpret_cast<const float*>(dw + i * wei_size);
        for (size_t j = 0; j < count; ++j) sum[j] += p[j];
      }
      if (plan->reorder_wei) {
        dnnl::memory blocked(plan->wei, eng, dw);
        dnnl::memory user_wei(plan->user_wei, eng, out);
        plan->wei_reorder.execute(stream, blocked, user_wei);
        stream.wait();
      } else {
        std::memcpy(out, dw, wei_size);
      }
    }
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("oneDNN: ") + err.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                   int64_t pr, int64_t threading) {
  return Run(pool, 0, x.typed_data(), x.dimensions(), w.typed_data(), w.dimensions(), y->typed_data(),
             y->dimensions(), sh, sw, pt, pb, pl, pr, threading);
}

ffi::Error ConvBwdData(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                       int64_t pl, int64_t pr, int64_t threading) {
  return Run(pool, 1, dy.typed_data(), dy.dimensions(), w.typed_data(), w.dimensions(), dx->typed_data(),
             dx->dimensions(), sh, sw, pt, pb, pl, pr, threading);
}

ffi::Error ConvBwdWeights(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                          int64_t pl, int64_t pr, int64_t threading) {
  return Run(pool, 2, x.typed_data(), x.dimensions(), dy.typed_data(), dy.dimensions(), dw->typed_data(),
             dw->dimensions(), sh, sw, pt, pb, pl, pr, threading);
}

}  // namespace

#define SCOREDIFF_CONV_BINDING                                                                \
  ffi::Ffi::Bind()                                                                            \
      .Ctx<ffi::ThreadPool>()                                                                 \
      .Arg<ffi::Buffer<ffi::F32>>()                                                           \
      .Arg<ffi::Buffer<ffi::F32>>()                                                           \
      .Ret<ffi::Buffer<ffi::F32>>()                                                           \
      .Attr<int64_t>("sh")                                                                    \
      .Attr<int64_t>("sw")                                                                    \
      .Attr<int64_t>("pt")                                                                    \
      .Attr<int64_t>("pb")                                                                    \
      .Attr<int64_t>("pl")                                                                    \
      .Attr<int64_t>("pr")                                                                    \
      .Attr<int64_t>("threading")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScorediffOnednnConvFwd, ConvFwd, SCOREDIFF_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ScorediffOnednnConvBwdData, ConvBwdData, SCOREDIFF_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ScorediffOnednnConvBwdWeights, ConvBwdWeights, SCOREDIFF_CONV_BINDING);

extern "C" int scorediff_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
