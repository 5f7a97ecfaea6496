// XLA FFI handlers: channels-last GroupNorm, optionally followed by SiLU, and its adjoint
// (issue 11). jax_impl/cpu_group_norm.py binds them as JAX primitives.
//
// x [N, M, C] float32 (M: the spatial positions, C: channels in G groups of C / G), scale and
// bias [C]. Per example n and group g, over the M x C/G values of the group (two passes, as
// flax's GroupNorm with use_fast_variance=False and torch's):
//
//   mu = mean(x),  var = mean((x - mu)^2),  r = 1 / sqrt(var + eps),  xhat = (x - mu) r
//   z = xhat scale + bias,  y = z (act 0)  or  y = silu(z) = z sigmoid(z) (act 1)
//
//   scorediff_group_norm_fwd  (x, scale, bias) -> y
//   scorediff_group_norm_bwd  (x, scale, bias, dy) -> (dx, dscale, dbias), the adjoint:
//     dz = dy act'(z),  dbias = sum_{n,m} dz,  dscale = sum_{n,m} dz xhat,  g = dz scale
//     dx = r (g - mean_group(g) - xhat mean_group(g xhat))
//
// Statistics are accumulated in double. The examples are split between the threads of XLA's
// intra-op pool (the FFI thread pool) in contiguous parts, or the groups when there are fewer
// examples than threads; each part sums its own dscale / dbias, added up at the end. exp() is
// a polynomial the compiler vectorises (target clones for AVX-512, AVX2 and the baseline),
// within 1 float32 ulp of exp (0.99 ulp at most over [-87, 88], measured).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "xla_threads.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SCOREDIFF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SCOREDIFF_CLONES
#endif

// exp(v) for float32: v = k ln2 + f, |f| <= ln2 / 2, exp(f) by a degree-6 polynomial, 2^k from
// the exponent bits; clamped to float32's range (exp(-88.4) ~ 2^-127.5 and exp(88.7) ~ 2^128).
inline float Exp(float v) {
  v = std::min(88.0f, std::max(-87.0f, v));
  const float k = std::nearbyint(v * 1.44269504088896341f);
  const float f = (v - k * 0.693359375f) + k * 2.12194440e-4f;  // ln2 split in two parts
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof(float));
  return p * two_k;
}

inline float Sigmoid(float z) { return 1.0f / (1.0f + Exp(-z)); }

struct Dims {
  int64_t n, m, c, g;  // examples, positions, channels (the row stride), groups
  float eps;
  int act;
};

// The groups [g0, g1) of the channels: channels [c0, c0 + cw).
struct Range {
  int64_t g0, g1, c0, cw;
};

Range Groups(const Dims& d, int64_t g0, int64_t g1) {
  const int64_t cg = d.c / d.g;
  return {g0, g1, g0 * cg, (g1 - g0) * cg};
}

constexpr int64_t kBlock = 64;  // rows per float accumulation block (then added in double)

// per channel j < cw of rows with stride ld: sum over rows of (x - shift)^power, power 1 or 2,
// float within blocks of rows
SCOREDIFF_CLONES
void ChannelSums(int64_t m, int64_t cw, int64_t ld, const float* __restrict__ x, const float* __restrict__ shift,
                 int power, float* __restrict__ block, double* __restrict__ out) {
  for (int64_t j = 0; j < cw; ++j) out[j] = 0.0;
  for (int64_t i0 = 0; i0 < m; i0 += kBlock) {
    const int64_t i1 = std::min(m, i0 + kBlock);
    for (int64_t j = 0; j < cw; ++j) block[j] = 0.0f;
    for (int64_t i = i0; i < i1; ++i) {
      const float* row = x + i * ld;
      if (power == 1) {
        for (int64_t j = 0; j < cw; ++j) block[j] += row[j];
      } else {
        for (int64_t j = 0; j < cw; ++j) {
          const float e = row[j] - shift[j];
          block[j] += e * e;
        }
      }
    }
    for (int64_t j = 0; j < cw; ++j) out[j] += block[j];
  }
}

