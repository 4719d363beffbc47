// 3x3 depthwise convolution, stride 1, zero padding 1, float32 or float16 (computed in float32, for
// mixed precision, whose casts MindSpore may move across the operator): forward and backward, as
// MindSpore "aot" custom operators for the CPU (mindcv_xception/compiled_kernels.py). Two layouts:
// NCHW and channel-major CNHW (cpu_conv's batch-stacked layout); either way every (image, channel)
// plane is contiguous, only the channel a plane belongs to differs. Each also comes with the ReLU
// before it fused in ("...ReLU" entry points: the conv of max(x, 0); its backward passes the input
// gradient only where x > 0), as Xception's separable convs mostly follow a ReLU.
//
// Each (image, channel) plane is copied into a zero-padded (H+2) x (W+2) buffer (in CNHW, a channel's N
// planes into one tall buffer, a zero row between planes: see pad_planes). Output pixel (y, x)
// then reads the buffer at i + {0, 1, 2} + {0, 1, 2} * (W+2) for i = y * (W+2) + x, so the whole
// plane is one contiguous loop of nine multiply-adds over i < H * (W+2) (two junk columns a row,
// dropped when the result is copied out), which the compiler vectorises for the CPU it is built on
// (-march=native). Channel-major planes of at most 64 pixels (Xception's middle and exit flows at 96 px:
// 6x6 and 3x3) skip the padded copies: see forward_small. Planes are shared among one thread per CPU this
// process may run on, started per call: OpenMP's idle threads spin and took CPU time from
// MindSpore's own thread pool (a training step at 96 px, batch 32: 2.37 s against 1.84 s).
//
// Signature of every entry point (MindSpore's aot convention): params holds the inputs, then the
// outputs; shapes[i] has ndims[i] extents. Returns 0 on success.
#include "parallel.h"

namespace {

using mindcv_xception::float_bits;
using mindcv_xception::parallel_for;

// A stack of n planes (h x w each, contiguous) as one tall padded image: plane i's row y is row
// 1 + i * (h + 1) + y of dst, columns 1..w, with a zero row above, between and below the planes and zero
// columns around, so a 3x3 window never mixes two planes. dst: rows(n, h) x (w + 2) floats (and 2 spare
// zeros after: see correlate). Only the planes' pixels are written: dst comes zeroed (a std::vector's
// initial value), and its zeros stay so. With relu, src's negative values are padded as zeros.
inline int64_t padded_rows(int64_t n, int64_t h) { return n * (h + 1) + 1; }

template <typename T>
void pad_planes(const T* src, int64_t n, int64_t h, int64_t w, float* dst, bool relu) {
  const int64_t pw = w + 2;
  const float floor = relu ? 0.0f : -__builtin_inff();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t y = 0; y < h; ++y) {
      float* row = dst + (1 + i * (h + 1) + y) * pw + 1;
      const T* from = src + (i * h + y) * w;
#pragma omp simd
      for (int64_t x = 0; x < w; ++x) row[x] = std::max(static_cast<float>(from[x]), floor);
    }
  }
}

// out (n planes of h x w) = the 3x3 correlation of pad_planes' image with k (row-major 3x3); rows:
// (padded_rows(n, h) - 2) * (w + 2) floats of scratch. With a mask (like out), out is zero where the mask
// is not positive (a ReLU's backward).
template <typename T>
void correlate(const float* padded, int64_t n, int64_t h, int64_t w, const float* k, float* rows, T* out,
               const T* mask = nullptr) {
  const int64_t pw = w + 2, length = (padded_rows(n, h) - 2) * pw;
  const float *p0 = padded, *p1 = padded + pw, *p2 = padded + 2 * pw;  // reads up to padded_rows * pw + 1
#pragma omp simd
  for (int64_t i = 0; i < length; ++i) {
    rows[i] = k[0] * p0[i] + k[1] * p0[i + 1] + k[2] * p0[i + 2] + k[3] * p1[i] + k[4] * p1[i + 1] + k[5] * p1[i + 2] +
              k[6] * p2[i] + k[7] * p2[i + 1] + k[8] * p2[i + 2];
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t y = 0; y < h; ++y) {
      const float* from = rows + (i * (h + 1) + y) * pw;  // the rows between planes are dropped
      T* to = out + (i * h + y) * w;
      if (mask == nullptr) {
#pragma omp simd
        for (int64_t x = 0; x < w; ++x) to[x] = static_cast<T>(from[x]);
      } else {
        const T* where = mask + (i * h + y) * w;
#pragma omp simd
        for (int64_t x = 0; x < w; ++x) {
          const float open = static_cast<float>(static_cast<float>(where[x]) > 0.0f);  // branch-free: random signs
          to[x] = static_cast<T>(from[x] * open);
        }
      }
    }
  }
}

