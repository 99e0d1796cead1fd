// Attention of a few query rows over a KV cache in one kernel: scores,
// scale, soft-cap, the causal and sliding-window mask, softmax and the
// weighted sum of values, with the query's RoPE when asked. Written for
// Realm's GPU backend (src/fused/attention.rs holds the launch and a CPU
// form of the same arithmetic, which its tests compare with).
//
// With q_norm, each query head is RMS-normed (weight q_norm, epsilon
// norm_eps) before its RoPE (Gemma 3's query norm).
//
// Grid: (rows, n_heads, splits). Block: WARPS warps. Row r's caches are at k and v
// (one for every row), at k + r * row_stride (a block's consecutive slots),
// or, with by_slots, where `slots` says. Row r's query is at position
// pos(r) (from `positions`, or pos_base + r when that is null) and sees the
// keys j with lo <= j <= pos, lo = pos + 1 - window when there is a window.
// Each warp takes every WARPS-th run of 32 keys (a key a lane for the
// scores, then every lane over the run's values, two dimensions a lane at
// a time) and keeps a running maximum, sum and weighted sum of values (one
// pass, rescaling as the maximum grows); the warps' partial results are
// then merged through shared memory. With `q8` not null, the output also
// as Q8_1 blocks there, and with `mmq` not null in the matrix products'
// layout there, padding included, for `rows` (gridDim.x) rows of n_heads *
// head_dim (q8_1.cuh; head_dim a multiple of 32 for either), for the
// product that reads it.
//
// With more than one split (gridDim.z; flash-decoding, for long caches and
// few rows and heads, which would leave most of the GPU idle), block z
// takes every splits-th stretch of 32 * WARPS keys, starting with the z-th,
// and writes its partial result to `part` instead of `out`: its maximum,
// its sum, and its sum of values scaled to that maximum (a block may see no
// key: maximum -inf, sums 0). decode_attention_merge then weighs the
// splits' results into the output.
//
// With new_k not null (a decode step whose rows each have their own cache,
// named by `slots`), the kernel also does what rope_store does: row r's
// new key (new_k + r * new_k_stride, n_kv_heads heads) is normed with
// k_norm when given and rotated like the query, its new value taken from
// new_v (new_v + r * new_v_stride), both rounded to the cache's type; the
// first head of each KV group (in split 0) stores them at position pos,
// and every block attends to them from shared memory rather than from the
// cache, so that no block reads what another writes in this launch (which
// is also what lets the compiler read caches through the non-coherent
// cache; the host names a different cache for each row). One launch where
// there were two.
#include <cuda_fp16.h>
#include <stdint.h>

#include "q8_1.cuh"
#include "attention.cuh"
#include "slots.cuh"

// Eight warps, so that a long cache is read by many runs at once.
#define WARPS 8
// Keys whose values a lane loads before it adds them.
#define VALUE_BATCH 8