// One example's groups r (x already offset to channel r.c0): per channel of the range, the
// affine map a, b (z = x a + b) and the group's mean / 1/std (two-pass statistics).
struct Normaliser {
  std::vector<float> a, b, muc, rc;
  std::vector<double> mu, rstd;

  void Init(const Dims& d, const Range& r, const float* x, const float* scale, const float* bias) {
    const int64_t cg = d.c / d.g, ng = r.g1 - r.g0;
    const double count = static_cast<double>(d.m * cg);
    std::vector<double> acc(r.cw);
    std::vector<float> block(r.cw);
    a.resize(r.cw); b.resize(r.cw); muc.resize(r.cw); rc.resize(r.cw); mu.resize(ng); rstd.resize(ng);
    ChannelSums(d.m, r.cw, d.c, x, nullptr, 1, block.data(), acc.data());
    for (int64_t g = 0; g < ng; ++g) {
      double s = 0.0;
      for (int64_t j = g * cg; j < (g + 1) * cg; ++j) s += acc[j];
      mu[g] = s / count;
    }
    for (int64_t j = 0; j < r.cw; ++j) muc[j] = static_cast<float>(mu[j / cg]);
    ChannelSums(d.m, r.cw, d.c, x, muc.data(), 2, block.data(), acc.data());
    for (int64_t g = 0; g < ng; ++g) {
      double s = 0.0;
      for (int64_t j = g * cg; j < (g + 1) * cg; ++j) s += acc[j];
      rstd[g] = 1.0 / std::sqrt(s / count + static_cast<double>(d.eps));
    }
    for (int64_t j = 0; j < r.cw; ++j) {
      const double rr = rstd[j / cg], sc = scale[r.c0 + j];
      a[j] = static_cast<float>(rr * sc);
      b[j] = static_cast<float>(bias[r.c0 + j] - mu[j / cg] * rr * sc);
      rc[j] = static_cast<float>(rr);
    }
  }
};

SCOREDIFF_CLONES
void ForwardRows(int64_t m, int64_t cw, int64_t ld, const float* __restrict__ x, const float* __restrict__ a,
                 const float* __restrict__ b, int act, float* __restrict__ y) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * ld;
    float* yr = y + i * ld;
    if (act == 1) {
      for (int64_t j = 0; j < cw; ++j) {
        const float z = xr[j] * a[j] + b[j];
        yr[j] = z * Sigmoid(z);
      }
    } else {
      for (int64_t j = 0; j < cw; ++j) yr[j] = xr[j] * a[j] + b[j];
    }
  }
}

// dz = dy act'(z) into dz, and per channel: sum dz, sum dz xhat (float accumulators)
SCOREDIFF_CLONES
void BackwardRows(int64_t m, int64_t cw, int64_t ld, const float* __restrict__ x, const float* __restrict__ dy,
                  const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ muc,
                  const float* __restrict__ rc, int act, float* __restrict__ dz, float* __restrict__ sdz,
                  float* __restrict__ sdzx) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * ld;
    const float* gr = dy + i * ld;
    float* dr = dz + i * ld;
    if (act == 1) {
      for (int64_t j = 0; j < cw; ++j) {
        const float z = xr[j] * a[j] + b[j];
        const float s = Sigmoid(z);
        const float v = gr[j] * (s * (1.0f + z * (1.0f - s)));
        dr[j] = v;
        sdz[j] += v;
        sdzx[j] += v * ((xr[j] - muc[j]) * rc[j]);
      }
    } else {
      for (int64_t j = 0; j < cw; ++j) {
        const float v = gr[j];
        dr[j] = v;
        sdz[j] += v;
        sdzx[j] += v * ((xr[j] - muc[j]) * rc[j]);
      }
    }
  }
}

