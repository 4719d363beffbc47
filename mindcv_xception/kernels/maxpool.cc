// Xception's 3x3 stride-2 max-pool with TensorFlow's 'same' padding, float32 or float16 (computed in
// float32), as MindSpore "aot" custom operators for the CPU (mindcv_xception/cpu_conv.py). The forward
// pass also writes, for every output, where in its window the maximum was (0..8, row-major, one byte),
// so the backward pass needs neither the pool's input nor its output: only that index and the output's
// gradient. MindSpore's MaxPoolGrad needs both, so the input (the block's last batch-norm output, four
// times the output) stayed alive until the backward pass.
//
// Padding ('same'): OH = ceil(H / 2); the window of output row oy starts at input row 2 * oy - top with
// top = (2 * (OH - 1) + 3 - H) / 2 (the extra padded row, if any, at the bottom), columns likewise.
// Padded positions hold -inf. Ties go to the first maximum in the window's row-major order. Only the
// planes matter, not which dimension is the batch: NCHW and channel-major (C, N, H, W) alike. Work is
// shared among threads by plane.
#include <cstring>
#include <limits>
#include <type_traits>

#include "parallel.h"

namespace {

using mindcv_xception::parallel_for;

struct PoolShape {
  int64_t planes, h, w, oh, ow, top, left;
};

PoolShape pool_shape(const int64_t* in, const int64_t* out) {
  PoolShape s{in[0] * in[1], in[2], in[3], out[2], out[3], 0, 0};
  s.top = std::max<int64_t>(2 * (s.oh - 1) + 3 - s.h, 0) / 2;
  s.left = std::max<int64_t>(2 * (s.ow - 1) + 3 - s.w, 0) / 2;
  return s;
}

// GCC's vector extensions: 8 floats (one AVX2 register; halves of an AVX-512 one), lowered to what the
// CPU has. Loads and stores are unaligned (memcpy).
typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
constexpr int kLanes = 8;

inline f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// One plane with a border of -inf (one row on top and bottom, a column left and right), its columns
// split by parity: evens[r][t] holds input (r - 1, 2t), odds[r][t] input (r - 1, 2t - 1), odds[r][0]
// the left border. A window's three columns are then contiguous in the two halves, for a row of
// outputs at once, and no tap needs a bounds test. Rows have kLanes columns of slack (-inf) so the
// last outputs of a row are computed a whole vector at a time.
struct SplitPlane {
  int64_t rows, half;
  std::vector<float> evens, odds;

  SplitPlane(int64_t h, int64_t w)
      : rows(h + 2),
        half(w / 2 + 2 + kLanes),
        evens(rows * half, -std::numeric_limits<float>::infinity()),
        odds(rows * half, -std::numeric_limits<float>::infinity()) {}