// HD: the largest head_dim this instance takes (64, 128 or 256); each lane
// holds HD / 32 values of the sum.
template <typename T, int HD>
__device__ void decode_attention(
    const float *__restrict__ q,   // row r: q + r * q_stride, [n_heads, head_dim]
    const T *__restrict__ k,       // row r: k + r * row_stride, [kv_heads, max_seq, head_dim]
    const T *__restrict__ v,
    const uint32_t *__restrict__ positions,  // [rows], or null
    float *__restrict__ out,       // [rows, n_heads, head_dim]
    uint32_t pos_base, int n_heads, int n_kv_heads, int head_dim, int max_seq,
    long long row_stride, const SlotTable &slots, int by_slots, float scale, float softcap,
    int window, const float *__restrict__ rope_cos,  // [rows, n_dims / 2], or null: q is rotated
    const float *__restrict__ rope_sin, int n_dims, int neox,
    realm_block_q8_1 *__restrict__ q8, realm_block_mmq_ds4 *__restrict__ mmq, long long q_stride,
    const float *__restrict__ q_norm, float norm_eps,
    float *__restrict__ part,  // split launches: [rows, n_heads, splits] partial results
    const float *__restrict__ new_k, const float *__restrict__ new_v, long long new_k_stride,
    long long new_v_stride, const float *__restrict__ k_norm) {
  const int row = blockIdx.x;
  const int head = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int split = blockIdx.z, splits = gridDim.z;
  const int kv = head / (n_heads / n_kv_heads);
  const int pos = positions ? (int)positions[row] : (int)pos_base + row;
  const int lo = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
  const long long out_off = ((long long)row * n_heads + head) * head_dim;
  float *oh = out + out_off;
  // The matrix layout's row: this head's columns, and (head 0's first
  // split) the padding after the last head's.
  const uint32_t width = (uint32_t)(n_heads * head_dim), col0 = (uint32_t)(head * head_dim);
  if (mmq && head == 0 && split == 0) {
    store_q8_1_mmq_padding(mmq, gridDim.x, width, row, threadIdx.x, 32 * WARPS);
  }
  if (pos < 0 || pos >= max_seq) {
    // Past the cache: say so with NaN rather than read another's memory.
    for (int d = threadIdx.x; d < head_dim; d += 32 * WARPS) {
      oh[d] = __int_as_float(0x7fc00000);
      if (q8) store_q8_1_nan(q8 + (out_off + d) / 32, lane);
      if (mmq) {
        store_q8_1_mmq_const(mmq, gridDim.x, width, row, col0 + d, __int_as_float(0x7fc00000));
      }
    }
    return;
  }

  const float *qh = q + row * q_stride + (long long)head * head_dim;
  const long long head_off = (long long)kv * max_seq * head_dim;
  const T *kh = (by_slots ? (const T *)slots.k[row] : k + row * row_stride) + head_off;
  const T *vh = (by_slots ? (const T *)slots.v[row] : v + row * row_stride) + head_off;

  // The query, normed and rotated here when asked (attention.cuh); with
  // new_k, the new key too (by another warp) and the new value.
  __shared__ __align__(16) float q_rot[HD];
  __shared__ float k_new[HD];
  __shared__ float v_new[HD];
  const bool fresh = new_k != nullptr;
  const float *nk = fresh ? new_k + row * new_k_stride + (long long)kv * head_dim : nullptr;
  const float *nv = fresh ? new_v + row * new_v_stride + (long long)kv * head_dim : nullptr;
  for (int d = threadIdx.x; d < head_dim; d += 32 * WARPS) {
    q_rot[d] = qh[d];
    if (fresh) {
      k_new[d] = nk[d];
      v_new[d] = to_f32(from_f32<T>(nv[d]));
    }
  }
  __syncthreads();
  if (warp < 2) {
    const long long half = n_dims / 2;
    const float *c = rope_cos ? rope_cos + row * half : nullptr;
    const float *s = rope_cos ? rope_sin + row * half : nullptr;
    if (warp == 0) {
      warp_prepare_query(q_rot, head_dim, q_norm, norm_eps, c, s, n_dims, neox);
    } else if (fresh) {
      warp_prepare_query(k_new, head_dim, k_norm, norm_eps, c, s, n_dims, neox);
      // The key as the cache will hold it.
      for (int d = lane; d < head_dim; d += 32) k_new[d] = to_f32(from_f32<T>(k_new[d]));
    }
  }
  __syncthreads();
  // One block per row and KV head stores the new key and value. No block
  // of this launch reads position pos from the cache.
  if (fresh && split == 0 && head % (n_heads / n_kv_heads) == 0) {
    T *kw = (T *)slots.k[row] + head_off + (long long)pos * head_dim;
    T *vw = (T *)slots.v[row] + head_off + (long long)pos * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += 32 * WARPS) {
      kw[d] = from_f32<T>(k_new[d]);
      vw[d] = from_f32<T>(v_new[d]);
    }
  }
  // A lane's share of the sum: pairs of dimensions, value i of the lane
  // being dimension dim(i) (pair lane + 32 (i / 2)), so that a row's
  // values are read two at a time where the rows allow it (v2).
  constexpr int PER_LANE = HD / 32;
  const auto dim = [lane](int i) { return 2 * (lane + 32 * (i >> 1)) + (i & 1); };
  const bool v2 =
      (head_dim & 1) == 0 && ((unsigned long long)vh & (2 * sizeof(T) - 1)) == 0;
  float acc[PER_LANE];
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) acc[i] = 0.0f;
  // Whole float4 reads of the keys when every row starts 16-byte aligned.
  const bool by4 = (head_dim & 3) == 0 && ((unsigned long long)kh & 15) == 0;
  float m = -INFINITY;  // running maximum score
  float l = 0.0f;       // running sum of exp(score - m)
  // The keys read from the cache: up to pos, or with new_k up to pos - 1.
  const int last = fresh ? pos - 1 : pos;
  // Warp w takes the runs of 32 keys from lo + 32 (w + WARPS split), every
  // (WARPS splits)-th run: lane i scores key base + i, then every lane adds
  // the run's values.
  for (int base = lo + 32 * (warp + WARPS * split); base <= last; base += 32 * WARPS * splits) {
    const int j = base + lane;
    float s = -INFINITY;  // past last: not seen
    if (j <= last) {
      const T *kj = kh + (long long)j * head_dim;
      float dot = 0.0f;
      if (by4) {
#pragma unroll 16
        for (int d = 0; d < HD; d += 4) {
          if (d < head_dim) {
            const float4 kk = load4(kj + d);
            const float4 qq = *reinterpret_cast<const float4 *>(&q_rot[d]);
            dot += qq.x * kk.x + qq.y * kk.y + qq.z * kk.z + qq.w * kk.w;
          }
        }
      } else {
        for (int d = 0; d < head_dim; ++d) dot += q_rot[d] * to_f32(kj[d]);
      }
      s = dot * scale;
      if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
    }
    // Key base is seen (lo <= base <= last), so m_new is finite.
    const float m_new = fmaxf(m, warp_max(s));
    const float p = expf(s - m_new);       // 0 past last
    const float shrink = expf(m - m_new);  // 0 for the first run (m = -inf)
    l = l * shrink + warp_sum(p);
    m = m_new;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) acc[i] *= shrink;
    // The run's values, VALUE_BATCH keys at a time: all their loads go out
    // before the first sum needs one. A key past the run (past last) has
    // weight 0 and reads the run's last row instead.
    const int run = min(32, last - base + 1);
    for (int j0 = 0; j0 < run; j0 += VALUE_BATCH) {
      float pj[VALUE_BATCH];
      float vals[VALUE_BATCH][PER_LANE];
#pragma unroll
      for (int u = 0; u < VALUE_BATCH; ++u) {
        const int jj = j0 + u;  // below 32: runs are at most 32
        pj[u] = __shfl_sync(0xffffffffu, p, jj);
        const T *vj = vh + (long long)(base + min(jj, run - 1)) * head_dim;
#pragma unroll
        for (int i = 0; i < PER_LANE; i += 2) {
          const int d = dim(i);
          float2 x = {0.0f, 0.0f};
          if (v2) {
            if (d < head_dim) x = load2(vj + d);
          } else {
            if (d < head_dim) x.x = to_f32(vj[d]);
            if (d + 1 < head_dim) x.y = to_f32(vj[d + 1]);
          }
          vals[u][i] = x.x;
          vals[u][i + 1] = x.y;
        }
      }
#pragma unroll
      for (int u = 0; u < VALUE_BATCH; ++u) {
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) acc[i] += pj[u] * vals[u][i];
      }
    }
  }

  // The new key (position pos), from shared memory: warp 0 of split 0.
  if (fresh && warp == 0 && split == 0) {
    float dot = 0.0f;
    for (int d = lane; d < head_dim; d += 32) dot += q_rot[d] * k_new[d];
    float s = warp_sum(dot) * scale;
    if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
    const float m_new = fmaxf(m, s);
    const float p = expf(s - m_new);
    const float shrink = expf(m - m_new);  // 0 when no key came before (m = -inf)
    l = l * shrink + p;
    m = m_new;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int d = dim(i);
      acc[i] = acc[i] * shrink + (d < head_dim ? p * v_new[d] : 0.0f);
    }
  }

  __shared__ float warp_max[WARPS];
  __shared__ float warp_sum[WARPS];
  __shared__ float warp_acc[WARPS][HD];
  if (lane == 0) {
    warp_max[warp] = m;
    warp_sum[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int d = dim(i);
    if (d < head_dim) warp_acc[warp][d] = acc[i];
  }
  __syncthreads();

  // Key pos is always visible, so with one split some warp has a finite
  // maximum; a split may have none (then its sums stay 0).
  float top = -INFINITY;
#pragma unroll
  for (int w = 0; w < WARPS; ++w) top = fmaxf(top, warp_max[w]);
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < WARPS; ++w)
    if (warp_max[w] > -INFINITY) total += warp_sum[w] * expf(warp_max[w] - top);
  if (splits > 1) {
    const long long at = ((long long)row * n_heads + head) * splits + split;
    float *acc_out = part + at * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += 32 * WARPS) {
      float o = 0.0f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w)
        if (warp_max[w] > -INFINITY) o += warp_acc[w][d] * expf(warp_max[w] - top);
      acc_out[d] = o;
    }
    if (threadIdx.x == 0) {
      float *stats = part + (long long)gridDim.x * n_heads * splits * head_dim + 2 * at;
      stats[0] = top;
      stats[1] = total;
    }
    return;
  }
  for (int d = threadIdx.x; d < head_dim; d += 32 * WARPS) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w)
      if (warp_max[w] > -INFINITY) o += warp_acc[w][d] * expf(warp_max[w] - top);
    oh[d] = o / total;
    // A warp's 32 values are one block; with head_dim a multiple of 32 its
    // lanes loop together.
    if (q8) store_q8_1(o / total, q8 + (out_off + d) / 32, lane);
    if (mmq) store_q8_1_mmq(o / total, mmq, gridDim.x, width, row, col0 + d, lane);
  }
}

