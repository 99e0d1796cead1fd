// Runs Realm's CUDA kernels on the CPU, for tests on machines without a
// GPU, one block at a time. A block's threads are fibers on one OS thread,
// switched where they wait at a barrier (__syncthreads, warp shuffles):
// started with ucontext, then switched with the compiler's setjmp and
// longjmp builtins, which unlike swapcontext make no system call and,
// unlike libc's longjmp, are not intercepted by AddressSanitizer. A
// barrier waits, as on a GPU, until each thread it counts has reached it,
// and a block whose threads wait where the others never come is reported
// and aborted rather than hung. Built with -DEMU_OS_THREADS, the threads
// are OS threads instead, so that ThreadSanitizer sees a race between them
// (slower: each barrier wakes every thread). Enough CUDA for
// realm-compute-gpu/kernels/*.cu, not a general emulator: kernels must
// call shuffles from every lane of a warp and __syncthreads from every
// thread of a block, as CUDA requires anyway.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <memory>
#include <tuple>
#include <vector>
#ifdef EMU_OS_THREADS
#include <barrier>
#include <thread>
#else
#include <ucontext.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif
#endif

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

#ifdef EMU_OS_THREADS
// One block's barriers (0: the block's, 1 + w: warp w's).
struct EmuBlock {
  std::vector<std::unique_ptr<std::barrier<>>> bars;
  std::vector<float> lanes;
  explicit EmuBlock(unsigned threads) : lanes(threads) {
    bars.push_back(std::make_unique<std::barrier<>>(threads));
    for (unsigned w = 0; w < threads / 32; ++w) bars.push_back(std::make_unique<std::barrier<>>(32));
  }
  void arrive(unsigned bar) { bars[bar]->arrive_and_wait(); }
};
#else
// One thread of a block: its context, its stack, the barrier it waits at.
struct EmuFiber {
  ucontext_t start;
  void *at[5];
  std::unique_ptr<char[]> stack;
  bool started = false, done = false;
  int waiting = -1;
#ifdef EMU_ASAN
  void *fake = nullptr;
#endif
};

// Stack of each fiber: the kernels' frames are small, ASan's redzones grow
// them a few times.
constexpr size_t EMU_STACK = 256 * 1024;

// One block's fibers, barriers (0: the block's, 1 + w: warp w's) and
// shuffle slots, and the scheduler that runs the fibers in turn.
struct EmuBlock {
  std::vector<EmuFiber> fibers;
  std::vector<unsigned> arrived, size;
  std::vector<float> lanes;
  void *scheduler[5];
  unsigned current = 0;
#ifdef EMU_ASAN
  const void *main_bottom = nullptr;
  size_t main_size = 0;
#endif
  explicit EmuBlock(unsigned threads) : fibers(threads), lanes(threads) {
    size.push_back(threads);
    for (unsigned w = 0; w < threads / 32; ++w) size.push_back(32);
    arrived.assign(size.size(), 0);
    for (auto &f : fibers) f.stack.reset(new char[EMU_STACK]);
  }
  // From a fiber to the scheduler; back when the fiber is run again.
  void yield();
  void arrive(unsigned bar);
};
#endif
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

inline void __syncthreads() { emu_block->arrive(0); }

inline void __syncwarp() { emu_block->arrive(1 + threadIdx.x / 32); }

inline float __shfl_xor_sync(unsigned, float v, int offset) {
  const unsigned t = threadIdx.x, warp = t / 32, lane = t % 32;
  emu_block->lanes[t] = v;
  emu_block->arrive(1 + warp);
  const float r = emu_block->lanes[warp * 32 + (lane ^ (unsigned)offset)];
  emu_block->arrive(1 + warp);
  return r;
}

inline float __shfl_sync(unsigned, float v, int src) {
  const unsigned t = threadIdx.x, warp = t / 32;
  emu_block->lanes[t] = v;
  emu_block->arrive(1 + warp);
  const float r = emu_block->lanes[warp * 32 + (unsigned)src % 32];
  emu_block->arrive(1 + warp);
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

// The blocks of a launch's grid, one at a time: in order (x fastest, then
// y, then z), or in reverse when $EMU_REVERSE_BLOCKS is set. A GPU runs them
// in any order at once, so a kernel whose blocks read what others write can
// give another result run the other way round.
struct EmuGrid {
  dim3 grid;
  unsigned long n;
  bool reverse;
  explicit EmuGrid(dim3 g)
      : grid(g), n((unsigned long)g.x * g.y * g.z),
        reverse(std::getenv("EMU_REVERSE_BLOCKS") != nullptr) {}
  // The index of the i-th block to run.
  dim3 block(unsigned long i) const {
    const unsigned long at = reverse ? n - 1 - i : i;
    return dim3{(unsigned)(at % grid.x), (unsigned)(at / grid.x % grid.y),
                (unsigned)(at / grid.x / grid.y)};
  }
};

// Runs `kernel` over `grid` blocks of `block` threads (block.x a multiple
// of 32), one block at a time, in EmuGrid's order.
#ifdef EMU_OS_THREADS
// The block's threads are started once and go from block to block together
// (a barrier between blocks).
template <class... P, class... A>
void emu_launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
  gridDim = grid;
  blockDim = block;
  const EmuGrid order(grid);
  EmuBlock b(block.x);
  emu_block = &b;
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < block.x; ++t) {
    threads.emplace_back([=, &b] {
      threadIdx = dim3{t, 0, 0};
      for (unsigned long i = 0; i < order.n; ++i) {
        blockIdx = order.block(i);
        kernel(static_cast<P>(args)...);
        // Every thread done with this block (its shared memory, its
        // shuffle slots) before any starts the next.
        b.arrive(0);
      }
    });
  }
  for (auto &th : threads) th.join();
  emu_block = nullptr;
}
#else
// The switches are not instrumented (EMU_SWITCH): AddressSanitizer would
// unpoison the stack before each jump, a system call and a memset a switch,
// where the fibers' frames all stay live; it is told of each switch instead.
#define EMU_SWITCH gnu::noinline, gnu::no_sanitize_address