SCOREDIFF_CLONES
void InputGradientRows(int64_t m, int64_t cw, int64_t ld, const float* __restrict__ x,
                       const float* __restrict__ scale, const float* __restrict__ muc,
                       const float* __restrict__ rc, const float* __restrict__ k1, const float* __restrict__ k2,
                       float* __restrict__ dzdx) {
  // dz -> dx in place: dx = r (dz scale - k1 - xhat k2), k1 / k2 the group means of g = dz
  // scale and g xhat per channel
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * ld;
    float* o = dzdx + i * ld;
    for (int64_t j = 0; j < cw; ++j) {
      const float xhat = (xr[j] - muc[j]) * rc[j];
      o[j] = rc[j] * (o[j] * scale[j] - k1[j] - xhat * k2[j]);
    }
  }
}

// one example (pointers at its first row), the groups r
void ForwardExample(const Dims& d, const Range& r, const float* x, const float* scale, const float* bias,
                    float* y) {
  Normaliser nz;
  nz.Init(d, r, x + r.c0, scale, bias);
  ForwardRows(d.m, r.cw, d.c, x + r.c0, nz.a.data(), nz.b.data(), d.act, y + r.c0);
}

// one example's dx (through dz, kept in dx's memory) for the groups r, and its dscale / dbias
// added to ds / db (indexed by channel)
void BackwardExample(const Dims& d, const Range& r, const float* x, const float* scale, const float* bias,
                     const float* dy, float* dx, double* ds, double* db) {
  const int64_t cg = d.c / d.g, ng = r.g1 - r.g0;
  Normaliser nz;
  nz.Init(d, r, x + r.c0, scale, bias);
  std::vector<double> sdz(r.cw, 0.0), sdzx(r.cw, 0.0);
  std::vector<float> fz(r.cw), fzx(r.cw), k1(r.cw), k2(r.cw);
  for (int64_t i = 0; i < d.m; i += kBlock) {
    const int64_t rows = std::min(kBlock, d.m - i);
    std::fill(fz.begin(), fz.end(), 0.0f);
    std::fill(fzx.begin(), fzx.end(), 0.0f);
    const int64_t at = i * d.c + r.c0;
    BackwardRows(rows, r.cw, d.c, x + at, dy + at, nz.a.data(), nz.b.data(), nz.muc.data(), nz.rc.data(), d.act,
                 dx + at, fz.data(), fzx.data());
    for (int64_t j = 0; j < r.cw; ++j) {
      sdz[j] += fz[j];
      sdzx[j] += fzx[j];
    }
  }
  // g = dz scale: group means of g and g xhat
  const double count = static_cast<double>(d.m * cg);
  for (int64_t g = 0; g < ng; ++g) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t j = g * cg; j < (g + 1) * cg; ++j) {
      s1 += sdz[j] * scale[r.c0 + j];
      s2 += sdzx[j] * scale[r.c0 + j];
    }
    for (int64_t j = g * cg; j < (g + 1) * cg; ++j) {
      k1[j] = static_cast<float>(s1 / count);
      k2[j] = static_cast<float>(s2 / count);
    }
  }
  for (int64_t j = 0; j < r.cw; ++j) {
    db[r.c0 + j] += sdz[j];
    ds[r.c0 + j] += sdzx[j];
  }
  InputGradientRows(d.m, r.cw, d.c, x + r.c0, scale + r.c0, nz.muc.data(), nz.rc.data(), k1.data(), k2.data(),
                    dx + r.c0);
}

// How the work is split between XLA's threads: by examples when there are at least as many
// as threads, else by groups (batch 1 still uses every thread).
struct Split {
  int parts;
  bool by_examples;
  int64_t per;  // examples or groups per part

  Split(ffi::ThreadPool& pool, const Dims& d) {
    const int64_t t = std::max<int64_t>(1, pool.num_threads());
    by_examples = d.n >= t || d.g < 2;
    const int64_t units = by_examples ? d.n : d.g;
    parts = static_cast<int>(std::max<int64_t>(1, std::min(t, units)));
    per = (units + parts - 1) / parts;
  }

