// Gated activations in one kernel: out = act(gate) * up, for SwiGLU (act =
// SiLU) and GeGLU (act = GELU, tanh approximation). Written for Realm's
// GPU backend; src/fused/gated.rs holds the launch and the CPU form. With
// `q8` not null, the results also as Q8_1 blocks there (q8_1.cuh; n a
// multiple of 32, blocks of whole warps), and with `mmq` not null, in the
// matrix products' layout there (width a multiple of 32), for the product
// that reads them.
// The inputs are rows of `width` values, row r at gate + r * gate_stride
// and up + r * up_stride (the halves of a stacked product's rows); the
// results are contiguous.
#include <stdint.h>

#include "q8_1.cuh"

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float gelu(float x) {
  const float sqrt_two_over_pi = 0.7978845608028654f;
  return 0.5f * x * (1.0f + tanhf(sqrt_two_over_pi * x * (1.0f + 0.044715f * x * x)));
}

template <float (*act)(float)>
__device__ void gated(const float *gate, const float *up, float *out, uint32_t n,
                      realm_block_q8_1 *q8, uint32_t width, long long gate_stride,
                      long long up_stride, realm_block_mmq_ds4 *mmq) {
  const uint32_t rows = n / width;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const long long r = i / width, c = i % width;
    const float y = act(gate[r * gate_stride + c]) * up[r * up_stride + c];
    out[i] = y;
    if (q8) store_q8_1(y, q8 + i / 32, threadIdx.x & 31);
    if (mmq) store_q8_1_mmq(y, mmq, rows, width, r, c, threadIdx.x & 31);
  }
  if (mmq) {
    // The rows' padding, as zeros.
    const uint64_t pad = mmq_padded(width) - width;
    for (uint64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < rows * pad;
         i += gridDim.x * blockDim.x) {
      store_q8_1_mmq_const(mmq, rows, width, i / pad, width + i % pad, 0.0f);
    }
  }
}

extern "C" __global__ void swiglu_f32(const float *gate, const float *up, float *out, uint32_t n,
                                      realm_block_q8_1 *q8, uint32_t width, long long gate_stride,
                                      long long up_stride, realm_block_mmq_ds4 *mmq) {
  gated<silu>(gate, up, out, n, q8, width, gate_stride, up_stride, mmq);
}

extern "C" __global__ void geglu_f32(const float *gate, const float *up, float *out, uint32_t n,
                                     realm_block_q8_1 *q8, uint32_t width, long long gate_stride,
                                     long long up_stride, realm_block_mmq_ds4 *mmq) {
  gated<gelu>(gate, up, out, n, q8, width, gate_stride, up_stride, mmq);
}
