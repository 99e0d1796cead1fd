// The part of CUDA's half type Realm's kernels use, for emu.h.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

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

// IEEE binary32 to binary16, rounding to nearest even (as CUDA's).
inline __half __float2half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = (x >> 16) & 0x8000;
  const uint32_t exp = (x >> 23) & 0xff;
  uint32_t mant = x & 0x7fffff;
  if (exp == 0xff) return __half{(uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0))};
  const int e = (int)exp - 127 + 15;
  if (e >= 31) return __half{(uint16_t)(sign | 0x7c00)};
  if (e <= 0) {
    if (e < -10) return __half{sign};
    mant |= 0x800000;
    const int shift = 14 - e;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1))) ++h;
    return __half{(uint16_t)(sign | h)};
  }
  uint32_t h = ((uint32_t)e << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return __half{(uint16_t)(sign | h)};
}

// Aligned as CUDA's, so that the undefined-behaviour sanitizer catches a
// misaligned vector read.
struct alignas(4) __half2 {
  __half x, y;
};

struct alignas(8) float2 {
  float x, y;
};

inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