  // part p's examples [n0, n1) and groups
  void Of(const Dims& d, int p, int64_t& n0, int64_t& n1, Range& r) const {
    if (by_examples) {
      n0 = std::min(d.n, p * per);
      n1 = std::min(d.n, (p + 1) * per);
      r = Groups(d, 0, d.g);
    } else {
      n0 = 0;
      n1 = d.n;
      r = Groups(d, std::min(d.g, p * per), std::min(d.g, (p + 1) * per));
    }
  }
};

ffi::Error CheckDims(ffi::Span<const int64_t> x, ffi::Span<const int64_t> scale, ffi::Span<const int64_t> bias,
                     int64_t groups, Dims& d) {
  if (x.size() != 3) return ffi::Error::InvalidArgument("group_norm: x must be [N, M, C]");
  d.n = x[0];
  d.m = x[1];
  d.c = x[2];
  d.g = groups;
  if (groups < 1 || d.c % groups) return ffi::Error::InvalidArgument("group_norm: C is not divisible into groups");
  if (scale.size() != 1 || bias.size() != 1 || scale[0] != d.c || bias[0] != d.c)
    return ffi::Error::InvalidArgument("group_norm: scale and bias must be [C]");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                   ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y, int64_t groups, float eps,
                   int64_t act) {
  Dims d;
  auto e = CheckDims(x.dimensions(), scale.dimensions(), bias.dimensions(), groups, d);
  if (e.failure()) return e;
  d.eps = eps;
  d.act = static_cast<int>(act);
  const float* xp = x.typed_data();
  float* yp = y->typed_data();
  const int64_t stride = d.m * d.c;
  const Split split(pool, d);
  scorediff::Parallel(pool, split.parts, [&](int p) {
    int64_t n0, n1;
    Range r;
    split.Of(d, p, n0, n1, r);
    if (r.cw == 0) return;
    for (int64_t n = n0; n < n1; ++n)
      ForwardExample(d, r, xp + n * stride, scale.typed_data(), bias.typed_data(), yp + n * stride);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                    ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                    ffi::ResultBuffer<ffi::F32> dscale, ffi::ResultBuffer<ffi::F32> dbias, int64_t groups,
                    float eps, int64_t act) {
  Dims d;
  auto e = CheckDims(x.dimensions(), scale.dimensions(), bias.dimensions(), groups, d);
  if (e.failure()) return e;
  if (dy.dimensions().size() != 3 || dy.dimensions()[0] != d.n || dy.dimensions()[1] != d.m ||
      dy.dimensions()[2] != d.c)
    return ffi::Error::InvalidArgument("group_norm: dy must have x's shape");
  d.eps = eps;
  d.act = static_cast<int>(act);
  const int64_t stride = d.m * d.c;
  const Split split(pool, d);
  std::vector<double> sums(2 * split.parts * d.c, 0.0);  // per part: dscale, dbias
  scorediff::Parallel(pool, split.parts, [&](int p) {
    int64_t n0, n1;
    Range r;
    split.Of(d, p, n0, n1, r);
    if (r.cw == 0) return;
    double* ds = sums.data() + 2 * p * d.c;
    for (int64_t n = n0; n < n1; ++n)
      BackwardExample(d, r, x.typed_data() + n * stride, scale.typed_data(), bias.typed_data(),
                      dy.typed_data() + n * stride, dx->typed_data() + n * stride, ds, ds + d.c);
  });
  float* dsp = dscale->typed_data();
  float* dbp = dbias->typed_data();
  for (int64_t c = 0; c < d.c; ++c) {
    double s = 0.0, b = 0.0;
    for (int p = 0; p < split.parts; ++p) {
      s += sums[2 * p * d.c + c];
      b += sums[(2 * p + 1) * d.c + c];
    }
    dsp[c] = static_cast<float>(s);
    dbp[c] = static_cast<float>(b);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScorediffGroupNormFwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("groups")
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("act"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScorediffGroupNormBwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("groups")
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("act"));