// The work of a 4-d tensor in items of planes that share a channel: in NCHW (image-major) each plane is
// an item; in CNHW (channel-major) a channel's N planes are contiguous, and several are stacked into
// one tall image (pad_planes), so that small planes make long loops: as many as keep a stack's padded
// buffer within STACK_FLOATS (the buffers of one item then stay in the core's L1 cache: stacking a
// channel's eight 19x19 planes ran 15-20% slower than plane by plane). Planes of at most SMALL_PLANE
// pixels are instead taken as flat runs of at most GROUP_FLOATS (forward_small).
constexpr int64_t STACK_FLOATS = 1024;
constexpr int64_t SMALL_PLANE = 64, GROUP_FLOATS = 1152;

struct Items {
  // stack: the largest divisor of n whose stack fits STACK_FLOATS (CNHW), or whose run fits GROUP_FLOATS (small)
  int64_t n, c, h, w, stack = 1;
  bool channel_major, small;
  Items(int64_t** shapes, bool cm)
      : n(shapes[0][cm ? 1 : 0]),
        c(shapes[0][cm ? 0 : 1]),
        h(shapes[0][2]),
        w(shapes[0][3]),
        channel_major(cm),
        small(cm && h * w <= SMALL_PLANE) {
    for (int64_t s = 2; cm && s <= n; ++s) {
      if (n % s == 0 && (small ? s * h * w <= GROUP_FLOATS : padded_rows(s, h) * (w + 2) <= STACK_FLOATS)) stack = s;
    }
  }
  int64_t count() const { return n * c / stack; }
  int64_t channel(int64_t item) const { return channel_major ? item / (n / stack) : item % c; }
  int64_t offset(int64_t item) const { return item * stack * h * w; }
  int64_t padded_size() const { return padded_rows(stack, h) * (w + 2) + 2; }
  int64_t rows_size() const { return (padded_rows(stack, h) - 2) * (w + 2); }
};

// Small planes in channel-major layout (Xception's middle and exit flows at 96 px: 6x6 and 3x3).
// Padding each 6-float row and copying it back out cost more than the nine multiply-adds, so here a
// channel's consecutive planes (contiguous in CNHW; Items::stack of them) are one flat run of pixels:
// pixel i reads i - w - 1 ... i + w + 1, and a neighbour outside its own plane (above the top row,
// below the bottom one, left of the first column, right of the last) is selected away by a per-pixel
// flag (a select, not a multiply by 0, so a non-finite value never leaks into the next plane). Alone, on
// the middle flow's (728, 32, 6, 6) with the ReLU, forward 0.99 -> 0.44 ms and backward 1.78 -> 0.74 ms;
// exit flow (1536, 32, 3, 3) 0.79 -> 0.29 and 1.67 -> 0.51 ms; a 96 px batch-32 training step 2-5%
// faster; built for AVX2 only (-march=znver3, same machine), (728, 32, 6, 6) 0.83 -> 0.40 and
// 0.99 -> 0.67 ms. Planes of 10x10 and more ran slower this way (rows long enough for padded copies).

