// XLA FFI handler: float32 matrix products through oneDNN's sgemm (issue 11).
//
// One custom call, ``scorediff_onednn_matmul``, row-major operands, the transposes as
// attributes (``ta``, ``tb``; the three a dense layer and its two adjoints need):
//
//   ta = 0, tb = 0:  C[M, N] = A[M, K] B[K, N]        (y = x W)
//   ta = 0, tb = 1:  C[M, K] = A[M, N] B[K, N]^T      (dx = dy W^T)
//   ta = 1, tb = 0:  C[K, N] = A[R, K]^T B[R, N]      (dW = x^T dy)
//
// jax_impl/cpu_matmul.py registers it and wraps it as a differentiable JAX primitive.
// Threading (the ``threading`` attribute, as the convolutions of onednn_conv.cc): 1 splits
// C's rows (M) into one part per thread of XLA's intra-op pool, each part a one-thread
// sgemm on one of those threads (for ta = 1 a part reads a band of A's columns); a product
// too small to split (kMinRowsPerPart, kMinFlopsPerPart) runs as one one-thread sgemm on the
// calling thread. 0 lets oneDNN thread every call itself (TBB).

#include <cstdint>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"
#include "one_thread.h"
#include "xla_threads.h"

namespace ffi = xla::ffi;

namespace {

// A split needs at least this many rows and this much work (flops) per part, about 5 us of
// one core: below, scheduling the part costs more than the second thread gains. (The MLP
// samplers at batch 64, products of 32 x 128 x 128 per part: Euler-Maruyama 177 -> 150 ms
// against no split below 128 rows.)
constexpr int64_t kMinRowsPerPart = 8;
constexpr double kMinFlopsPerPart = 5e5;

using scorediff::OneThread;

// C[m, n] (leading dimension ldc) = op(A) op(B), row-major, beta 0.
dnnl_status_t Gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float* c, int64_t ldc) {
  return dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                  ffi::ResultBuffer<ffi::F32> c, int64_t ta, int64_t tb, int64_t threading) {
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || cd.size() != 2)
    return ffi::Error::InvalidArgument("onednn matmul: operands and result must be 2-D");
  if (ta && tb) return ffi::Error::InvalidArgument("onednn matmul: ta = tb = 1 is not supported");
  // C[M, N] = op(A)[M, K] op(B)[K, N]
  const int64_t M = ta ? ad[1] : ad[0], K = ta ? ad[0] : ad[1];
  const int64_t N = tb ? bd[0] : bd[1], Kb = tb ? bd[1] : bd[0];
  if (K != Kb || cd[0] != M || cd[1] != N)
    return ffi::Error::InvalidArgument("onednn matmul: operand shapes do not match");
  const float* A = a.typed_data();
  const float* B = b.typed_data();
  float* C = c->typed_data();
  const int64_t lda = ad[1], ldb = bd[1];
  if (M == 0 || N == 0) return ffi::Error::Success();
  if (K == 0) {
    for (int64_t i = 0; i < M * N; ++i) C[i] = 0.0f;
    return ffi::Error::Success();
  }
  // C's rows split into parts: rows m0..m1 of C are rows m0..m1 of op(A) (of A, or its
  // columns m0..m1 when ta = 1) times op(B)
  int parts = 1;
  if (threading == 1) {
    const int64_t t = pool.num_threads();
    if (t >= 2 && M >= t * kMinRowsPerPart && 2.0 * M * N * K >= t * kMinFlopsPerPart) parts = static_cast<int>(t);
  }
  std::vector<dnnl_status_t> status(parts, dnnl_success);
  auto work = [&](int p) {
    const int64_t m0 = M * p / parts, m1 = M * (p + 1) / parts;
    const float* a_part = ta ? A + m0 : A + m0 * lda;
    status[p] = Gemm(ta, tb, m1 - m0, N, K, a_part, lda, B, ldb, C + m0 * N, N);
  };
  if (parts > 1) {
    scorediff::Parallel(pool, parts, [&](int p) { OneThread().execute([&] { work(p); }); });
  } else if (threading == 1) {
    OneThread().execute([&] { work(0); });
  } else {
    work(0);
  }
  for (int p = 0; p < parts; ++p) {
    if (status[p] != dnnl_success)
      return ffi::Error::Internal("oneDNN sgemm failed with status " + std::to_string(static_cast<int>(status[p])));
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScorediffOnednnMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("ta")
                                  .Attr<int64_t>("tb")
                                  .Attr<int64_t>("threading"));
