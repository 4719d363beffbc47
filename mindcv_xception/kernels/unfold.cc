// im2col for 'valid' convolutions, float32 or float16, forward (unfold) and backward (fold), as
// MindSpore "aot" custom operators for the CPU (mindcv_xception/cpu_conv.py turns the conv into a 1x1
// conv of the columns): the stem's 3x3 convs (stride 2 and 1) and the shortcuts' strided 1x1 convs
// (K = 1, S = 2: every second row and column). MindSpore's own Im2Col kernel moved about 1.4 GB/s
// here, its StridedSlice took 41 ms a step for the shortcuts' four small slices (the README's profile).
//
// cols (N, C * K * K, OH, OW): cols[n][c * K * K + i * K + j][y][x] = x[n][c][y * S + i][x * S + j], the
// order of mindspore.ops.unfold (and of an (out, C, K, K) weight reshaped to (out, C * K * K)). Only
// the planes matter, not which dimension is the batch: NCHW and channel-major (C, N, H, W) input
// alike. Work is shared among threads by plane, in both directions.
#include "parallel.h"

namespace {

using mindcv_xception::float_bits;
using mindcv_xception::parallel_for;

template <typename T, int K, int S>
void unfold(void** params, int64_t** shapes) {
  const T* x = static_cast<const T*>(params[0]);
  T* cols = static_cast<T*>(params[1]);
  const int64_t n = shapes[0][0], c = shapes[0][1], h = shapes[0][2], w = shapes[0][3];
  const int64_t oh = shapes[1][2], ow = shapes[1][3];
  parallel_for(n * c, [=](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* plane = x + p * h * w;
      T* out = cols + p * K * K * oh * ow;  // the plane's K * K columns follow one another
      for (int tap = 0; tap < K * K; ++tap) {
        const int i = tap / K, j = tap % K;
        for (int64_t y = 0; y < oh; ++y) {
          const T* from = plane + (y * S + i) * w + j;
          T* to = out + (tap * oh + y) * ow;
#pragma omp simd
          for (int64_t xo = 0; xo < ow; ++xo) to[xo] = from[xo * S];
        }
      }
    }
  });
}

// dx = the sum, over the taps, of each column scattered back to where unfold read it from
template <typename T, int K, int S>
void fold(void** params, int64_t** shapes) {
  const T* dcols = static_cast<const T*>(params[1]);
  T* dx = static_cast<T*>(params[2]);
  const int64_t n = shapes[0][0], c = shapes[0][1], h = shapes[0][2], w = shapes[0][3];
  const int64_t oh = shapes[1][2], ow = shapes[1][3];
  parallel_for(n * c, [=](int64_t begin, int64_t end) {
    std::vector<float> sum(h * w);
    for (int64_t p = begin; p < end; ++p) {
      std::fill(sum.begin(), sum.end(), 0.0f);
      const T* in = dcols + p * K * K * oh * ow;
      for (int tap = 0; tap < K * K; ++tap) {
        const int i = tap / K, j = tap % K;
        for (int64_t y = 0; y < oh; ++y) {
          float* to = sum.data() + (y * S + i) * w + j;
          const T* from = in + (tap * oh + y) * ow;
#pragma omp simd
          for (int64_t xo = 0; xo < ow; ++xo) to[xo * S] += static_cast<float>(from[xo]);
        }
      }
      T* out = dx + p * h * w;
      for (int64_t k = 0; k < h * w; ++k) out[k] = static_cast<T>(sum[k]);
    }
  });
}

template <int K, int S>
int unfold_entry(int nparam, void** params, int* ndims, const char** dtypes, int64_t** shapes) {
  const int bits = nparam == 2 ? float_bits(nparam, ndims, dtypes) : 0;
  if (bits == 32) unfold<float, K, S>(params, shapes);
  if (bits == 16) unfold<_Float16, K, S>(params, shapes);
  return bits ? 0 : 1;
}

template <int K, int S>
int fold_entry(int nparam, void** params, int* ndims, const char** dtypes, int64_t** shapes) {
  const int bits = nparam == 3 ? float_bits(nparam, ndims, dtypes) : 0;
  if (bits == 32) fold<float, K, S>(params, shapes);
  if (bits == 16) fold<_Float16, K, S>(params, shapes);
  return bits ? 0 : 1;
}

}  // namespace

// Unfold: input x (N, C, H, W); output cols (N, C * K * K, OH, OW) with OH = (H - K) / S + 1, OW likewise.
// Fold: inputs x (N, C, H, W) (for its shape), dcols (N, C * K * K, OH, OW); output dx (N, C, H, W).
#define ENTRY_POINTS(NAME, K, S)                                                                                    \
  extern "C" int Unfold##NAME(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,       \
                              void* stream, void* extra) {                                                       \
    return unfold_entry<K, S>(nparam, params, ndims, dtypes, shapes);                                            \
  }                                                                                                              \
  extern "C" int Fold##NAME(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,         \
                            void* stream, void* extra) {                                                         \
    return fold_entry<K, S>(nparam, params, ndims, dtypes, shapes);                                              \
  }

ENTRY_POINTS(3x3Stride1, 3, 1)
ENTRY_POINTS(3x3Stride2, 3, 2)
ENTRY_POINTS(1x1Stride2, 1, 2)