  template <typename T>
  void load(const T* plane, int64_t h, int64_t w) {  // the border stays -inf
    const i8 even_lanes = {0, 2, 4, 6, 8, 10, 12, 14};  // of two vectors side by side
    for (int64_t r = 0; r < h; ++r) {
      const T* from = plane + r * w;
      float* e = evens.data() + (r + 1) * half;     // e[t] = from[2t]
      float* o = odds.data() + (r + 1) * half + 1;  // o[t] = from[2t + 1]
      int64_t t = 0;
      // float32: 16 columns at a time, split by two shuffles; float16 and a row's end: one at a time
      for (; std::is_same_v<T, float> && 2 * t + 2 * kLanes <= w; t += kLanes) {
        const float* row = reinterpret_cast<const float*>(from);
        const f8 a = load8(row + 2 * t), b = load8(row + 2 * t + kLanes);
        const f8 even = __builtin_shuffle(a, b, even_lanes), odd = __builtin_shuffle(a, b, even_lanes + 1);
        std::memcpy(e + t, &even, sizeof even);
        std::memcpy(o + t, &odd, sizeof odd);
      }
      for (; 2 * t < w; ++t) {
        e[t] = static_cast<float>(from[2 * t]);
        if (2 * t + 1 < w) o[t] = static_cast<float>(from[2 * t + 1]);
      }
    }
  }
};

template <typename T>
void forward(const T* x, T* y, uint8_t* index, const PoolShape& s) {
  parallel_for(s.planes, [=](int64_t begin, int64_t end) {
    SplitPlane split(s.h, s.w);
    for (int64_t p = begin; p < end; ++p) {
      split.load(x + p * s.h * s.w, s.h, s.w);
      // output column ox's window starts at input column 2 * ox - left: odds[ox] (column 2 * ox - 1) when
      // left is 1, else evens[ox]; its three columns alternate between the halves from there
      const float* first = s.left ? split.odds.data() : split.evens.data();
      const float* second = s.left ? split.evens.data() : split.odds.data() + 1;
      const float* third = first + 1;
      for (int64_t oy = 0; oy < s.oh; ++oy) {
        const int64_t row = 2 * oy + 1 - s.top;  // the window's first row, bordered
        T* out = y + (p * s.oh + oy) * s.ow;
        uint8_t* where = index + (p * s.oh + oy) * s.ow;
        for (int64_t ox = 0; ox < s.ow; ox += kLanes) {
          const int64_t a = row * split.half + ox, b = a + split.half, c = b + split.half;
          f8 best = load8(first + a);
          i8 k = {};
          const auto tap = [&](const float* at, int32_t position) {  // strict: the first maximum wins
            const f8 v = load8(at);
            const i8 more = v > best;  // all ones where v is larger
            best = more ? v : best;
            k = more ? i8{} + position : k;
          };
          tap(second + a, 1);
          tap(third + a, 2);
          tap(first + b, 3);
          tap(second + b, 4);
          tap(third + b, 5);
          tap(first + c, 6);
          tap(second + c, 7);
          tap(third + c, 8);
          const int64_t n = std::min<int64_t>(kLanes, s.ow - ox);
          for (int64_t l = 0; l < n; ++l) {
            out[ox + l] = static_cast<T>(best[l]);  // exact: a float16 input's maximum is a float16
            where[ox + l] = static_cast<uint8_t>(k[l]);
          }
        }
      }
    }
  });
}

// dx = each output's gradient added at the position of its window's maximum (windows overlap by a row
// and a column, so a position can receive from up to four outputs); summed in float32
template <typename T>
void backward(const T* dy, const uint8_t* index, T* dx, const PoolShape& s) {
  parallel_for(s.planes, [=](int64_t begin, int64_t end) {
    std::vector<float> sums(std::is_same_v<T, float> ? 0 : s.h * s.w);
    for (int64_t p = begin; p < end; ++p) {
      float* plane = std::is_same_v<T, float> ? reinterpret_cast<float*>(dx + p * s.h * s.w) : sums.data();
      std::fill(plane, plane + s.h * s.w, 0.0f);
      const T* grad = dy + p * s.oh * s.ow;
      const uint8_t* where = index + p * s.oh * s.ow;
      for (int64_t oy = 0; oy < s.oh; ++oy) {
        for (int64_t ox = 0; ox < s.ow; ++ox) {
          const int64_t k = where[oy * s.ow + ox];
          // a window of only -inf (or NaN) keeps its first tap, which may be in the border: clamped
          const int64_t r = std::max<int64_t>(2 * oy - s.top + k / 3, 0);
          const int64_t c = std::max<int64_t>(2 * ox - s.left + k % 3, 0);
          plane[r * s.w + c] += static_cast<float>(grad[oy * s.ow + ox]);
        }
      }
      if constexpr (!std::is_same_v<T, float>) std::copy(sums.begin(), sums.end(), dx + p * s.h * s.w);
    }
  });
}

bool all_4d(int nparam, const int* ndims) {
  for (int i = 0; i < nparam; ++i) {
    if (ndims[i] != 4) return false;
  }
  return true;
}

bool is(const char* dtype, const char* name) { return std::strcmp(dtype, name) == 0; }

}  // namespace

// Forward: input x (N, C, H, W) float32 or float16; outputs y (N, C, OH, OW) of x's type and index
// (N, C, OH, OW) uint8.
extern "C" int MaxPool3x3Stride2(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                 void* stream, void* extra) {
  if (nparam != 3 || !all_4d(nparam, ndims) || !is(dtypes[1], dtypes[0]) || !is(dtypes[2], "uint8")) return 1;
  const PoolShape s = pool_shape(shapes[0], shapes[1]);
  auto* index = static_cast<uint8_t*>(params[2]);
  if (is(dtypes[0], "float32")) {
    forward(static_cast<const float*>(params[0]), static_cast<float*>(params[1]), index, s);
  } else if (is(dtypes[0], "float16")) {
    forward(static_cast<const _Float16*>(params[0]), static_cast<_Float16*>(params[1]), index, s);
  } else {
    return 1;
  }
  return 0;
}

// Backward: inputs dy (N, C, OH, OW) float32 or float16, index (N, C, OH, OW) uint8, like (H, W) (only its
// shape: the input's size); output dx (N, C, H, W) of dy's type.
extern "C" int MaxPool3x3Stride2Grad(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                     void* stream, void* extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4 || ndims[3] != 4 || !is(dtypes[1], "uint8") ||
      !is(dtypes[3], dtypes[0])) {
    return 1;
  }
  const PoolShape s = pool_shape(shapes[3], shapes[0]);
  const auto* index = static_cast<const uint8_t*>(params[1]);
  if (is(dtypes[0], "float32")) {
    backward(static_cast<const float*>(params[0]), index, static_cast<float*>(params[3]), s);
  } else if (is(dtypes[0], "float16")) {
    backward(static_cast<const _Float16*>(params[0]), index, static_cast<_Float16*>(params[3]), s);
  } else {
    return 1;
  }
  return 0;
}
