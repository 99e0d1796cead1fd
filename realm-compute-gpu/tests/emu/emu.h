// Runs Realm's CUDA kernels on the CPU, for tests on machines without a
// GPU: each block's threads are OS threads, one block at a time, with
// barriers for __syncthreads and for warp shuffles. Enough CUDA for
// realm-compute-gpu/kernels/*.cu, not a general emulator: kernels must
// call shuffles from every lane of a warp and __syncthreads from every
// thread of a block, as CUDA requires anyway.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

// One block's barriers and the lanes' shuffle slots.
struct EmuBlock {
  std::barrier<> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<float> lanes;
  explicit EmuBlock(unsigned threads) : all(threads), lanes(threads) {
    for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(32));
  }
};
inline EmuBlock *emu_block = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// Blocks run one at a time, so a static is one block's shared memory.
#define __shared__ static

#define __align__(n) __attribute__((aligned(n)))

struct alignas(16) float4 {
  float x, y, z, w;
};

inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }

inline void __syncthreads() { emu_block->all.arrive_and_wait(); }

inline void __syncwarp() { emu_block->warps[threadIdx.x / 32]->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int offset) {
  const unsigned t = threadIdx.x, warp = t / 32, lane = t % 32;
  std::barrier<> &bar = *emu_block->warps[warp];
  emu_block->lanes[t] = v;
  bar.arrive_and_wait();
  const float r = emu_block->lanes[warp * 32 + (lane ^ (unsigned)offset)];
  bar.arrive_and_wait();
  return r;
}

inline float __shfl_sync(unsigned, float v, int src) {
  const unsigned t = threadIdx.x, warp = t / 32;
  std::barrier<> &bar = *emu_block->warps[warp];
  emu_block->lanes[t] = v;
  bar.arrive_and_wait();
  const float r = emu_block->lanes[warp * 32 + (unsigned)src % 32];
  bar.arrive_and_wait();
  return r;
}

// A read through the read-only data cache: a plain read here.
template <class T>
inline T __ldg(const T *p) {
  return *p;
}

inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

// Runs `kernel` over `grid` blocks of `block` threads (block.x a multiple
// of 32), one block at a time: in order (x fastest, then y, then z), or in
// reverse when $EMU_REVERSE_BLOCKS is set. A GPU runs them in any order at
// once, so a kernel whose blocks read what others write can give another
// result run the other way round.
template <class... P, class... A>
void emu_launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
  gridDim = grid;
  blockDim = block;
  const unsigned long n = (unsigned long)grid.x * grid.y * grid.z;
  const bool reverse = std::getenv("EMU_REVERSE_BLOCKS") != nullptr;
  for (unsigned long i = 0; i < n; ++i) {
    const unsigned long at = reverse ? n - 1 - i : i;
    const unsigned bx = at % grid.x, by = at / grid.x % grid.y, bz = at / grid.x / grid.y;
    EmuBlock b(block.x);
    emu_block = &b;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block.x; ++t) {
      threads.emplace_back([=] {
        threadIdx = dim3{t, 0, 0};
        blockIdx = dim3{bx, by, bz};
        kernel(static_cast<P>(args)...);
      });
    }
    for (auto &th : threads) th.join();
    emu_block = nullptr;
  }
}
