// What the attention kernels share: the cache's element type read as f32,
// a warp's maximum and sum, and a query head made ready by one warp
// (Gemma 3's query norm, then RoPE). Written for Realm's GPU backend.
#pragma once
#include <cuda_fp16.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

// x as the cache's element type T holds it.
template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half(x);
}

// Reads of a KV cache, through the read-only (non-coherent) data cache:
// every caller reads only positions no thread of its launch writes.
//
// Four consecutive values as f32: for f32 one read (the address 16-byte
// aligned), for f16 two reads of two halves (4-byte aligned).
__device__ __forceinline__ float4 load4(const float *p) {
  return __ldg(reinterpret_cast<const float4 *>(p));
}
__device__ __forceinline__ float4 load4(const __half *p) {
  const __half2 *h = reinterpret_cast<const __half2 *>(p);
  const float2 a = __half22float2(__ldg(h)), b = __half22float2(__ldg(h + 1));
  return float4{a.x, a.y, b.x, b.y};
}

// Two consecutive values as f32, in one read: the address aligned to two
// values (8 bytes for f32, 4 for f16).
__device__ __forceinline__ float2 load2(const float *p) {
  return __ldg(reinterpret_cast<const float2 *>(p));
}
__device__ __forceinline__ float2 load2(const __half *p) {
  return __half22float2(__ldg(reinterpret_cast<const __half2 *>(p)));
}

// The maximum and the sum of x over a warp (every lane calls them).
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// One warp (every lane calls it) norms and rotates the head_dim values of
// a query head in qh (shared memory), in place. With q_norm, the head is
// RMS-normed first (weight q_norm, epsilon norm_eps). With cos (not null),
// pair i turns by the angle whose cosine is cos[i] and sine sin[i]: pairs
// (2i, 2i + 1), or (i, i + n_dims / 2) for neox; values past n_dims stay.
__device__ __forceinline__ void warp_prepare_query(float *qh, int head_dim,
                                                   const float *__restrict__ q_norm,
                                                   float norm_eps, const float *__restrict__ cos,
                                                   const float *__restrict__ sin, int n_dims,
                                                   int neox) {
  const int lane = threadIdx.x & 31;
  if (q_norm) {
    float squares = 0.0f;
    for (int d = lane; d < head_dim; d += 32) squares += qh[d] * qh[d];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, o);
    const float scale = 1.0f / sqrtf(squares / (float)head_dim + norm_eps);
    for (int d = lane; d < head_dim; d += 32) qh[d] *= scale * q_norm[d];
    __syncwarp();
  }
  if (cos) {
    const int half = n_dims / 2;
    for (int i = lane; i < half; i += 32) {
      const int a = neox ? i : 2 * i;
      const int b = neox ? i + half : 2 * i + 1;
      const float x0 = qh[a], x1 = qh[b];
      qh[a] = x0 * cos[i] - x1 * sin[i];
      qh[b] = x0 * sin[i] + x1 * cos[i];
    }
    __syncwarp();
  }
}
