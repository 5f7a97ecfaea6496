// Work split between the threads of XLA's intra-op pool (the FFI thread pool), shared by the
// custom calls of onednn_conv.cc and group_norm.cc.
#ifndef SCOREDIFF_XLA_THREADS_H_
#define SCOREDIFF_XLA_THREADS_H_

#include <atomic>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace scorediff {

// Runs work(0) ... work(parts - 1), one part at a time per thread, on this thread and on
// parts - 1 tasks scheduled on XLA's pool. A part is claimed before it runs, and this thread
// waits only for parts another thread has claimed (and so is running): when the pool's
// threads are busy (another custom call waiting the same way), this thread runs every part
// itself and the late tasks find nothing left. `work` must not throw.
inline void Parallel(xla::ffi::ThreadPool& pool, int parts, const std::function<void(int)>& work) {
  if (parts <= 1) {
    if (parts == 1) work(0);
    return;
  }
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

}  // namespace scorediff

#endif  // SCOREDIFF_XLA_THREADS_H_
