// Batch normalisation with the batch's statistics (training), float32: forward and backward, as MindSpore
// "aot" custom operators for the CPU (mindcv_xception/compiled_kernels.py). Two layouts: NCHW, where a
// channel is N planes of H x W, one per image, and channel-major CNHW (cpu_conv's batch-stacked layout),
// where a channel is one contiguous block of N x H x W.
//
// Channels are shared among one thread per CPU. Each channel is read twice per pass (statistics, then
// the normalisation); at Xception's sizes a channel is at most a few hundred KB in the channel-major
// blocks, so the second read comes from the CPU's cache: one read of x and one write of y in the
// forward pass, one read of x and dy and one write of dx in the backward. Sums are kept in double.
//
// Signature of every entry point (MindSpore's aot convention): params holds the inputs, then the
// outputs; shapes[i] has ndims[i] extents. Returns 0 on success.
#include <cmath>

#include "parallel.h"

namespace {

using mindcv_xception::parallel_for;

// Where a channel's values are: `blocks` runs of `length` floats, `block_stride` apart.
struct Channels {
  int64_t count, blocks, length, block_stride, channel_stride;
  Channels(const int64_t* shape, bool channel_major) {
    const int64_t plane = shape[2] * shape[3];
    if (channel_major) {
      count = shape[0], blocks = 1, length = shape[1] * plane, block_stride = 0, channel_stride = length;
    } else {
      count = shape[1], blocks = shape[0], length = plane, block_stride = shape[1] * plane, channel_stride = plane;
    }
  }
  int64_t offset(int64_t channel, int64_t block) const { return channel * channel_stride + block * block_stride; }
  double values() const { return static_cast<double>(blocks * length); }
};

// inputs x, gamma, beta, moving mean, moving variance, (eps, momentum); outputs y (like x), the batch's mean,
// 1 / sqrt(biased variance + eps), and the moving mean and variance updated as MindSpore's BatchNorm does:
// moving += (batch - moving) * momentum, with the unbiased batch variance.
void forward(void** params, int64_t** shapes, bool channel_major) {
  const float* x = static_cast<const float*>(params[0]);
  const float* gamma = static_cast<const float*>(params[1]);
  const float* beta = static_cast<const float*>(params[2]);
  const float* moving_mean = static_cast<const float*>(params[3]);
  const float* moving_variance = static_cast<const float*>(params[4]);
  const double eps = static_cast<const float*>(params[5])[0], momentum = static_cast<const float*>(params[5])[1];
  float* y = static_cast<float*>(params[6]);
  float* mean_out = static_cast<float*>(params[7]);
  float* invstd_out = static_cast<float*>(params[8]);
  float* moving_mean_out = static_cast<float*>(params[9]);
  float* moving_variance_out = static_cast<float*>(params[10]);
  const Channels channels(shapes[0], channel_major);
  parallel_for(channels.count, [=](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double sum = 0, squares = 0;
      for (int64_t b = 0; b < channels.blocks; ++b) {
        const float* from = x + channels.offset(c, b);
#pragma omp simd reduction(+ : sum, squares)
        for (int64_t i = 0; i < channels.length; ++i) {
          const double v = from[i];
          sum += v;
          squares += v * v;
        }
      }
      const double mean = sum / channels.values();
      const double variance = std::max(squares / channels.values() - mean * mean, 0.0);
      const double invstd = 1.0 / std::sqrt(variance + eps);
      const float shift = static_cast<float>(mean), scale = static_cast<float>(gamma[c] * invstd), offset = beta[c];
      for (int64_t b = 0; b < channels.blocks; ++b) {
        const float* from = x + channels.offset(c, b);
        float* to = y + channels.offset(c, b);
#pragma omp simd
        for (int64_t i = 0; i < channels.length; ++i) to[i] = (from[i] - shift) * scale + offset;
      }
      mean_out[c] = static_cast<float>(mean);
      invstd_out[c] = static_cast<float>(invstd);
      const double values = channels.values(), unbiased = variance * values / std::max(values - 1, 1.0);
      moving_mean_out[c] = static_cast<float>(moving_mean[c] + (mean - moving_mean[c]) * momentum);
      moving_variance_out[c] = static_cast<float>(moving_variance[c] + (unbiased - moving_variance[c]) * momentum);
    }
  });
}

// inputs x, dy, gamma, mean, invstd (the forward's); outputs dx (like x), dgamma, dbeta
void backward(void** params, int64_t** shapes, bool channel_major) {
  const float* x = static_cast<const float*>(params[0]);
  const float* dy = static_cast<const float*>(params[1]);
  const float* gamma = static_cast<const float*>(params[2]);
  const float* mean = static_cast<const float*>(params[3]);
  const float* invstd = static_cast<const float*>(params[4]);
  float* dx = static_cast<float*>(params[5]);
  float* dgamma = static_cast<float*>(params[6]);
  float* dbeta = static_cast<float*>(params[7]);
  const Channels channels(shapes[0], channel_major);
  parallel_for(channels.count, [=](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const float centre = mean[c];
      double sum = 0, product = 0;  // of dy, of dy * (x - mean)
      for (int64_t b = 0; b < channels.blocks; ++b) {
        const float* from = x + channels.offset(c, b);
        const float* grad = dy + channels.offset(c, b);
#pragma omp simd reduction(+ : sum, product)
        for (int64_t i = 0; i < channels.length; ++i) {
          sum += grad[i];
          product += static_cast<double>(grad[i]) * (from[i] - centre);
        }
      }
      // dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), xhat = (x - mean) * invstd
      const double a = static_cast<double>(gamma[c]) * invstd[c];
      const double dgamma_c = product * invstd[c];
      const float scale = static_cast<float>(a);
      const float slope = static_cast<float>(a * invstd[c] * dgamma_c / channels.values());
      const float offset = static_cast<float>(a * sum / channels.values());
      for (int64_t b = 0; b < channels.blocks; ++b) {
        const float* from = x + channels.offset(c, b);
        const float* grad = dy + channels.offset(c, b);
        float* to = dx + channels.offset(c, b);
#pragma omp simd
        for (int64_t i = 0; i < channels.length; ++i) to[i] = scale * grad[i] - slope * (from[i] - centre) - offset;
      }
      dgamma[c] = static_cast<float>(dgamma_c);
      dbeta[c] = static_cast<float>(sum);
    }
  });
}

bool all_float32(int nparam, int* ndims, const char** dtypes) {
  if (ndims[0] != 4) return false;
  for (int i = 0; i < nparam; ++i) {
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  }
  return true;
}

}  // namespace

// "CNHW": x, y, dy, dx are (C, N, H, W) instead of (N, C, H, W); the per-channel values are (C,).
#define ENTRY_POINTS(NAME, CHANNEL_MAJOR)                                                                             \
  extern "C" int BatchNormTrain##NAME(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, \
                                      void* stream, void* extra) {                                                 \
    if (nparam != 11 || !all_float32(nparam, ndims, dtypes)) return 1;                                              \
    forward(params, shapes, CHANNEL_MAJOR);                                                                         \
    return 0;                                                                                                       \
  }                                                                                                                 \
  extern "C" int BatchNormTrainGrad##NAME(int nparam, void** params, int* ndims, int64_t** shapes,                  \
                                          const char** dtypes, void* stream, void* extra) {                         \
    if (nparam != 8 || !all_float32(nparam, ndims, dtypes)) return 1;                                               \
    backward(params, shapes, CHANNEL_MAJOR);                                                                        \
    return 0;                                                                                                       \
  }

ENTRY_POINTS(, false)
ENTRY_POINTS(CNHW, true)
