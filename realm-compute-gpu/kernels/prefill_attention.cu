// Attention of a chunk of one sequence's queries (a prompt's) over its KV
// cache in one kernel, tile by tile: the same arithmetic as
// decode_attention.cu (scores, scale, soft-cap, the causal and
// sliding-window mask, softmax, the weighted sum of values, the query's
// norm and RoPE when asked, attention.cuh), with each tile of keys and values read once
// into shared memory for many query rows. Written for Realm's GPU backend
// (src/fused/attention.rs holds the launch and the CPU form).
//
// Grid: (ceil(rows / (PF_WARPS * ROWS)), n_heads). Block: PF_WARPS warps;
// warp w takes ROWS query rows of the block's. Row r is at position pos(r)
// (from `positions`, or pos_base + r when that is null) and sees the keys
// j with lo <= j <= pos, lo = pos + 1 - window when there is a window.
// Keys go through shared memory PF_KEYS at a time: lane i scores key
// t0 + i against each of its warp's rows, the warp updates each row's
// running maximum and sum, and every lane then adds the tile's values
// (weighted by the rows' probabilities) into the head_dim / 32 output
// values it holds. head_dim must be a multiple of 4 and at most HD. With
// `mmq` not null, the output also in the matrix products' layout there,
// padding included (q8_1.cuh; head_dim a multiple of 32), for the product
// that reads it.
#include <cuda_fp16.h>
#include <stdint.h>

#include "attention.cuh"
#include "q8_1.cuh"

#define PF_WARPS 4
// Keys in a tile: one a lane.
#define PF_KEYS 32

// Keys (or values) t0.. of a head, up to hi, into the tile as f32; the
// tile's rows past hi are zeros. Each warp takes every PF_WARPS-th row;
// the trip counts are fixed, so every load goes out before the stores.
template <typename T, int HD>
__device__ __forceinline__ void load_tile(float (*tile)[HD + 4], const T *__restrict__ src,
                                          int t0, int hi, int head_dim) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < PF_KEYS / PF_WARPS; ++r) {
    const int j = warp + r * PF_WARPS;
    const bool key = t0 + j <= hi;
    // Past hi, row t0 (which exists) is read and zeros are stored.
    const T *row = src + (long long)(key ? t0 + j : t0) * head_dim;
#pragma unroll
    for (int i = 0; i < HD / 32; ++i) {
      const int d = lane + 32 * i;
      if (d < head_dim) tile[j][d] = key ? to_f32(row[d]) : 0.0f;
    }
  }
}

// A warp's `n` rows from row0 of one head's output (row r's at vals + r *
// stride; seen[r] < 0: NaN, past the cache) into the matrix products'
// layout (head_dim a multiple of 32, so the warp's lanes loop together),
// of `rows` rows of n_heads * head_dim; head 0's warps also write the
// rows' padding.
__device__ __noinline__ void store_rows_mmq(const float *vals, int stride, const int *seen, int n,
                                            long long row0, int rows, int n_heads, int head,
                                            int head_dim, realm_block_mmq_ds4 *mmq) {
  const uint32_t width = (uint32_t)(n_heads * head_dim), col0 = (uint32_t)(head * head_dim);
  const int lane = threadIdx.x & 31;
  for (int r = 0; r < n && row0 + r < rows; ++r) {
    const uint32_t row = (uint32_t)(row0 + r);
    for (int d = lane; d < head_dim; d += 32) {
      const float o = vals[r * stride + d];
      if (seen[r] >= 0) {
        store_q8_1_mmq(o, mmq, rows, width, row, col0 + d, lane);
      } else {
        store_q8_1_mmq_const(mmq, rows, width, row, col0 + d, o);
      }
    }
    if (head == 0) store_q8_1_mmq_padding(mmq, rows, width, row, lane, 32);
  }
}

