// CRC-32 (the zlib polynomial) of a page, from native code: the same value as core's
// pageChecksum() in JavaScript (node:zlib crc32), so native readers can verify pages against
// checksums written by JavaScript (FileTier meta files, snapshot manifests).
//
// Two implementations, chosen once per process:
//  - a carry-less multiplication fold (AVX-512 VPCLMULQDQ) for whole multiples of 256 bytes
//    (every page): 256 bytes per step in four 512-bit accumulators, the last 64 bytes reduced
//    by zlib. Its fold constants are derived at start-up from the polynomial (x^n mod P
//    computed by a bitwise CRC), and the result is checked against zlib on a probe buffer
//    before it is ever used; on any mismatch or a CPU without the instructions it is not used.
//  - zlib's crc32_z as exported by the Node.js binary itself (Node bundles zlib and exports its
//    symbols to addons; node-gyp puts its zlib.h on the include path): no library to link.
// Node's crc32_z runs at ~5 GB/s here (~0.8 us per 4 KiB page); the fold at ~20+ GB/s, which is
// what lets a restore fault verify its page without losing to a handler that verifies nothing.
#pragma once

#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tierstack {

namespace detail {

// The raw (no pre/post inversion) reflected CRC-32 register update, one bit at a time: used
// only to derive the fold constants, never on data.
inline uint32_t crc32_raw_bitwise(uint32_t r, const uint8_t *p, size_t n) {
  while (n--) {
    r ^= *p++;
    for (int k = 0; k < 8; k++) r = (r & 1) ? (r >> 1) ^ 0xEDB88320u : r >> 1;
  }
  return r;
}

struct Crc32Fold {
  uint64_t k2048[2] = {0, 0};  // fold by 2048 bits: lo = x^(64+2048-1) mod P, hi = x^(2048-1) mod P
  uint64_t k512[2] = {0, 0};   // fold by 512 bits
  bool usable = false;
};

// x^n mod P (n = 7 mod 8) in the 64-bit reflected form PCLMULQDQ wants (<< 32): the CRC register
// of a message that is a single 1 bit followed by zeros, (n - 31) bits long.
inline uint64_t crc32_x_pow_mod(uint32_t n) {
  std::vector<uint8_t> msg((n - 31) / 8, 0);
  msg[0] = 1;
  return uint64_t(crc32_raw_bitwise(0, msg.data(), msg.size())) << 32;
}

#if defined(__x86_64__)
__attribute__((target("avx512f,vpclmulqdq"))) inline __m512i crc32_fold_step(__m512i z, __m512i k) {
  return _mm512_xor_si512(_mm512_clmulepi64_epi128(z, k, 0x00), _mm512_clmulepi64_epi128(z, k, 0x11));
}

// CRC-32 of n bytes (n a non-zero multiple of 256).
__attribute__((target("avx512f,vpclmulqdq"))) inline uint32_t crc32_clmul(const uint8_t *src, size_t n, const Crc32Fold &f) {
  const __m512i k2048 = _mm512_set_epi64(int64_t(f.k2048[1]), int64_t(f.k2048[0]), int64_t(f.k2048[1]), int64_t(f.k2048[0]),
                                         int64_t(f.k2048[1]), int64_t(f.k2048[0]), int64_t(f.k2048[1]), int64_t(f.k2048[0]));
  const __m512i k512 = _mm512_set_epi64(int64_t(f.k512[1]), int64_t(f.k512[0]), int64_t(f.k512[1]), int64_t(f.k512[0]),
                                        int64_t(f.k512[1]), int64_t(f.k512[0]), int64_t(f.k512[1]), int64_t(f.k512[0]));
  __m512i z0 = _mm512_loadu_si512(src), z1 = _mm512_loadu_si512(src + 64);
  __m512i z2 = _mm512_loadu_si512(src + 128), z3 = _mm512_loadu_si512(src + 192);
  z0 = _mm512_xor_si512(z0, _mm512_zextsi128_si512(_mm_cvtsi32_si128(-1)));  // the initial register ~0
  for (size_t off = 256; off < n; off += 256) {
    z0 = _mm512_xor_si512(crc32_fold_step(z0, k2048), _mm512_loadu_si512(src + off));
    z1 = _mm512_xor_si512(crc32_fold_step(z1, k2048), _mm512_loadu_si512(src + off + 64));
    z2 = _mm512_xor_si512(crc32_fold_step(z2, k2048), _mm512_loadu_si512(src + off + 128));
    z3 = _mm512_xor_si512(crc32_fold_step(z3, k2048), _mm512_loadu_si512(src + off + 192));
  }
  z1 = _mm512_xor_si512(crc32_fold_step(z0, k512), z1);
  z2 = _mm512_xor_si512(crc32_fold_step(z1, k512), z2);
  z3 = _mm512_xor_si512(crc32_fold_step(z2, k512), z3);
  alignas(64) uint8_t rest[64];
  _mm512_store_si512(reinterpret_cast<__m512i *>(rest), z3);
  // The 64 bytes left are congruent to the whole message: their raw CRC from register 0, then
  // the final inversion — which is zlib's crc32 with an initial value of ~0.
  return static_cast<uint32_t>(::crc32_z(0xFFFFFFFFul, rest, sizeof rest));
}
#endif

inline Crc32Fold make_crc32_fold() {
  Crc32Fold f;
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("vpclmulqdq")) return f;
  f.k2048[0] = crc32_x_pow_mod(64 + 2048 - 1);
  f.k2048[1] = crc32_x_pow_mod(2048 - 1);
  f.k512[0] = crc32_x_pow_mod(64 + 512 - 1);
  f.k512[1] = crc32_x_pow_mod(512 - 1);
  // Check against zlib on several lengths of a pseudo-random buffer before trusting it.
  std::vector<uint8_t> probe(16384);
  uint32_t x = 0x9e3779b9;
  for (auto &c : probe) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = uint8_t(x);
  }
  for (size_t n : {size_t(256), size_t(512), size_t(4096), size_t(16384)})
    if (crc32_clmul(probe.data(), n, f) != static_cast<uint32_t>(::crc32_z(0, probe.data(), n))) return f;
  f.usable = true;
#endif
  return f;
}

// Derived once per process, immutable afterwards.
inline const Crc32Fold &crc32_fold() {
  static const Crc32Fold fold = make_crc32_fold();
  return fold;
}

}  // namespace detail

inline uint32_t crc32(const void *data, size_t n) {
#if defined(__x86_64__)
  if (n >= 256 && n % 256 == 0) {
    const detail::Crc32Fold &f = detail::crc32_fold();
    if (f.usable) return detail::crc32_clmul(static_cast<const uint8_t *>(data), n, f);
  }
#endif
  return static_cast<uint32_t>(::crc32_z(0, static_cast<const Bytef *>(data), n));
}

// Which implementation tierstack::crc32 uses for whole pages: "vpclmulqdq" or "zlib".
inline const char *crc32_kind() { return detail::crc32_fold().usable ? "vpclmulqdq" : "zlib"; }

}  // namespace tierstack