// Resumes the context `to` saved by __builtin_setjmp (in a function of its
// own: GCC wants the two builtins in different functions).
[[EMU_SWITCH]] inline void emu_jump(void **to) { __builtin_longjmp(to, 1); }

[[EMU_SWITCH]] inline void EmuBlock::yield() {
  EmuFiber &f = fibers[current];
  if (__builtin_setjmp(f.at) == 0) {
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&f.fake, main_bottom, main_size);
#endif
    emu_jump(scheduler);
  }
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake, &main_bottom, &main_size);
#endif
}

inline void EmuBlock::arrive(unsigned bar) {
  if (++arrived[bar] == size[bar]) {
    // The last to arrive lets every waiter go, and goes on itself.
    arrived[bar] = 0;
    for (auto &f : fibers)
      if (f.waiting == (int)bar) f.waiting = -1;
    return;
  }
  fibers[current].waiting = (int)bar;
  yield();
}

// The kernel call each fiber of the launch makes (makecontext passes no
// pointers portably, so the fibers find it here).
inline void (*emu_body)() = nullptr;

[[EMU_SWITCH]] inline void emu_fiber_main() {
  EmuBlock &b = *emu_block;
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.main_bottom, &b.main_size);
#endif
  emu_body();
  b.fibers[b.current].done = true;
#ifdef EMU_ASAN
  // Back to the scheduler for good: this fiber's fake stack can go.
  __sanitizer_start_switch_fiber(nullptr, b.main_bottom, b.main_size);
#endif
  emu_jump(b.scheduler);
}

// Runs one block's fibers from their start until each has returned.
[[EMU_SWITCH]] inline void emu_run_block(EmuBlock &b) {
  for (auto &f : b.fibers) {
    f.started = f.done = false;
    f.waiting = -1;
    getcontext(&f.start);
    f.start.uc_stack.ss_sp = f.stack.get();
    f.start.uc_stack.ss_size = EMU_STACK;
    f.start.uc_link = nullptr;
    makecontext(&f.start, emu_fiber_main, 0);
  }
  const unsigned n = (unsigned)b.fibers.size();
  unsigned finished = 0;
  while (finished < n) {
    bool ran = false;
    for (unsigned t = 0; t < n; ++t) {
      EmuFiber &f = b.fibers[t];
      if (f.done || f.waiting >= 0) continue;
      ran = true;
      b.current = t;
      threadIdx = dim3{t, 0, 0};
#ifdef EMU_ASAN
      void *fake = nullptr;
#endif
      if (__builtin_setjmp(b.scheduler) == 0) {
#ifdef EMU_ASAN
        __sanitizer_start_switch_fiber(&fake, f.stack.get(), EMU_STACK);
#endif
        if (!f.started) {
          f.started = true;
          setcontext(&f.start);
        }
        emu_jump(f.at);
      }
#ifdef EMU_ASAN
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
      if (f.done) ++finished;
    }
    if (!ran) {
      std::fprintf(stderr,
                   "emu: block (%u, %u, %u): every live thread waits at a barrier that "
                   "the others never reach\n",
                   blockIdx.x, blockIdx.y, blockIdx.z);
      std::abort();
    }
  }
}

template <class... P, class... A>
void emu_launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
  gridDim = grid;
  blockDim = block;
  const EmuGrid order(grid);
  EmuBlock b(block.x);
  emu_block = &b;
  static void (*call)(P...);
  static std::tuple<A...> held;
  call = kernel;
  held = std::tuple<A...>(args...);
  emu_body = [] { std::apply([](A... a) { call(static_cast<P>(a)...); }, held); };
  for (unsigned long i = 0; i < order.n; ++i) {
    blockIdx = order.block(i);
    emu_run_block(b);
  }
  emu_block = nullptr;
}
#endif