template <typename T, int ROWS, int HD>
__device__ void prefill_attention(
    const float *__restrict__ q,  // row r: q + r * q_stride, [n_heads, head_dim]
    const T *__restrict__ k,      // [kv_heads, max_seq, head_dim]
    const T *__restrict__ v,
    const uint32_t *__restrict__ positions,  // [rows], or null
    float *__restrict__ out,                 // [rows, n_heads, head_dim]
    uint32_t pos_base, int n_heads, int n_kv_heads, int head_dim, int max_seq, int rows,
    float scale, float softcap, int window,
    const float *__restrict__ rope_cos,  // [rows, n_dims / 2], or null: q is rotated
    const float *__restrict__ rope_sin, int n_dims, int neox, long long q_stride,
    const float *__restrict__ q_norm, float norm_eps, realm_block_mmq_ds4 *__restrict__ mmq) {
  constexpr int BQ = PF_WARPS * ROWS;
  constexpr int PER_LANE = HD / 32;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int head = blockIdx.y;
  const int kv = head / (n_heads / n_kv_heads);
  const int row0 = blockIdx.x * BQ;

  __shared__ __align__(16) float qs[BQ][HD];
  __shared__ __align__(16) float tile[PF_KEYS][HD + 4];
  __shared__ __align__(16) float ps[PF_WARPS][PF_KEYS][ROWS];
  __shared__ int row_pos[BQ];

  // The block's rows' positions (-1: no row, or past the cache) and queries.
  for (int r = threadIdx.x; r < BQ; r += 32 * PF_WARPS) {
    const int row = row0 + r;
    const long long pos = row >= rows      ? -1
                          : positions     ? (long long)positions[row]
                                          : (long long)pos_base + row;
    row_pos[r] = pos < max_seq ? (int)pos : -1;
  }
  for (int r = warp; r < BQ; r += PF_WARPS) {
    const long long row = row0 + r;
    if (row < rows) {
      const float *qh = q + row * q_stride + (long long)head * head_dim;
      for (int d = lane; d < head_dim; d += 32) qs[r][d] = qh[d];
    } else {
      for (int d = lane; d < head_dim; d += 32) qs[r][d] = 0.0f;
    }
  }
  __syncthreads();
  // Each warp norms and rotates its own rows.
  for (int r = 0; r < ROWS; ++r) {
    const int br = warp * ROWS + r;
    const long long row = row0 + br;
    if (row < rows) {
      const long long half = n_dims / 2;
      const float *c = rope_cos ? rope_cos + row * half : nullptr;
      const float *s = rope_cos ? rope_sin + row * half : nullptr;
      warp_prepare_query(qs[br], head_dim, q_norm, norm_eps, c, s, n_dims, neox);
    }
  }

  // The keys any row of the block sees, and this warp's rows' ranges.
  int lo = max_seq, hi = -1;
  for (int r = 0; r < BQ; ++r) {
    const int p = row_pos[r];
    if (p >= 0) {
      hi = max(hi, p);
      lo = min(lo, (window > 0 && p + 1 > window) ? p + 1 - window : 0);
    }
  }
  int first[ROWS], last[ROWS];
  float m[ROWS], l[ROWS], acc[ROWS][PER_LANE];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int p = row_pos[warp * ROWS + r];
    last[r] = p;  // -1: sees nothing
    first[r] = (window > 0 && p + 1 > window) ? p + 1 - window : 0;
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) acc[r][i] = 0.0f;
  }

  const long long head_off = (long long)kv * max_seq * head_dim;
  const T *kh = k + head_off;
  const T *vh = v + head_off;
  for (int t0 = lo; t0 <= hi; t0 += PF_KEYS) {
    load_tile<T, HD>(tile, kh, t0, hi, head_dim);
    __syncthreads();
    // Lane i scores key t0 + i against each row.
    float s[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) s[r] = 0.0f;
#pragma unroll 4
    for (int d = 0; d < HD; d += 4) {
      if (d < head_dim) {
        const float4 kk = *reinterpret_cast<const float4 *>(&tile[lane][d]);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          const float4 qq = *reinterpret_cast<const float4 *>(&qs[warp * ROWS + r][d]);
          s[r] += qq.x * kk.x + qq.y * kk.y + qq.z * kk.z + qq.w * kk.w;
        }
      }
    }
    const int j = t0 + lane;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      float x = s[r] * scale;
      if (softcap > 0.0f) x = softcap * tanhf(x / softcap);
      s[r] = (j >= first[r] && j <= last[r]) ? x : -INFINITY;
    }
    __syncthreads();
    load_tile<T, HD>(tile, vh, t0, hi, head_dim);
    // Each row's running maximum and sum, and the tile's probabilities.
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const float m_new = fmaxf(m[r], warp_max(s[r]));
      float p = 0.0f, shrink = 1.0f;
      // Until a row has seen a key its maximum is -inf: nothing to add.
      if (m_new > -INFINITY) {
        p = expf(s[r] - m_new);        // 0 for a masked key
        shrink = expf(m[r] - m_new);   // 0 for the row's first key
      }
      l[r] = l[r] * shrink + warp_sum(p);
      m[r] = m_new;