// Two blocks an SM at least: registers for the sum and the batch of values
// without spilling (ptxas otherwise kept the 128-value instances to 64
// registers and spilled).
#define DECODE_ATTENTION(NAME, T, HD)                                                      \
  extern "C" __global__ void __launch_bounds__(32 * WARPS, 2) NAME(                           \
      const float *q, const T *k, const T *v, const uint32_t *positions, float *out,           \
      uint32_t pos_base, int n_heads, int n_kv_heads, int head_dim, int max_seq,               \
      long long row_stride, const SlotTable slots, int by_slots, float scale,                 \
      float softcap, int window, const float *rope_cos, const float *rope_sin, int n_dims,     \
      int neox, realm_block_q8_1 *q8, realm_block_mmq_ds4 *mmq, long long q_stride,            \
      const float *q_norm, float norm_eps, float *part, const float *new_k,                    \
      const float *new_v, long long new_k_stride, long long new_v_stride,                      \
      const float *k_norm) {                                                                   \
    decode_attention<T, HD>(q, k, v, positions, out, pos_base, n_heads, n_kv_heads, head_dim, \
                            max_seq, row_stride, slots, by_slots, scale, softcap, window,     \
                            rope_cos, rope_sin, n_dims, neox, q8, mmq, q_stride, q_norm,      \
                            norm_eps, part, new_k, new_v, new_k_stride, new_v_stride, k_norm); \
  }

