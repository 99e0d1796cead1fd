// Gated activations in one kernel: out = act(gate) * up, for SwiGLU (act =
// SiLU) and GeGLU (act = GELU, tanh approximation). Written for Realm's
// GPU backend; src/fused.rs holds the launch and the CPU form.
#include <stdint.h>

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float gelu(float x) {
  const float sqrt_two_over_pi = 0.7978845608028654f;
  return 0.5f * x * (1.0f + tanhf(sqrt_two_over_pi * x * (1.0f + 0.044715f * x * x)));
}

extern "C" __global__ void swiglu_f32(const float *gate, const float *up, float *out, uint32_t n) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    out[i] = silu(gate[i]) * up[i];
}

extern "C" __global__ void geglu_f32(const float *gate, const float *up, float *out, uint32_t n) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    out[i] = gelu(gate[i]) * up[i];
}
