// A static step's RoPE tables from its positions, on the device, so that a
// recorded step computes them itself instead of the host uploading them.
// Pair i of a row at position p turns by p * freq_scale * inv_freq[i],
// the inverse frequencies computed by the host (base^(-2i / n_dims), over
// the pair's frequency factor where the model has them) and passed by
// value; computed in double precision and rounded once, as the host
// computes it, then scaled by the magnitude (ggml's attn_factor) in single
// precision. Written for Realm's GPU backend; src/fused/rope_angles.rs
// holds the launch and the CPU form.
//
// Grid: one block a row. Output: [2, rows, n_dims / 2], cosines then sines.
#include <stdint.h>

#define ANGLE_THREADS 128
// src/fused/rope_angles.rs's ROPE_PAIRS.
#define ROPE_PAIRS 256

struct InvFreqs {
  double v[ROPE_PAIRS];
};

extern "C" __global__ void __launch_bounds__(ANGLE_THREADS)
    rope_angles_f32(const uint32_t *positions, float *out, uint32_t rows, int n_dims,
                    const InvFreqs inv_freq, float freq_scale, float magnitude) {
  const uint32_t row = blockIdx.x;
  const int half = n_dims / 2;
  const double pos = (double)positions[row];
  for (int i = threadIdx.x; i < half; i += ANGLE_THREADS) {
    const double theta = pos * (double)freq_scale * inv_freq.v[i];
    out[(uint64_t)row * half + i] = (float)cos(theta) * magnitude;
    out[((uint64_t)rows + row) * half + i] = (float)sin(theta) * magnitude;
  }
}
