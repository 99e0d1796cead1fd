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
