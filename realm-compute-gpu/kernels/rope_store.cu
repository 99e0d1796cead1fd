// A decode step's keys and values stored in their caches, the keys
// rotated by RoPE as they go: for each row and KV head, the key rotated by
// the row's angles and the value as it is go into the row's cache slot at
// the row's position. Written for Realm's GPU backend;
// src/fused/rope_store.rs holds the launch and the CPU form.
//
// Grid: (rows, n_kv_heads). Block: STORE_THREADS threads over the head's pairs.
// The caches are [2, slots, n_kv_heads, max_seq, head_dim], keys then
// values (the values v_off elements after the keys); row r goes to slot
// slot0 + r * slot_step (slot_step 0: the rows are one sequence's tokens,
// all in slot slot0). Row r's key is at k + r * k_stride and its value at
// v + r * v_stride, n_kv_heads * head_dim values each. cos and sin are
// [rows, n_dims / 2]: pair i of row r turns by the angle whose cosine is
// cos[r][i]. Pairs are (2i, 2i + 1) (normal) or (i, i + n_dims / 2) (neox);
// key values past n_dims are copied. With k_norm, each key head is
// RMS-normed first (weight k_norm, epsilon norm_eps: Gemma 3's key norm).
// With by_slots, row r's caches are
// where `slots` says instead (slots.cuh), and cache, slot0 and v_off are
// unused.
#include <cuda_fp16.h>
#include <stdint.h>

#include "slots.cuh"

#define STORE_THREADS 128

__device__ __forceinline__ void put(float *p, float x) { *p = x; }
__device__ __forceinline__ void put(__half *p, float x) { *p = __float2half(x); }

template <typename T>
__device__ void rope_store(T *__restrict__ cache, const float *__restrict__ k,
                           const float *__restrict__ v, const uint32_t *__restrict__ positions,
                           const float *__restrict__ cos, const float *__restrict__ sin, int slot0,
                           int slot_step, int n_kv_heads, int head_dim, int max_seq, int n_dims,
                           int neox, long long v_off, const SlotTable &slots, int by_slots,
                           long long k_stride, long long v_stride,
                           const float *__restrict__ k_norm, float norm_eps) {
  const int row = blockIdx.x;
  const int head = blockIdx.y;
  const uint32_t pos = positions[row];
  // The host checked every position; never write outside the slot.
  if (pos >= (uint32_t)max_seq) return;
  const float *kr = k + row * k_stride + (long long)head * head_dim;
  const float *vr = v + row * v_stride + (long long)head * head_dim;
  const long long at = ((long long)head * max_seq + pos) * head_dim;
  const long long slot = slot0 + (long long)row * slot_step;
  T *dst = by_slots ? (T *)slots.k[row] + at : cache + slot * n_kv_heads * max_seq * head_dim + at;
  T *dst_v = by_slots ? (T *)slots.v[row] + at : dst + v_off;
  // With k_norm, the key head is RMS-normed first (weight k_norm).
  float scale = 1.0f;
  if (k_norm) {
    __shared__ float part[STORE_THREADS / 32];
    float squares = 0.0f;
    for (int d = threadIdx.x; d < head_dim; d += STORE_THREADS) squares += kr[d] * kr[d];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = squares;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < STORE_THREADS / 32; ++w) total += part[w];
    scale = 1.0f / sqrtf(total / (float)head_dim + norm_eps);
  }
  // Key value d, normed when asked.
  auto key = [&](int d) { return k_norm ? kr[d] * scale * k_norm[d] : kr[d]; };
  const int half = n_dims / 2;
  const float *c = cos + (long long)row * half;
  const float *s = sin + (long long)row * half;
  for (int i = threadIdx.x; i < half; i += STORE_THREADS) {
    const int a = neox ? i : 2 * i;
    const int b = neox ? i + half : 2 * i + 1;
    const float x0 = key(a), x1 = key(b);
    put(dst + a, x0 * c[i] - x1 * s[i]);
    put(dst + b, x0 * s[i] + x1 * c[i]);
  }
  for (int d = n_dims + threadIdx.x; d < head_dim; d += STORE_THREADS) put(dst + d, key(d));
  for (int d = threadIdx.x; d < head_dim; d += STORE_THREADS) put(dst_v + d, vr[d]);
}

#define ROPE_STORE(NAME, T)                                                                 \
  extern "C" __global__ void __launch_bounds__(STORE_THREADS)                                \
      NAME(T *cache, const float *k, const float *v, const uint32_t *positions,             \
           const float *cos, const float *sin, int slot0, int slot_step, int n_kv_heads,     \
           int head_dim, int max_seq, int n_dims, int neox, long long v_off,                 \
           const SlotTable slots, int by_slots, long long k_stride, long long v_stride,      \
           const float *k_norm, float norm_eps) {                                            \
    rope_store<T>(cache, k, v, positions, cos, sin, slot0, slot_step, n_kv_heads, head_dim, \
                  max_seq, n_dims, neox, v_off, slots, by_slots, k_stride, v_stride, k_norm, \
                  norm_eps);                                                                 \
  }

ROPE_STORE(rope_store_f32, float)
ROPE_STORE(rope_store_f16, __half)