// For a run of `planes` planes (h x w): whether each pixel has a neighbour above, below, left, right.
struct Neighbours {
  int64_t length;
  std::vector<float> up, down, left, right;
  Neighbours(int64_t planes, int64_t h, int64_t w) : length(planes * h * w) {
    up.resize(length), down.resize(length), left.resize(length), right.resize(length);
    for (int64_t i = 0; i < length; ++i) {
      const int64_t x = i % w, y = (i / w) % h;
      up[i] = y > 0, down[i] = y < h - 1, left[i] = x > 0, right[i] = x < w - 1;
    }
  }
};

// dst[0, length) = src (max(src, 0) with relu); dst has w + 1 readable floats before and after.
template <typename T>
void load_run(const T* src, int64_t length, float* dst, bool relu) {
  const float floor = relu ? 0.0f : -__builtin_inff();
#pragma omp simd
  for (int64_t i = 0; i < length; ++i) dst[i] = std::max(static_cast<float>(src[i]), floor);
}

// out = the 3x3 correlation of a run (load_run) with k, neighbours outside a pixel's plane taken as
// zero; Masked: zero where mask is not positive (a ReLU's backward), else mask is not read.
template <bool Masked, typename T>
void correlate_run(const float* src, int64_t w, const float* k, const Neighbours& nb, T* out, const T* mask) {
  const float *above = src - w, *below = src + w;
  const float *up = nb.up.data(), *down = nb.down.data(), *left = nb.left.data(), *right = nb.right.data();
#pragma omp simd
  for (int64_t i = 0; i < nb.length; ++i) {
    // every load unconditional (the run's guards make them safe), then selected: for AVX2, GCC vectorises
    // this only so and with -fno-trapping-math (compiled_kernels.FLAGS)
    const float a0 = above[i - 1], a1 = above[i], a2 = above[i + 1], b0 = below[i - 1], b1 = below[i], b2 = below[i + 1];
    const bool u = up[i] != 0.0f, d = down[i] != 0.0f;
    const float west = k[0] * (u ? a0 : 0.0f) + k[3] * src[i - 1] + k[6] * (d ? b0 : 0.0f);
    const float centre = k[1] * (u ? a1 : 0.0f) + k[4] * src[i] + k[7] * (d ? b1 : 0.0f);
    const float east = k[2] * (u ? a2 : 0.0f) + k[5] * src[i + 1] + k[8] * (d ? b2 : 0.0f);
    const float value = (left[i] != 0.0f ? west : 0.0f) + centre + (right[i] != 0.0f ? east : 0.0f);
    if constexpr (Masked) {
      out[i] = static_cast<T>(static_cast<float>(mask[i]) > 0.0f ? value : 0.0f);
    } else {
      out[i] = static_cast<T>(value);
    }
  }
}

template <typename T>
void forward_small(const T* x, const T* weight, T* y, const Items& items, bool relu) {
  const Neighbours nb(items.stack, items.h, items.w);
  const int64_t guard = items.w + 1;
  parallel_for(items.count(), [=, &nb](int64_t begin, int64_t end) {
    std::vector<float> run(nb.length + 2 * guard);
    for (int64_t item = begin; item < end; ++item) {
      float k[9];
      for (int t = 0; t < 9; ++t) k[t] = static_cast<float>(weight[items.channel(item) * 9 + t]);
      load_run(x + items.offset(item), nb.length, run.data() + guard, relu);
      correlate_run<false, T>(run.data() + guard, items.w, k, nb, y + items.offset(item), nullptr);
    }
  });
}