// Heads of up to 64, 128 and 256 values.
DECODE_ATTENTION(decode_attention_f32_64, float, 64)
DECODE_ATTENTION(decode_attention_f16_64, __half, 64)
DECODE_ATTENTION(decode_attention_f32_128, float, 128)
DECODE_ATTENTION(decode_attention_f16_128, __half, 128)
DECODE_ATTENTION(decode_attention_f32_256, float, 256)
DECODE_ATTENTION(decode_attention_f16_256, __half, 256)

// The output of a split decode_attention launch: grid (rows, n_heads),
// block MERGE_THREADS threads. Row r's head h is the splits' sums of values
// each scaled from its maximum to their common one, over the sum of their
// scaled sums; a row whose position is past the cache is left as the
// attention kernel marked it (NaN, blocks included, in every split). With
// `q8` or `mmq` not null, the output also as Q8_1 blocks or in the matrix
// products' layout there, as the attention kernel writes them (whose first
// split already wrote the padding; head_dim a multiple of 32).
#define MERGE_THREADS 128
extern "C" __global__ void __launch_bounds__(MERGE_THREADS) decode_attention_merge(
    const float *__restrict__ part, const uint32_t *__restrict__ positions, uint32_t pos_base,
    int max_seq, float *__restrict__ out, realm_block_q8_1 *__restrict__ q8,
    realm_block_mmq_ds4 *__restrict__ mmq, int n_heads, int head_dim, int splits) {
  const int row = blockIdx.x, head = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int pos = positions ? (int)positions[row] : (int)pos_base + row;
  const long long out_off = ((long long)row * n_heads + head) * head_dim;
  if (pos < 0 || pos >= max_seq) return;
  const uint32_t width = (uint32_t)(n_heads * head_dim), col0 = (uint32_t)(head * head_dim);
  const long long first = ((long long)row * n_heads + head) * splits;
  const float *acc = part + first * head_dim;
  const float *stats = part + (long long)gridDim.x * n_heads * splits * head_dim + 2 * first;
  // The split holding key pos has a finite maximum.
  float top = -INFINITY;
  for (int s = 0; s < splits; ++s) top = fmaxf(top, stats[2 * s]);
  float total = 0.0f;
  for (int s = 0; s < splits; ++s)
    if (stats[2 * s] > -INFINITY) total += stats[2 * s + 1] * expf(stats[2 * s] - top);
  for (int d = threadIdx.x; d < head_dim; d += MERGE_THREADS) {
    float o = 0.0f;
    for (int s = 0; s < splits; ++s)
      if (stats[2 * s] > -INFINITY) o += acc[(long long)s * head_dim + d] * expf(stats[2 * s] - top);
    out[out_off + d] = o / total;
    // A warp's 32 values are one block (head_dim a multiple of 32).
    if (q8) store_q8_1(o / total, q8 + (out_off + d) / 32, lane);
    if (mmq) store_q8_1_mmq(o / total, mmq, gridDim.x, width, row, col0 + d, lane);
  }
}
