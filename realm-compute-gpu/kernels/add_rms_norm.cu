// A residual add and the RMSNorm after it in one pass: for each row,
// sum = x + y, then norm = sum / sqrt(mean(sum^2) + eps) * w; with y_w not
// null, y is first normed the same way with weight y_w (Gemma's norms
// after attention and after the feed-forward network). Written for
// Realm's GPU backend; src/fused/add_norm.rs holds the launch and the CPU
// form. The output is [2, rows, width]: the sums, then the norms; with
// `q8` not null, the norms also as Q8_1 blocks there, and with `mmq` not
// null, in the matrix products' layout there (q8_1.cuh; width a multiple
// of 32 for either), for the product that reads them.
//
// Grid: one block a row. Block: NORM_THREADS threads over the row's values.
#include <stdint.h>

#include "q8_1.cuh"

#define NORM_THREADS 256
// Values of a row each thread keeps in registers.
#define NORM_KEEP 8

// The total of every thread's v, which each thread gets: each warp's by
// shuffles, then the block's through shared memory.
__device__ __forceinline__ float block_total(float v) {
  __shared__ float warp_total[NORM_THREADS / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // a previous call's reads are done
  if (lane == 0) warp_total[warp] = v;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < NORM_THREADS / 32; ++i) total += warp_total[i];
  return total;
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS) add_rms_norm_f32(
    const float *__restrict__ x, const float *__restrict__ y, const float *__restrict__ w,
    float *__restrict__ out, uint32_t rows, uint32_t width, float eps,
    realm_block_q8_1 *__restrict__ q8, const float *__restrict__ y_w,
    realm_block_mmq_ds4 *__restrict__ mmq) {
  const uint32_t row = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const float *xr = x + (uint64_t)row * width;
  const float *yr = y + (uint64_t)row * width;
  float *sum = out + (uint64_t)row * width;
  float *norm = out + ((uint64_t)rows + row) * width;
  // With y_w, y is normed first (weight y_w) before it is added.
  float y_scale = 1.0f;
  if (y_w) {
    float y_squares = 0.0f;
    for (uint32_t i = threadIdx.x; i < width; i += NORM_THREADS) y_squares += yr[i] * yr[i];
    y_scale = 1.0f / sqrtf(block_total(y_squares) / (float)width + eps);
  }
  // A thread's first NORM_KEEP sums stay in registers for the norm (every
  // one of a row of up to NORM_THREADS * NORM_KEEP values); the rest are
  // read back.
  float kept[NORM_KEEP];
  float squares = 0.0f;
#pragma unroll
  for (int k = 0; k < NORM_KEEP; ++k) {
    const uint32_t i = threadIdx.x + k * NORM_THREADS;
    kept[k] = 0.0f;
    if (i < width) {
      const float s = xr[i] + (y_w ? yr[i] * y_scale * y_w[i] : yr[i]);
      sum[i] = s;
      kept[k] = s;
      squares += s * s;
    }
  }
  for (uint32_t i = threadIdx.x + NORM_KEEP * NORM_THREADS; i < width; i += NORM_THREADS) {
    const float s = xr[i] + (y_w ? yr[i] * y_scale * y_w[i] : yr[i]);
    sum[i] = s;
    squares += s * s;
  }
  const float scale = 1.0f / sqrtf(block_total(squares) / (float)width + eps);
  // A warp's 32 values are one Q8_1 block, and with width a multiple of 32
  // its lanes loop together.
#pragma unroll
  for (int k = 0; k < NORM_KEEP; ++k) {
    const uint32_t i = threadIdx.x + k * NORM_THREADS;
    if (i < width) {
      const float n = kept[k] * scale * w[i];
      norm[i] = n;
      if (q8) store_q8_1(n, q8 + ((uint64_t)row * width + i) / 32, lane);
      if (mmq) store_q8_1_mmq(n, mmq, rows, width, row, i, lane);
    }
  }
  for (uint32_t i = threadIdx.x + NORM_KEEP * NORM_THREADS; i < width; i += NORM_THREADS) {
    const float n = sum[i] * scale * w[i];
    norm[i] = n;
    if (q8) store_q8_1(n, q8 + ((uint64_t)row * width + i) / 32, lane);
    if (mmq) store_q8_1_mmq(n, mmq, rows, width, row, i, lane);
  }
  if (mmq) store_q8_1_mmq_padding(mmq, rows, width, row, threadIdx.x, NORM_THREADS);
}
