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
// intra-op pool (the FFI thread pool) in contiguous parts; each part sums its own dscale /
// dbias, added up at the end. exp() is a polynomial the compiler vectorises (target clones for
// AVX-512, AVX2 and the baseline), within 2 float32 ulp of the correctly rounded value.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

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
  int64_t n, m, c, g;
  float eps;
  int act;
};

constexpr int64_t kBlock = 64;  // rows per float accumulation block (then added in double)

// per channel: sum over rows of (x - shift)^power, power 1 or 2, float within blocks of rows
SCOREDIFF_CLONES
void ChannelSums(int64_t m, int64_t c, const float* __restrict__ x, const float* __restrict__ shift, int power,
                 float* __restrict__ block, double* __restrict__ out) {
  for (int64_t j = 0; j < c; ++j) out[j] = 0.0;
  for (int64_t i0 = 0; i0 < m; i0 += kBlock) {
    const int64_t i1 = std::min(m, i0 + kBlock);
    for (int64_t j = 0; j < c; ++j) block[j] = 0.0f;
    for (int64_t i = i0; i < i1; ++i) {
      const float* row = x + i * c;
      if (power == 1) {
        for (int64_t j = 0; j < c; ++j) block[j] += row[j];
      } else {
        for (int64_t j = 0; j < c; ++j) {
          const float e = row[j] - shift[j];
          block[j] += e * e;
        }
      }
    }
    for (int64_t j = 0; j < c; ++j) out[j] += block[j];
  }
}

// mean and 1/sqrt(var + eps) of each group of example x[m, c] (two passes)
void Stats(const Dims& d, const float* x, std::vector<double>& mu, std::vector<double>& rstd,
           std::vector<double>& acc) {
  const int64_t cg = d.c / d.g;
  const double count = static_cast<double>(d.m * cg);
  acc.resize(d.c);
  std::vector<float> block(d.c), muc(d.c);
  ChannelSums(d.m, d.c, x, nullptr, 1, block.data(), acc.data());
  for (int64_t g = 0; g < d.g; ++g) {
    double s = 0.0;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) s += acc[c];
    mu[g] = s / count;
  }
  for (int64_t c = 0; c < d.c; ++c) muc[c] = static_cast<float>(mu[c / cg]);
  ChannelSums(d.m, d.c, x, muc.data(), 2, block.data(), acc.data());
  for (int64_t g = 0; g < d.g; ++g) {
    double s = 0.0;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) s += acc[c];
    rstd[g] = 1.0 / std::sqrt(s / count + static_cast<double>(d.eps));
  }
}

// per channel of one example: a = r scale, b = bias - mu r scale (z = x a + b), and the mean /
// 1/std expanded to channels
void Affine(const Dims& d, const std::vector<double>& mu, const std::vector<double>& rstd, const float* scale,
            const float* bias, float* a, float* b, float* muc, float* rc) {
  const int64_t cg = d.c / d.g;
  for (int64_t c = 0; c < d.c; ++c) {
    const double r = rstd[c / cg];
    a[c] = static_cast<float>(r * scale[c]);
    b[c] = static_cast<float>(bias[c] - mu[c / cg] * r * scale[c]);
    muc[c] = static_cast<float>(mu[c / cg]);
    rc[c] = static_cast<float>(r);
  }
}

SCOREDIFF_CLONES
void ForwardRows(int64_t m, int64_t c, const float* __restrict__ x, const float* __restrict__ a,
                 const float* __restrict__ b, int act, float* __restrict__ y) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * c;
    float* yr = y + i * c;
    if (act == 1) {
      for (int64_t j = 0; j < c; ++j) {
        const float z = xr[j] * a[j] + b[j];
        yr[j] = z * Sigmoid(z);
      }
    } else {
      for (int64_t j = 0; j < c; ++j) yr[j] = xr[j] * a[j] + b[j];
    }
  }
}

// dz = dy act'(z) into dz, and per channel: sum dz, sum dz xhat (float accumulators per row
// block, added into the double sums)
SCOREDIFF_CLONES
void BackwardRows(int64_t m, int64_t c, const float* __restrict__ x, const float* __restrict__ dy,
                  const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ muc,
                  const float* __restrict__ rc, int act, float* __restrict__ dz, float* __restrict__ sdz,
                  float* __restrict__ sdzx) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * c;
    const float* gr = dy + i * c;
    float* dr = dz + i * c;
    if (act == 1) {
      for (int64_t j = 0; j < c; ++j) {
        const float z = xr[j] * a[j] + b[j];
        const float s = Sigmoid(z);
        const float v = gr[j] * (s * (1.0f + z * (1.0f - s)));
        dr[j] = v;
        sdz[j] += v;
        sdzx[j] += v * ((xr[j] - muc[j]) * rc[j]);
      }
    } else {
      for (int64_t j = 0; j < c; ++j) {
        const float v = gr[j];
        dr[j] = v;
        sdz[j] += v;
        sdzx[j] += v * ((xr[j] - muc[j]) * rc[j]);
      }
    }
  }
}

