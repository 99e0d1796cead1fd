// Activations quantized as they are written, for the quantized products
// that read them next: GGUF's Q8_1 blocks, as the products' kernels take
// them (candle's, after llama.cpp's): per 32 values, a half scale d = amax
// / 127, a half sum of the 32 values, and 32 int8 quants round(x / d).
// Written for Realm's GPU backend (src/fused/q8.rs holds the layout and a
// CPU form); a block written here equals, bit for bit, the block the
// products' own quantizer would make of the same values, so a product reads
// the same input whichever wrote it.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

// 36 bytes: 9 words of an f32 buffer.
struct realm_block_q8_1 {
  __half d;
  __half sum;
  int8_t qs[32];
};

// Quantizes one block: lane `lane` of a whole warp holds value `v` of
// block `b`. Every lane of the warp must call it (it shuffles).
__device__ __forceinline__ void store_q8_1(float v, realm_block_q8_1 *b, int lane) {
  float amax = fabsf(v), sum = v;
  // The same butterfly as the products' quantizer, so the sum is the same.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    sum += __shfl_xor_sync(0xffffffffu, sum, o);
  }
  const float d = amax / 127.0f;
  b->qs[lane] = amax == 0.0f ? 0 : (int8_t)roundf(v / d);
  if (lane == 0) {
    b->d = __float2half(d);
    b->sum = __float2half(sum);
  }
}

// Marks block `b` as unusable (NaN scale and sum), from lane `lane`,
// without shuffles: for values that are NaN by design.
__device__ __forceinline__ void store_q8_1_nan(realm_block_q8_1 *b, int lane) {
  b->qs[lane] = 0;
  if (lane == 0) {
    b->d = __float2half(__int_as_float(0x7fc00000));
    b->sum = b->d;
  }
}

// The matrix products' layout (candle's MMQ kernels, after llama.cpp's,
// for more than 8 rows): 128 values a block, 144 bytes, the blocks of a
// matrix's rows transposed: block c * rows + r holds values 128c .. 128c +
// 127 of row r. Rows are padded with zeros to a multiple of 512 values
// (MMQ_PAD), and MMQ_SPARE blocks follow the last, which a product may
// read (past its last row) but never uses. Per 32 values the scales are d
// = 1 / (127 / amax) and quants round(x * (127 / amax)), as candle's
// quantizer computes them; the weight type decides which scales a block
// carries:
// - DS4 (Q4_0, Q4_1, Q5_1, Q4_K, Q5_K): half d and half sum, pairs;
// - D4 (Q5_0, Q8_0, Q3_K, Q6_K): float d.
// An op writes both, the DS4 blocks and then the D4 blocks, since it does
// not know the weight its product multiplies by. src/fused/q8.rs holds the
// layout and a CPU form.
#define MMQ_PAD 512
#define MMQ_SPARE 128

struct realm_block_mmq_ds4 {
  __half ds[8];  // d0, s0, d1, s1, d2, s2, d3, s3
  int8_t qs[128];
};

struct realm_block_mmq_d4 {
  float d[4];
  int8_t qs[128];
};

// Values a row of `width` takes in the layout.
__device__ __forceinline__ uint64_t mmq_padded(uint32_t width) {
  return ((uint64_t)width + MMQ_PAD - 1) / MMQ_PAD * MMQ_PAD;
}

// Blocks of one kind for `rows` rows of `width`, spare blocks included.
__device__ __forceinline__ uint64_t mmq_blocks(uint32_t rows, uint32_t width) {
  return (uint64_t)rows * (mmq_padded(width) / 128) + MMQ_SPARE;
}

// Stores quant `q` of column `col` of row `row` in both kinds of blocks,
// and with `scales` (one thread of the column's 32) their scale `d` and
// sum `sum`.
__device__ __forceinline__ void store_q8_1_mmq_at(realm_block_mmq_ds4 *mmq, uint32_t rows,
                                                  uint32_t width, uint32_t row, uint64_t col,
                                                  int8_t q, bool scales, float d, float sum) {
  const uint64_t i = (col / 128) * rows + row;
  realm_block_mmq_d4 *d4 = (realm_block_mmq_d4 *)(mmq + mmq_blocks(rows, width));
  mmq[i].qs[col % 128] = q;
  d4[i].qs[col % 128] = q;
  if (scales) {
    const int sub = (col % 128) / 32;
    mmq[i].ds[2 * sub] = __float2half(d);
    mmq[i].ds[2 * sub + 1] = __float2half(sum);
    d4[i].d[sub] = d;
  }
}

// Quantizes value `v`, column `col` of row `row` of `rows` rows of
// `width`, into the blocks at `mmq` (DS4, then D4): lane `lane` of a whole
// warp holds the column `col` whose lane is `col % 32`, so a warp holds 32
// values that share scales. Every lane of the warp must call it (it
// shuffles).
__device__ __forceinline__ void store_q8_1_mmq(float v, realm_block_mmq_ds4 *mmq, uint32_t rows,
                                               uint32_t width, uint32_t row, uint32_t col,
                                               int lane) {
  float amax = fabsf(v);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  // The sum as candle's quantizer adds it: each of 8 threads adds its 4
  // values in order, then the 8 sums pair up (xor 4, 2, 1 of them).
  const int first = lane & ~3;
  const float v0 = __shfl_sync(0xffffffffu, v, first), v1 = __shfl_sync(0xffffffffu, v, first + 1),
              v2 = __shfl_sync(0xffffffffu, v, first + 2),
              v3 = __shfl_sync(0xffffffffu, v, first + 3);
  float sum = ((v0 + v1) + v2) + v3;
#pragma unroll
  for (int o = 16; o >= 4; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float d_inv = 127.0f / amax;
  // 0 * inf (a block of zeros) is NaN, which converts to 0.
  const float r = roundf(v * d_inv);
  const int8_t q = r != r ? 0 : (int8_t)fmaxf(-128.0f, fminf(127.0f, r));
  store_q8_1_mmq_at(mmq, rows, width, row, col, q, lane == 0, 1.0f / d_inv, sum);
}

// Writes column `col` of row `row` as quant 0, and for the first column of
// 32 (which the caller writes with the rest of them) scale and sum `d`;
// any thread, no shuffles. Zero (values 0) for the padding past `width`;
// NaN for a row that is NaN by design (attention past its cache), so that
// a product of it is NaN as the values are.
__device__ __forceinline__ void store_q8_1_mmq_const(realm_block_mmq_ds4 *mmq, uint32_t rows,
                                                     uint32_t width, uint32_t row, uint64_t col,
                                                     float d) {
  store_q8_1_mmq_at(mmq, rows, width, row, col, 0, col % 32 == 0, d, d);
}

// Writes row `row`'s padding (its columns from `width` on) as zeros: thread
// `t` of `threads` takes every threads-th column.
__device__ __forceinline__ void store_q8_1_mmq_padding(realm_block_mmq_ds4 *mmq, uint32_t rows,
                                                       uint32_t width, uint32_t row, uint32_t t,
                                                       uint32_t threads) {
  for (uint64_t col = width + t; col < mmq_padded(width); col += threads) {
    store_q8_1_mmq_const(mmq, rows, width, row, col, 0.0f);
  }
}
