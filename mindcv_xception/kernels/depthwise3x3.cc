// 3x3 depthwise convolution, stride 1, zero padding 1, NCHW float32 or float16 (computed in float32,
// for mixed precision, whose casts MindSpore may move across the operator): forward and backward, as
// MindSpore "aot" custom operators for the CPU (mindcv_xception/native_depthwise.py).
//
// Each (image, channel) plane is copied into a zero-padded (H+2) x (W+2) buffer, then every output
// row is nine shifted multiply-adds over contiguous memory, which the compiler vectorises for the
// CPU it is built on (-march=native). Planes are shared among one thread per CPU this process may
// run on, started per call: OpenMP's idle threads spin and took CPU time from MindSpore's own
// thread pool (a training step 28% slower than with passive waiting).
//
// Signature of every entry point (MindSpore's aot convention): params holds the inputs, then the
// outputs; shapes[i] has ndims[i] extents. Returns 0 on success.
#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

int cpus_available() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Calls work(begin, end) on contiguous shares of [0, count), one share per thread, this thread included.
template <typename Work>
void parallel_for(int64_t count, Work work) {
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

// dst: (h + 2) x (w + 2) floats, src in the middle, zeros around
template <typename T>
void pad_plane(const T* src, int64_t h, int64_t w, float* dst) {
  const int64_t pw = w + 2;
  std::memset(dst, 0, sizeof(float) * pw * (h + 2));
  for (int64_t y = 0; y < h; ++y) {
    float* row = dst + (y + 1) * pw + 1;
    const T* from = src + y * w;
#pragma omp simd
    for (int64_t x = 0; x < w; ++x) row[x] = static_cast<float>(from[x]);
  }
}

// out = the 3x3 correlation of a padded plane with k (row-major 3x3).
template <typename T>
void correlate_plane(const float* padded, int64_t h, int64_t w, const float* k, T* out) {
  const int64_t pw = w + 2;
  for (int64_t y = 0; y < h; ++y) {
    T* o = out + y * w;
    const float* r0 = padded + y * pw;
    const float* r1 = r0 + pw;
    const float* r2 = r1 + pw;
#pragma omp simd
    for (int64_t x = 0; x < w; ++x) {
      o[x] = static_cast<T>(k[0] * r0[x] + k[1] * r0[x + 1] + k[2] * r0[x + 2] + k[3] * r1[x] + k[4] * r1[x + 1] +
                            k[5] * r1[x + 2] + k[6] * r2[x] + k[7] * r2[x + 1] + k[8] * r2[x + 2]);
    }
  }
}

// 32 for float32, 16 for float16 (every input and output), 0 for anything else
int float_bits(int nparam, int* ndims, const char** dtypes) {
  if (ndims[0] != 4) return 0;
  const int bits = std::strcmp(dtypes[0], "float32") == 0 ? 32 : std::strcmp(dtypes[0], "float16") == 0 ? 16 : 0;
  for (int i = 1; i < nparam; ++i) {
    if (std::strcmp(dtypes[i], dtypes[0]) != 0) return 0;
  }
  return bits;
}

template <typename T>
void forward(void** params, int64_t** shapes) {
  const T* x = static_cast<const T*>(params[0]);
  const T* weight = static_cast<const T*>(params[1]);
  T* y = static_cast<T*>(params[2]);
  const int64_t n = shapes[0][0], c = shapes[0][1], h = shapes[0][2], w = shapes[0][3];
  const int64_t plane = h * w;
  parallel_for(n * c, [=](int64_t begin, int64_t end) {
    std::vector<float> padded((h + 2) * (w + 2));
    for (int64_t p = begin; p < end; ++p) {
      float k[9];
      for (int t = 0; t < 9; ++t) k[t] = static_cast<float>(weight[(p % c) * 9 + t]);
      pad_plane(x + p * plane, h, w, padded.data());
      correlate_plane(padded.data(), h, w, k, y + p * plane);
    }
  });
}

template <typename T>
void backward(void** params, int64_t** shapes) {
  const T* x = static_cast<const T*>(params[0]);
  const T* weight = static_cast<const T*>(params[1]);
  const T* dy = static_cast<const T*>(params[2]);
  T* dx = static_cast<T*>(params[3]);
  T* dweight = static_cast<T*>(params[4]);
  const int64_t n = shapes[0][0], c = shapes[0][1], h = shapes[0][2], w = shapes[0][3];
  const int64_t plane = h * w, pw = w + 2;
  parallel_for(c, [=](int64_t begin, int64_t end) {
    // two spare zeros at the end: the last tap's dot product reads up to 2 floats past the padded plane
    std::vector<float> padded((h + 2) * pw + 2, 0.0f);
    std::vector<float> grad_rows(h * pw, 0.0f);  // dy with the padded plane's row stride, zeros beyond w
    for (int64_t ch = begin; ch < end; ++ch) {
      float flipped[9];
      for (int t = 0; t < 9; ++t) flipped[t] = static_cast<float>(weight[ch * 9 + 8 - t]);  // turned by 180 degrees
      double acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t img = 0; img < n; ++img) {
        const int64_t offset = (img * c + ch) * plane;
        // dx: the gradient flows back through the same correlation with the turned kernel
        pad_plane(dy + offset, h, w, padded.data());
        correlate_plane(padded.data(), h, w, flipped, dx + offset);
        // dweight[i][j] = sum over pixels of dy[y][x] * x_padded[y + i][x + j]: with dy in rows of the
        // padded stride, each tap is one contiguous dot product, shifted by i rows and j columns
        for (int64_t y = 0; y < h; ++y) {
          for (int64_t xx = 0; xx < w; ++xx) grad_rows[y * pw + xx] = static_cast<float>(dy[offset + y * w + xx]);
        }
        pad_plane(x + offset, h, w, padded.data());
        const float* g = grad_rows.data();
        const int64_t length = h * pw;
        for (int t = 0; t < 9; ++t) {
          const float* shifted = padded.data() + (t / 3) * pw + (t % 3);
          float s = 0.0f;
#pragma omp simd reduction(+ : s)
          for (int64_t k = 0; k < length; ++k) s += g[k] * shifted[k];
          acc[t] += s;
        }
      }
      for (int t = 0; t < 9; ++t) dweight[ch * 9 + t] = static_cast<T>(acc[t]);
    }
  });
}

}  // namespace

// inputs: x (N, C, H, W), weight (C, 1, 3, 3); output: y (N, C, H, W)
extern "C" int Depthwise3x3Forward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                   void* stream, void* extra) {
  const int bits = nparam == 3 ? float_bits(nparam, ndims, dtypes) : 0;
  if (bits == 32) forward<float>(params, shapes);
  if (bits == 16) forward<_Float16>(params, shapes);
  return bits ? 0 : 1;
}

// inputs: x (N, C, H, W), weight (C, 1, 3, 3), dy (N, C, H, W); outputs: dx (N, C, H, W), dweight (C, 1, 3, 3)
extern "C" int Depthwise3x3Backward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                    void* stream, void* extra) {
  const int bits = nparam == 5 ? float_bits(nparam, ndims, dtypes) : 0;
  if (bits == 32) backward<float>(params, shapes);
  if (bits == 16) backward<_Float16>(params, shapes);
  return bits ? 0 : 1;
}