SCOREDIFF_CLONES
void InputGradientRows(int64_t m, int64_t c, const float* __restrict__ x, const float* __restrict__ scale,
                       const float* __restrict__ muc, const float* __restrict__ rc, const float* __restrict__ k1,
                       const float* __restrict__ k2, float* __restrict__ dzdx) {
  // dz -> dx in place: dx = r (dz scale - k1 - xhat k2), k1 / k2 the group means of g = dz
  // scale and g xhat per channel
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * c;
    float* o = dzdx + i * c;
    for (int64_t j = 0; j < c; ++j) {
      const float xhat = (xr[j] - muc[j]) * rc[j];
      o[j] = rc[j] * (o[j] * scale[j] - k1[j] - xhat * k2[j]);
    }
  }
}

void ForwardExample(const Dims& d, const float* x, const float* scale, const float* bias, float* y) {
  std::vector<double> mu(d.g), rstd(d.g), acc;
  std::vector<float> a(d.c), b(d.c), muc(d.c), rc(d.c);
  Stats(d, x, mu, rstd, acc);
  Affine(d, mu, rstd, scale, bias, a.data(), b.data(), muc.data(), rc.data());
  ForwardRows(d.m, d.c, x, a.data(), b.data(), d.act, y);
}

// one example's dx (through dz, kept in dx's memory) and its dscale / dbias added to ds / db
void BackwardExample(const Dims& d, const float* x, const float* scale, const float* bias, const float* dy,
                     float* dx, double* ds, double* db) {
  const int64_t cg = d.c / d.g;
  std::vector<double> mu(d.g), rstd(d.g), acc, sdz(d.c, 0.0), sdzx(d.c, 0.0);
  std::vector<float> a(d.c), b(d.c), muc(d.c), rc(d.c), fz(d.c), fzx(d.c), k1(d.c), k2(d.c);
  Stats(d, x, mu, rstd, acc);
  Affine(d, mu, rstd, scale, bias, a.data(), b.data(), muc.data(), rc.data());
  for (int64_t i = 0; i < d.m; i += kBlock) {
    const int64_t rows = std::min(kBlock, d.m - i);
    std::fill(fz.begin(), fz.end(), 0.0f);
    std::fill(fzx.begin(), fzx.end(), 0.0f);
    BackwardRows(rows, d.c, x + i * d.c, dy + i * d.c, a.data(), b.data(), muc.data(), rc.data(), d.act,
                 dx + i * d.c, fz.data(), fzx.data());
    for (int64_t c = 0; c < d.c; ++c) {
      sdz[c] += fz[c];
      sdzx[c] += fzx[c];
    }
  }
  // g = dz scale: group means of g and g xhat
  const double count = static_cast<double>(d.m * cg);
  for (int64_t g = 0; g < d.g; ++g) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
      s1 += sdz[c] * scale[c];
      s2 += sdzx[c] * scale[c];
    }
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
      k1[c] = static_cast<float>(s1 / count);
      k2[c] = static_cast<float>(s2 / count);
    }
  }
  for (int64_t c = 0; c < d.c; ++c) {
    db[c] += sdz[c];
    ds[c] += sdzx[c];
  }
  InputGradientRows(d.m, d.c, x, scale, muc.data(), rc.data(), k1.data(), k2.data(), dx);
}

// work(part) for part in [0, parts): on this thread and on parts - 1 tasks of XLA's pool; a
// part is claimed before it runs and this thread waits only for claimed parts (so a busy pool
// never deadlocks it: it runs every part itself and the late tasks find nothing left).
void Parallel(ffi::ThreadPool& pool, int parts, const std::function<void(int)>& work) {
  struct Shared {
    std::atomic<int> next{0}, done{0};
    int parts;
    const std::function<void(int)>* work;
    void Drain() {
      for (int i; (i = next.fetch_add(1)) < parts; done.fetch_add(1)) (*work)(i);
    }
  };
  auto shared = std::make_shared<Shared>();
  shared->parts = parts;
  shared->work = &work;
  for (int t = 1; t < parts; ++t) pool.Schedule([shared] { shared->Drain(); });
  shared->Drain();
  for (int spins = 0; shared->done.load() < parts; ++spins) {
    if (spins > 64) std::this_thread::yield();
  }
}

int Parts(ffi::ThreadPool& pool, int64_t n) {
  const int64_t t = pool.num_threads();
  return static_cast<int>(std::max<int64_t>(1, std::min(t, n)));
}

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
  const int parts = Parts(pool, d.n);
  const int64_t per = (d.n + parts - 1) / parts, stride = d.m * d.c;
  Parallel(pool, parts, [&](int p) {
    for (int64_t n = p * per; n < std::min(d.n, (p + 1) * per); ++n)
      ForwardExample(d, xp + n * stride, scale.typed_data(), bias.typed_data(), yp + n * stride);
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
  const int parts = Parts(pool, d.n);
  const int64_t per = (d.n + parts - 1) / parts, stride = d.m * d.c;
  std::vector<double> sums(2 * parts * d.c, 0.0);  // per part: dscale, dbias
  Parallel(pool, parts, [&](int p) {
    double* ds = sums.data() + 2 * p * d.c;
    for (int64_t n = p * per; n < std::min(d.n, (p + 1) * per); ++n)
      BackwardExample(d, x.typed_data() + n * stride, scale.typed_data(), bias.typed_data(),
                      dy.typed_data() + n * stride, dx->typed_data() + n * stride, ds, ds + d.c);
  });
  float* dsp = dscale->typed_data();
  float* dbp = dbias->typed_data();
  for (int64_t c = 0; c < d.c; ++c) {
    double s = 0.0, b = 0.0;
    for (int p = 0; p < parts; ++p) {
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