// dx: the same correlation of dy with the kernel turned by 180 degrees (a pixel's neighbour flags are
// symmetric); dweight[t]: the sum over pixels of dy times the input at tap t where that neighbour exists.
template <typename T>
void backward_small(const T* x, const T* weight, const T* dy, T* dx, float* shares, const Items& items, bool relu) {
  const Neighbours nb(items.stack, items.h, items.w);
  const int64_t guard = items.w + 1, w = items.w;
  parallel_for(items.count(), [=, &nb](int64_t begin, int64_t end) {
    std::vector<float> run_dy(nb.length + 2 * guard), run_x(nb.length + 2 * guard);
    const float *up = nb.up.data(), *down = nb.down.data(), *left = nb.left.data(), *right = nb.right.data();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t offset = items.offset(item);
      float flipped[9];
      for (int t = 0; t < 9; ++t) flipped[t] = static_cast<float>(weight[items.channel(item) * 9 + 8 - t]);
      float* g = run_dy.data() + guard;
      load_run(dy + offset, nb.length, g, false);
      if (relu) {
        correlate_run<true>(g, w, flipped, nb, dx + offset, x + offset);
      } else {
        correlate_run<false, T>(g, w, flipped, nb, dx + offset, nullptr);
      }
      float* p = run_x.data() + guard;
      load_run(x + offset, nb.length, p, relu);
      const float *above = p - w, *below = p + w;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
      for (int64_t i = 0; i < nb.length; ++i) {
        const float gi = g[i], gu = up[i] != 0.0f ? gi : 0.0f, gd = down[i] != 0.0f ? gi : 0.0f;
        const bool l = left[i] != 0.0f, r = right[i] != 0.0f;
        s0 += (l ? gu : 0.0f) * above[i - 1];
        s1 += gu * above[i];
        s2 += (r ? gu : 0.0f) * above[i + 1];
        s3 += (l ? gi : 0.0f) * p[i - 1];
        s4 += gi * p[i];
        s5 += (r ? gi : 0.0f) * p[i + 1];
        s6 += (l ? gd : 0.0f) * below[i - 1];
        s7 += gd * below[i];
        s8 += (r ? gd : 0.0f) * below[i + 1];
      }
      float* share = shares + item * 9;
      share[0] = s0, share[1] = s1, share[2] = s2, share[3] = s3, share[4] = s4;
      share[5] = s5, share[6] = s6, share[7] = s7, share[8] = s8;
    }
  });
}

template <typename T>
void forward(void** params, int64_t** shapes, bool channel_major, bool relu) {
  const T* x = static_cast<const T*>(params[0]);
  const T* weight = static_cast<const T*>(params[1]);
  T* y = static_cast<T*>(params[2]);
  const Items items(shapes, channel_major);
  if (items.small) return forward_small(x, weight, y, items, relu);
  parallel_for(items.count(), [=](int64_t begin, int64_t end) {
    std::vector<float> padded(items.padded_size()), rows(items.rows_size());
    for (int64_t item = begin; item < end; ++item) {
      float k[9];
      for (int t = 0; t < 9; ++t) k[t] = static_cast<float>(weight[items.channel(item) * 9 + t]);
      pad_planes(x + items.offset(item), items.stack, items.h, items.w, padded.data(), relu);
      correlate(padded.data(), items.stack, items.h, items.w, k, rows.data(), y + items.offset(item));
    }
  });
}

