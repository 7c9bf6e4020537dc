// CRC-32C of one page, computed in three interleaved lanes. The crc32 instruction has a latency
// of 3 cycles but a throughput of 1 per cycle, so one dependent chain over 4 KiB is
// latency-bound (~1500 cycles, as long as copying the page from memory). Three independent
// chains over thirds of the page are combined with a "shift by lane length" table (the CRC
// register is linear over GF(2), so appending L zero bytes is a fixed 32x32 bit-matrix,
// applied bytewise through four 256-entry tables). The result equals tierstack::crc32c(); the
// constructor checks that and falls back to the plain version if it ever did not.
#pragma once

#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <tierstack/page_store.hpp>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tscxl {

class PageCrc {
 public:
  explicit PageCrc(uint32_t page_size) : n_(page_size) {
#if defined(__x86_64__)
    hw_ = __builtin_cpu_supports("sse4.2");
#endif
    lane_ = hw_ ? (page_size / 192) * 64 : 0;  // a multiple of 64 bytes (the fused copy's block)
    if (lane_ == 0) return;
    std::vector<uint8_t> zeros(lane_, 0);
    uint32_t basis[32];
    for (int i = 0; i < 32; i++) basis[i] = tierstack::detail::crc32c_soft(1u << i, zeros.data(), lane_);
    for (int k = 0; k < 4; k++)
      for (int b = 0; b < 256; b++) {
        uint32_t v = 0;
        for (int i = 0; i < 8; i++)
          if (b & (1 << i)) v ^= basis[8 * k + i];
        shift_[k][b] = v;
      }
    // Self-check against the reference on a few patterns.
    std::vector<uint8_t> probe(page_size);
    uint32_t x = 0x9e3779b9;
    for (auto &c : probe) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      c = uint8_t(x);
    }
    std::vector<uint8_t> copied(page_size);
    const uint32_t want = tierstack::crc32c(probe.data(), page_size);
    if ((*this)(probe.data()) != want || copy(copied.data(), probe.data()) != want || copied != probe) lane_ = 0;
#if defined(__x86_64__)
    // Carry-less multiplication folding (AVX-512 VPCLMULQDQ), when the CPU has it.
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("vpclmulqdq") && page_size % 256 == 0) {
      fold_constants(2048, k2048_);
      fold_constants(512, k512_);
      clmul_ = true;
      std::fill(copied.begin(), copied.end(), 0);
      if ((*this)(probe.data()) != want || copy(copied.data(), probe.data()) != want || copied != probe) clmul_ = false;
      auto *aligned = static_cast<uint8_t *>(std::aligned_alloc(64, page_size));
      if (!aligned || copy_to_region(aligned, probe.data()) != want || std::memcmp(aligned, probe.data(), page_size) != 0) clmul_ = false;
      std::free(aligned);
    }
#endif
  }

  // Which implementation runs: "vpclmulqdq", "crc32x3" or "crc32".
  const char *kind() const { return clmul_ ? "vpclmulqdq" : lane_ ? "crc32x3" : "crc32"; }

  // Copies a page and returns the CRC-32C of the bytes copied, in one pass: the crc work runs
  // while the copy waits on memory, instead of after it.
  uint32_t copy(void *dst, const void *src) const {
#if defined(__x86_64__)
    if (clmul_) return clmul<false>(static_cast<uint8_t *>(dst), static_cast<const uint8_t *>(src));
    if (lane_ && lane_ % 64 == 0) return copy_lanes(static_cast<uint8_t *>(dst), static_cast<const uint8_t *>(src));
#endif
    std::memcpy(dst, src, n_);
    return (*this)(src);
  }

  // Like copy(), into memory that this thread will not read soon (a slot of the region): with
  // non-temporal stores where the CPU allows, so the copy neither reads the destination's lines
  // first nor evicts the caller's working set. Ends with a store fence: the bytes are globally
  // visible before anything the caller stores next (the seq that publishes them).
  uint32_t copy_to_region(void *dst, const void *src) const {
#if defined(__x86_64__)
    if (clmul_ && (reinterpret_cast<uintptr_t>(dst) & 63) == 0) {
      uint32_t crc = clmul<true>(static_cast<uint8_t *>(dst), static_cast<const uint8_t *>(src));
      _mm_sfence();
      return crc;
    }
#endif
    return copy(dst, src);
  }

  uint32_t operator()(const void *data) const {
#if defined(__x86_64__)
    if (clmul_) return clmul<false>(nullptr, static_cast<const uint8_t *>(data));
    if (lane_) return lanes(static_cast<const uint8_t *>(data));
#endif
    return tierstack::crc32c(data, n_);
  }

 private:
  uint32_t shift(uint32_t r) const {
    return shift_[0][r & 0xff] ^ shift_[1][(r >> 8) & 0xff] ^ shift_[2][(r >> 16) & 0xff] ^ shift_[3][r >> 24];
  }

