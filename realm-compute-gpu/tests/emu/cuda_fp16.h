// The part of CUDA's half type Realm's kernels use, for emu.h.
#pragma once
#include <cmath>
#include <cstdint>

struct __half {
  uint16_t bits;
};

// IEEE binary16 to binary32, exactly.
inline float __half2float(__half h) {
  const uint32_t sign = (h.bits >> 15) & 1, exp = (h.bits >> 10) & 0x1f, frac = h.bits & 0x3ff;
  float mag;
  if (exp == 0) {
    mag = std::ldexp((float)frac, -24);
  } else if (exp == 31) {
    mag = frac ? NAN : INFINITY;
  } else {
    mag = std::ldexp((float)(frac | 0x400), (int)exp - 25);
  }
  return sign ? -mag : mag;
}