template <typename T>
void backward(void** params, int64_t** shapes, bool channel_major, bool relu) {
  const T* x = static_cast<const T*>(params[0]);
  const T* weight = static_cast<const T*>(params[1]);
  const T* dy = static_cast<const T*>(params[2]);
  T* dx = static_cast<T*>(params[3]);
  T* dweight = static_cast<T*>(params[4]);
  const Items items(shapes, channel_major);
  const int64_t stack = items.stack, h = items.h, w = items.w, pw = w + 2;
  std::vector<float> partial(items.count() * 9);  // each item's share of the weight gradient
  float* shares = partial.data();
  if (items.small) backward_small(x, weight, dy, dx, shares, items, relu);
  else parallel_for(items.count(), [=](int64_t begin, int64_t end) {
    std::vector<float> padded_dy(items.padded_size()), padded_x(items.padded_size()), rows(items.rows_size());
    for (int64_t item = begin; item < end; ++item) {
      const int64_t ch = items.channel(item), offset = items.offset(item);
      float flipped[9];
      for (int t = 0; t < 9; ++t) flipped[t] = static_cast<float>(weight[ch * 9 + 8 - t]);  // turned by 180 degrees
      // dx: the gradient flows back through the same correlation with the turned kernel
      pad_planes(dy + offset, stack, h, w, padded_dy.data(), false);
      correlate(padded_dy.data(), stack, h, w, flipped, rows.data(), dx + offset, relu ? x + offset : nullptr);
      // dweight[i][j] = sum over pixels of dy[y][x] * x_padded[y + i][x + j]. From its second row and
      // column on, padded dy is dy in rows of the padded stride with zeros in the two extra columns (and
      // the rows between planes), so all nine taps are one contiguous pass: x_padded shifted by i rows
      // and j columns.
      pad_planes(x + offset, stack, h, w, padded_x.data(), relu);
      const float* g = padded_dy.data() + pw + 1;
      const float *p0 = padded_x.data(), *p1 = p0 + pw, *p2 = p1 + pw;
      const int64_t length = items.rows_size();
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
      for (int64_t i = 0; i < length; ++i) {
        s0 += g[i] * p0[i];
        s1 += g[i] * p0[i + 1];
        s2 += g[i] * p0[i + 2];
        s3 += g[i] * p1[i];
        s4 += g[i] * p1[i + 1];
        s5 += g[i] * p1[i + 2];
        s6 += g[i] * p2[i];
        s7 += g[i] * p2[i + 1];
        s8 += g[i] * p2[i + 2];
      }
      float* share = shares + item * 9;
      share[0] = s0, share[1] = s1, share[2] = s2, share[3] = s3, share[4] = s4;
      share[5] = s5, share[6] = s6, share[7] = s7, share[8] = s8;
    }
  });
  std::vector<double> sums(items.c * 9, 0.0);
  for (int64_t item = 0; item < items.count(); ++item) {
    for (int t = 0; t < 9; ++t) sums[items.channel(item) * 9 + t] += shares[item * 9 + t];
  }
  for (int64_t i = 0; i < items.c * 9; ++i) dweight[i] = static_cast<T>(sums[i]);
}

int forward_entry(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, bool channel_major,
                  bool relu) {
  const int bits = nparam == 3 ? float_bits(nparam, ndims, dtypes) : 0;
  if (bits == 32) forward<float>(params, shapes, channel_major, relu);
  if (bits == 16) forward<_Float16>(params, shapes, channel_major, relu);
  return bits ? 0 : 1;
}

int backward_entry(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, bool channel_major,
                   bool relu) {
  const int bits = nparam == 5 ? float_bits(nparam, ndims, dtypes) : 0;
  if (bits == 32) backward<float>(params, shapes, channel_major, relu);
  if (bits == 16) backward<_Float16>(params, shapes, channel_major, relu);
  return bits ? 0 : 1;
}

}  // namespace

// Forward: inputs x (N, C, H, W), weight (C, 1, 3, 3); output y (N, C, H, W).
// Backward: inputs x, weight, dy; outputs dx (like x), dweight (like weight).
// "CNHW": x, y, dy, dx are (C, N, H, W). "ReLU": of max(x, 0), as above.
#define ENTRY_POINTS(NAME, CHANNEL_MAJOR, RELU)                                                                       \
  extern "C" int Depthwise3x3Forward##NAME(int nparam, void** params, int* ndims, int64_t** shapes,                 \
                                           const char** dtypes, void* stream, void* extra) {                         \
    return forward_entry(nparam, params, ndims, shapes, dtypes, CHANNEL_MAJOR, RELU);                                \
  }                                                                                                                  \
  extern "C" int Depthwise3x3Backward##NAME(int nparam, void** params, int* ndims, int64_t** shapes,                \
                                            const char** dtypes, void* stream, void* extra) {                        \
    return backward_entry(nparam, params, ndims, shapes, dtypes, CHANNEL_MAJOR, RELU);                               \
  }

ENTRY_POINTS(, false, false)
ENTRY_POINTS(ReLU, false, true)
ENTRY_POINTS(CNHW, true, false)
ENTRY_POINTS(CNHWReLU, true, true)