#if defined(__x86_64__)
  __attribute__((target("sse4.2"))) uint32_t lanes(const uint8_t *p) const {
    uint64_t a = 0xffffffffu, b = 0, c = 0;
    const uint8_t *pa = p, *pb = p + lane_, *pc = p + 2 * uint64_t(lane_);
    for (uint32_t i = 0; i < lane_; i += 8) {
      uint64_t va, vb, vc;
      std::memcpy(&va, pa + i, 8);
      std::memcpy(&vb, pb + i, 8);
      std::memcpy(&vc, pc + i, 8);
      a = __builtin_ia32_crc32di(a, va);
      b = __builtin_ia32_crc32di(b, vb);
      c = __builtin_ia32_crc32di(c, vc);
    }
    return finish(a, b, c, p + 3 * uint64_t(lane_));
  }

  __attribute__((target("sse4.2"))) uint32_t copy_lanes(uint8_t *dst, const uint8_t *src) const {
    uint64_t a = 0xffffffffu, b = 0, c = 0;
    const uint64_t L = lane_;
    for (uint64_t i = 0; i < L; i += 64) {
      std::memcpy(dst + i, src + i, 64);
      std::memcpy(dst + L + i, src + L + i, 64);
      std::memcpy(dst + 2 * L + i, src + 2 * L + i, 64);
      for (uint64_t k = 0; k < 64; k += 8) {
        uint64_t va, vb, vc;
        std::memcpy(&va, src + i + k, 8);
        std::memcpy(&vb, src + L + i + k, 8);
        std::memcpy(&vc, src + 2 * L + i + k, 8);
        a = __builtin_ia32_crc32di(a, va);
        b = __builtin_ia32_crc32di(b, vb);
        c = __builtin_ia32_crc32di(c, vc);
      }
    }
    std::memcpy(dst + 3 * L, src + 3 * L, n_ - 3 * L);
    return finish(a, b, c, src + 3 * L);
  }

  __attribute__((target("sse4.2"))) uint32_t finish(uint64_t a, uint64_t b, uint64_t c, const uint8_t *t) const {
    uint64_t r = shift(uint32_t(a)) ^ uint32_t(b);
    r = shift(uint32_t(r)) ^ uint32_t(c);
    size_t rest = n_ - 3 * uint64_t(lane_);
    while (rest >= 8) {
      uint64_t v;
      std::memcpy(&v, t, 8);
      r = __builtin_ia32_crc32di(r, v);
      t += 8;
      rest -= 8;
    }
    uint32_t r32 = uint32_t(r);
    while (rest--) r32 = __builtin_ia32_crc32qi(r32, *t++);
    return ~r32;
  }
#endif

  // x^n mod P (n = 7 mod 8) as the CRC register of a message that is a single 1 bit followed by
  // zeros, (n - 31) bits long; returned in the 64-bit reflected form PCLMULQDQ wants (<< 32).
  static uint64_t x_pow_mod(uint32_t n) {
    std::vector<uint8_t> msg((n - 31) / 8, 0);
    msg[0] = 1;
    return uint64_t(tierstack::detail::crc32c_soft(0, msg.data(), msg.size())) << 32;
  }
  // Folding a 128-bit chunk (H = its first 8 bytes, L = the next 8) forward by `bits`:
  // H * x^(64+bits) + L * x^bits (mod P); one less power because a reflected carry-less product
  // comes out multiplied by x.
  static void fold_constants(uint32_t bits, uint64_t out[2]) {
    out[0] = x_pow_mod(64 + bits - 1);
    out[1] = x_pow_mod(bits - 1);
  }

