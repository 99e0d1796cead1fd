// Holds a CUDA stream for a while: one thread that sleeps until `ns`
// nanoseconds of the device's global timer have passed. The work launched
// behind it queues up meanwhile and then runs back to back, with no wait
// for the host's launches between kernels: what `OpClock` (src/clock.rs)
// times op by op. Written for Realm's GPU backend.
#include <stdint.h>

extern "C" __global__ void hold_stream(unsigned long long ns) {
  unsigned long long start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    __nanosleep(10000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
}
