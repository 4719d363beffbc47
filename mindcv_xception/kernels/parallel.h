// Shared by the CPU kernels: run work over [0, count) on one std::thread per CPU this process may run
// on, started per call (OpenMP's idle threads spin and took CPU time from MindSpore's own thread pool).
#pragma once

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace mindcv_xception {

inline int cpus_available() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Calls work(begin, end) on contiguous shares of [0, count), one share per thread, this thread included.
template <typename Work>
inline void parallel_for(int64_t count, Work work) {
  const int64_t threads = std::min<int64_t>(cpus_available(), count);
  if (threads <= 1) {
    work(int64_t{0}, count);
    return;
  }
  std::vector<std::thread> helpers;
  for (int64_t t = 1; t < threads; ++t) {
    helpers.emplace_back(work, count * t / threads, count * (t + 1) / threads);
  }
  work(int64_t{0}, count / threads);
  for (auto& helper : helpers) helper.join();
}

// 32 for float32, 16 for float16 (every input and output), 0 for anything else
inline int float_bits(int nparam, int* ndims, const char** dtypes) {
  if (ndims[0] != 4) return 0;
  const int bits = std::strcmp(dtypes[0], "float32") == 0 ? 32 : std::strcmp(dtypes[0], "float16") == 0 ? 16 : 0;
  for (int i = 1; i < nparam; ++i) {
    if (std::strcmp(dtypes[i], dtypes[0]) != 0) return 0;
  }
  return bits;
}

}  // namespace mindcv_xception
