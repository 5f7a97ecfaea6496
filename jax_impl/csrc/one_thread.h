// One thread for a oneDNN call, shared by the custom calls of onednn_conv.cc and
// onednn_matmul.cc.
#ifndef SCOREDIFF_ONE_THREAD_H_
#define SCOREDIFF_ONE_THREAD_H_

#include "oneapi/tbb/task_arena.h"

namespace scorediff {

// A one-thread TBB arena per calling thread: oneDNN sizes a primitive's (or sgemm's) work
// split by the arena it is created in and runs it on the arena it executes in.
inline tbb::task_arena& OneThread() {
  thread_local tbb::task_arena arena(1);
  return arena;
}

}  // namespace scorediff

#endif  // SCOREDIFF_ONE_THREAD_H_
