// A residual add and the RMSNorm after it in one pass: for each row,
// sum = x + y, then norm = sum / sqrt(mean(sum^2) + eps) * w. Written for
// Realm's GPU backend; src/fused/add_norm.rs holds the launch and the CPU
// form. The output is [2, rows, width]: the sums, then the norms.
//
// Grid: one block a row. Block: NORM_THREADS threads over the row's values.
#include <stdint.h>

#define NORM_THREADS 256

extern "C" __global__ void __launch_bounds__(NORM_THREADS) add_rms_norm_f32(
    const float *x, const float *y, const float *w, float *out, uint32_t rows,
    uint32_t width, float eps) {
  const uint32_t row = blockIdx.x;
  const float *xr = x + (uint64_t)row * width;
  const float *yr = y + (uint64_t)row * width;
  float *sum = out + (uint64_t)row * width;
  float *norm = out + ((uint64_t)rows + row) * width;
  float squares = 0.0f;
  for (uint32_t i = threadIdx.x; i < width; i += NORM_THREADS) {
    const float s = xr[i] + yr[i];
    sum[i] = s;
    squares += s * s;
  }
  // Each warp's total, then the block's.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, o);
  __shared__ float warp_total[NORM_THREADS / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_total[warp] = squares;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < NORM_THREADS / 32; ++i) total += warp_total[i];
  const float scale = 1.0f / sqrtf(total / (float)width + eps);
  // Each thread reads back the sums it wrote.
  for (uint32_t i = threadIdx.x; i < width; i += NORM_THREADS) norm[i] = sum[i] * scale * w[i];
}