#if defined(__x86_64__)
  __attribute__((target("avx512f,vpclmulqdq,sse4.2"))) static __m512i fold(__m512i z, __m512i k) {
    return _mm512_xor_si512(_mm512_clmulepi64_epi128(z, k, 0x00), _mm512_clmulepi64_epi128(z, k, 0x11));
  }

  // CRC-32C by folding 256 bytes per step in four 512-bit accumulators; copies to `dst` when given.
  template <bool kStream>
  __attribute__((target("avx512f,vpclmulqdq,sse4.2"))) static void store64(uint8_t *dst, __m512i v) {
    if (kStream)
      _mm512_stream_si512(reinterpret_cast<__m512i *>(dst), v);
    else
      _mm512_storeu_si512(dst, v);
  }

  template <bool kStream>
  __attribute__((target("avx512f,vpclmulqdq,sse4.2"))) uint32_t clmul(uint8_t *dst, const uint8_t *src) const {
    const int64_t a0 = int64_t(k2048_[0]), a1 = int64_t(k2048_[1]), b0 = int64_t(k512_[0]), b1 = int64_t(k512_[1]);
    const __m512i k2048 = _mm512_set_epi64(a1, a0, a1, a0, a1, a0, a1, a0);  // per 128-bit lane: lo = K(H), hi = K(L)
    const __m512i k512 = _mm512_set_epi64(b1, b0, b1, b0, b1, b0, b1, b0);
    __m512i z0 = _mm512_loadu_si512(src), z1 = _mm512_loadu_si512(src + 64);
    __m512i z2 = _mm512_loadu_si512(src + 128), z3 = _mm512_loadu_si512(src + 192);
    if (dst) {
      store64<kStream>(dst, z0);
      store64<kStream>(dst + 64, z1);
      store64<kStream>(dst + 128, z2);
      store64<kStream>(dst + 192, z3);
    }
    z0 = _mm512_xor_si512(z0, _mm512_zextsi128_si512(_mm_cvtsi32_si128(-1)));  // the initial register ~0
    for (uint32_t off = 256; off < n_; off += 256) {
      __m512i d0 = _mm512_loadu_si512(src + off), d1 = _mm512_loadu_si512(src + off + 64);
      __m512i d2 = _mm512_loadu_si512(src + off + 128), d3 = _mm512_loadu_si512(src + off + 192);
      if (dst) {
        store64<kStream>(dst + off, d0);
        store64<kStream>(dst + off + 64, d1);
        store64<kStream>(dst + off + 128, d2);
        store64<kStream>(dst + off + 192, d3);
      }
      z0 = _mm512_xor_si512(fold(z0, k2048), d0);
      z1 = _mm512_xor_si512(fold(z1, k2048), d1);
      z2 = _mm512_xor_si512(fold(z2, k2048), d2);
      z3 = _mm512_xor_si512(fold(z3, k2048), d3);
    }
    z1 = _mm512_xor_si512(fold(z0, k512), z1);
    z2 = _mm512_xor_si512(fold(z1, k512), z2);
    z3 = _mm512_xor_si512(fold(z2, k512), z3);
    alignas(64) uint64_t rest[8];
    _mm512_store_si512(rest, z3);
    uint64_t crc = 0;  // the 64 bytes left are congruent to the whole page: plain CRC from 0
    for (int i = 0; i < 8; i++) crc = _mm_crc32_u64(crc, rest[i]);
    return ~uint32_t(crc);
  }
#endif

  uint32_t n_;
  bool clmul_ = false;
  uint64_t k2048_[2] = {0, 0};
  uint64_t k512_[2] = {0, 0};
  uint32_t lane_ = 0;
  bool hw_ = false;
  uint32_t shift_[4][256];
};

}  // namespace tscxl