#pragma unroll
      for (int i = 0; i < PER_LANE; ++i) acc[r][i] *= shrink;
      ps[warp][lane][r] = p;
    }
    __syncthreads();
    for (int jj = 0; jj < PF_KEYS; ++jj) {
      float pr[ROWS];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) pr[r] = ps[warp][jj][r];
#pragma unroll
      for (int i = 0; i < PER_LANE; ++i) {
        const int d = lane + 32 * i;
        if (d < head_dim) {
          const float x = tile[jj][d];
#pragma unroll
          for (int r = 0; r < ROWS; ++r) acc[r][i] += pr[r] * x;
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const long long row = row0 + warp * ROWS + r;
    if (row >= rows) continue;
    float *oh = out + (row * n_heads + head) * head_dim;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int d = lane + 32 * i;
      // Past the cache: NaN rather than another's memory (as decode).
      if (d < head_dim) {
        const float o = last[r] >= 0 ? acc[r][i] / l[r] : __int_as_float(0x7fc00000);
        oh[d] = o;
        // For the blocks: the warp's own rows of the queries, which no
        // other warp reads.
        qs[warp * ROWS + r][d] = o;
      }
    }
  }
  // A call: inlined after the sums, the blocks took registers from the main
  // loop (heads of 64: 72 without blocks, 96 inlined, 80 called).
  if (mmq) {
    store_rows_mmq(qs[warp * ROWS], HD, &row_pos[warp * ROWS], ROWS, row0 + warp * ROWS, rows,
                   n_heads, head, head_dim, mmq);
  }
}

#define PREFILL_ATTENTION(NAME, T, ROWS, HD)                                                 \
  extern "C" __global__ void __launch_bounds__(32 * PF_WARPS) NAME(                          \
      const float *q, const T *k, const T *v, const uint32_t *positions, float *out,         \
      uint32_t pos_base, int n_heads, int n_kv_heads, int head_dim, int max_seq, int rows,   \
      float scale, float softcap, int window, const float *rope_cos, const float *rope_sin,  \
      int n_dims, int neox, long long q_stride, const float *q_norm, float norm_eps,         \
      realm_block_mmq_ds4 *mmq) {                                                            \
    prefill_attention<T, ROWS, HD>(q, k, v, positions, out, pos_base, n_heads, n_kv_heads,   \
                                   head_dim, max_seq, rows, scale, softcap, window,          \
                                   rope_cos, rope_sin, n_dims, neox, q_stride, q_norm,       \
                                   norm_eps, mmq);                                           \
  }

// Heads of up to 64, 128 and 256 values; fewer rows a warp for the largest,
// so that a block's shared memory stays under 48 KiB (42 KiB).
PREFILL_ATTENTION(prefill_attention_f32_64, float, 4, 64)
PREFILL_ATTENTION(prefill_attention_f16_64, __half, 4, 64)
PREFILL_ATTENTION(prefill_attention_f32_128, float, 4, 128)
PREFILL_ATTENTION(prefill_attention_f16_128, __half, 4, 128)
PREFILL_ATTENTION(prefill_attention_f32_256, float, 2, 256)
PREFILL_ATTENTION(prefill_attention_f16_256, __half, 2, 256)
