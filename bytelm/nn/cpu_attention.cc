// Fused attention for x86 CPUs, as XLA FFI custom calls: the forward pass in bf16 on AMX
// tiles and in fp32 on AVX-512, the backward pass on AVX-512 in both.
//
// Axis legend: B batch, H heads, T queries, S keys, K head dim (64).
//
// Forward: out = softmax(q k^T + pos_bias + key_bias) v, the same arithmetic as
// bytelm/nn/attention_kernel.py's `xla_forward`: fp32 scores (accumulated from bf16 products
// in bf16), fp32 softmax p = exp(s - m) / z, p rounded to q's dtype, p v accumulated in fp32
// and rounded to q's dtype. It also returns each query's score maximum m and exp-sum z.
// Backward: the cotangents of q, k, v and both biases by `xla_backward`'s formula, p
// recomputed from m and z.
//
// XLA computes these as separate passes over the B*H*T*S scores in main memory; here 16
// queries at a time go through every step while their scores stay in the core's cache.
//
// Built and loaded by bytelm/nn/cpu_attention.py (g++ on the user's machine); it only calls
// a dtype's kernel where the CPU has what it needs and the kernel passed its check there.

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kHeadDim = 64;  // in bf16, two 32-wide chunks: one AMX tile row each
constexpr int64_t kRows = 16;     // queries per block: the rows of an AMX tile

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile is 16 rows of 64 bytes: 16 x 16 fp32 accumulators, 16 x 32 bf16 operands, or
// 16 pair-rows x 16 columns of a B operand in AMX's pair-interleaved layout. A constant in
// memory: GCC's _tile_loadconfig tells the compiler it reads only the first 8 bytes, so the
// stores that fill a local configuration may be optimised away.
constexpr TileConfig kTiles = {
    1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

// The AMX code's instructions, enabled function by function: the file is built for AVX-512
// alone, so that the fp32 kernel also loads and runs on CPUs without AMX.
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512bf16")))

AMX_TARGET void ConfigureTiles() { _tile_loadconfig(&kTiles); }

// exp(x) for x <= 0 in fp32: 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, and 2^f by its
// degree-6 Taylor polynomial (relative error ~1e-7, below fp32's half ulp at 1).
inline __m512 Exp(__m512 x) {
  // exp(-inf) = 0, not nan; a nan stays nan (max returns its second operand where either is
  // nan), as in XLA, so that a nan score or bias is not silently a masked key.
  __m512 t = _mm512_max_ps(_mm512_set1_ps(-160.f),
                           _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)));
  __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.69314718055994531f));
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

struct Problem {
  int64_t batch, heads, queries, keys, keys_padded;
  const void* q;     // (B, H, T, K), bf16 bits or fp32
  const void* k;     // (B, H, S, K)
  const void* v;     // (B, H, S, K)
  const float* pos;  // (H, T, S) or (B, H, T, S) or null
  bool pos_batched;
  const float* key;  // (B, S) or null
  bool abstain;
  void* out;  // (B, H, T, K), q's dtype
  float* m;   // (B, H, T): out of the forward pass, into the backward pass
  float* z;   // (B, H, T)
  // The backward pass's own: what it reads (the forward's output and its cotangent, q's
  // dtype, (B, H, T, K)) and writes (q, k, v's cotangents; the biases' in fp32: pos's in pos's
  // shape, key's per head (B, H, S)); null in the forward pass.
  const void* o = nullptr;
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  float* dpos = nullptr;
  float* dkey = nullptr;
  bool dtype_is_bf16 = false;

  const float* PosRows(int64_t b, int64_t h) const {  // (T, S) of this head, or null
    if (pos == nullptr) return nullptr;
    return pos + ((pos_batched ? b * heads + h : h) * queries) * keys;
  }
};

// The first n lanes (none for n <= 0, all 16 for n >= 16).
inline __mmask16 Lanes(int64_t n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

// Scores x (keys j .. j + 15, lanes `in`) plus the biases of one query, x + (pos + key), in the
// order attention_kernel.scores adds them; pos and key may be null.
inline __m512 BiasedScores(__m512 x, const float* pos, const float* key, int64_t j,
                           __mmask16 in) {
  if (pos != nullptr && key != nullptr)
    return _mm512_add_ps(x, _mm512_add_ps(_mm512_maskz_loadu_ps(in, pos + j),
                                           _mm512_maskz_loadu_ps(in, key + j)));
  if (pos != nullptr || key != nullptr)
    return _mm512_add_ps(x, _mm512_maskz_loadu_ps(in, pos != nullptr ? pos + j : key + j));
  return x;
}

// exp(s - m) in place over one query's scores, m raised to 0 where the query may abstain.
// Returns the exp-sum z (with the abstaining query's implicit zero logit); m out.
float ExpRow(float* s, int64_t keys, float m, bool abstain, float* m_out) {
  if (abstain && m < 0.f) m = 0.f;
  const __m512 vm = _mm512_set1_ps(m);
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = 0; j < keys; j += 16) {
    const __mmask16 in = Lanes(keys - j);
    __m512 e = Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(in, s + j), vm));
    _mm512_mask_storeu_ps(s + j, in, e);
    vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(in, e));
  }
  float z = _mm512_reduce_add_ps(vsum);
  if (abstain) z += Exp(_mm512_set1_ps(-m))[0];  // the implicit zero logit
  *m_out = m;
  return z;
}

// One query's softmax numerator in place: s + biases, then exp(s - m). Returns the exp-sum
// z; m out. The caller divides by z.
float SoftmaxRow(float* s, const float* pos, const float* key, int64_t keys, bool abstain,
                 float* m_out) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < keys; j += 16) {
    const __mmask16 in = Lanes(keys - j);
    const __m512 x = BiasedScores(_mm512_maskz_loadu_ps(in, s + j), pos, key, j, in);
    _mm512_mask_storeu_ps(s + j, in, x);
    vmax = _mm512_mask_max_ps(vmax, in, vmax, x);
  }
  return ExpRow(s, keys, _mm512_reduce_max_ps(vmax), abstain, m_out);
}

// ---- bf16: both products on the AMX tiles --------------------------------------------------

// k (S, K) as the B operand of q k^T: for 16 keys n and 32 head dims c, 16 pair-rows r of 16
// keys, element (r, j) the bf16 pair k[16n + j][32c + 2r .. 2r + 1]. Keys past S are zero.
void PackK(const uint16_t* k_SK, int64_t keys, int64_t keys_padded, uint32_t* packed) {
  const uint32_t* pairs = reinterpret_cast<const uint32_t*>(k_SK);  // (S, K / 2)
  for (int64_t n = 0; n < keys_padded / 16; ++n)
    for (int64_t c = 0; c < 2; ++c) {
      uint32_t* tile = packed + (n * 2 + c) * 256;
      for (int64_t r = 0; r < 16; ++r)
        for (int64_t j = 0; j < 16; ++j) {
          int64_t s = n * 16 + j;
          tile[r * 16 + j] = s < keys ? pairs[s * 32 + c * 16 + r] : 0u;
        }
    }
}

// v (S, K) as the B operand of p v: for 32 keys c and 16 head dims n, 16 pair-rows r of 16
// dims, element (r, j) the pair (v[32c + 2r][16n + j], v[32c + 2r + 1][16n + j]).
void PackV(const uint16_t* v_SK, int64_t keys, int64_t keys_padded, uint32_t* packed) {
  for (int64_t c = 0; c < keys_padded / 32; ++c)
    for (int64_t n = 0; n < 4; ++n) {
      uint32_t* tile = packed + (c * 4 + n) * 256;
      for (int64_t r = 0; r < 16; ++r) {
        int64_t s0 = c * 32 + 2 * r, s1 = s0 + 1;
        for (int64_t j = 0; j < 16; ++j) {
          uint32_t lo = s0 < keys ? v_SK[s0 * kHeadDim + n * 16 + j] : 0u;
          uint32_t hi = s1 < keys ? v_SK[s1 * kHeadDim + n * 16 + j] : 0u;
          tile[r * 16 + j] = lo | (hi << 16);
        }
      }
    }
}

// p = e / z rounded to bf16 for one query, zero past the last key.
AMX_TARGET void RowToBf16(const float* e, float z, int64_t keys, int64_t keys_padded,
                          uint16_t* p) {
  const __m512 vz = _mm512_set1_ps(z);
  for (int64_t j = 0; j < keys_padded; j += 16) {
    __m256bh b = _mm512_cvtneps_pbh(_mm512_div_ps(_mm512_maskz_loadu_ps(Lanes(keys - j), e + j), vz));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), (__m256i)b);
  }
}

// One (b, h) pair: every block of 16 queries through scores, softmax and p v.
struct AmxHead {
  std::vector<uint32_t> k_packed, v_packed;  // B operands of q k^T and p v
  std::vector<float> scores;                 // kRows x keys_padded
  std::vector<uint16_t> p;                   // kRows x keys_padded, bf16
  alignas(64) uint16_t q_rows[kRows * kHeadDim];  // the last partial block, zero-padded
  alignas(64) float o[kRows * kHeadDim];

  explicit AmxHead(const Problem& pb)
      : k_packed(pb.keys_padded * kHeadDim / 2), v_packed(pb.keys_padded * kHeadDim / 2),
        scores(kRows * pb.keys_padded), p(kRows * pb.keys_padded) {
    ConfigureTiles();  // the tile configuration is the thread's
  }
  AMX_TARGET ~AmxHead() { _tile_release(); }

  void Task(const Problem& pb, int64_t i) { (*this)(pb, i / pb.heads, i % pb.heads); }
  AMX_TARGET void operator()(const Problem& pb, int64_t b, int64_t h);
};

AMX_TARGET void AmxHead::operator()(const Problem& pb, int64_t b, int64_t h) {
  const int64_t T = pb.queries, S = pb.keys, Sp = pb.keys_padded;
  const int64_t bh = b * pb.heads + h;
  PackK(static_cast<const uint16_t*>(pb.k) + bh * S * kHeadDim, S, Sp, k_packed.data());
  PackV(static_cast<const uint16_t*>(pb.v) + bh * S * kHeadDim, S, Sp, v_packed.data());
  const float* pos = pb.PosRows(b, h);
  const float* key = pb.key != nullptr ? pb.key + b * S : nullptr;
  for (int64_t t0 = 0; t0 < T; t0 += kRows) {
    const int64_t rows = T - t0 < kRows ? T - t0 : kRows;
    const uint16_t* q = static_cast<const uint16_t*>(pb.q) + (bh * T + t0) * kHeadDim;
    if (rows < kRows) {  // the last block: zero rows below the last query
      std::memset(q_rows, 0, sizeof(q_rows));
      std::memcpy(q_rows, q, rows * kHeadDim * 2);
      q = q_rows;
    }
    // scores: tiles 0, 1 = 16 queries x 32 keys; 2, 3 = q's two 32-wide chunks; 4-7 = k.
    _tile_loadd(2, q, kHeadDim * 2);
    _tile_loadd(3, q + 32, kHeadDim * 2);
    for (int64_t n = 0; n < Sp / 32; ++n) {
      const uint32_t* kp = k_packed.data() + n * 4 * 256;
      _tile_zero(0);
      _tile_zero(1);
      _tile_loadd(4, kp, 64);
      _tile_loadd(5, kp + 256, 64);
      _tile_loadd(6, kp + 512, 64);
      _tile_loadd(7, kp + 768, 64);
      _tile_dpbf16ps(0, 2, 4);
      _tile_dpbf16ps(0, 3, 5);
      _tile_dpbf16ps(1, 2, 6);
      _tile_dpbf16ps(1, 3, 7);
      _tile_stored(0, scores.data() + n * 32, Sp * 4);
      _tile_stored(1, scores.data() + n * 32 + 16, Sp * 4);
    }
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t t = bh * T + t0 + i;
      float* e = scores.data() + i * Sp;
      pb.z[t] = SoftmaxRow(e, pos != nullptr ? pos + (t0 + i) * S : nullptr, key, S, pb.abstain,
                           &pb.m[t]);
      RowToBf16(e, pb.z[t], S, Sp, p.data() + i * Sp);
    }
    for (int64_t i = rows; i < kRows; ++i) std::memset(p.data() + i * Sp, 0, Sp * 2);
    // p v: tiles 0-3 = 16 queries x 64 dims; 4 = 32 keys of p; 5-7 = v.
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t c = 0; c < Sp / 32; ++c) {
      const uint32_t* vp = v_packed.data() + c * 4 * 256;
      _tile_loadd(4, p.data() + c * 32, Sp * 2);
      _tile_loadd(5, vp, 64);
      _tile_loadd(6, vp + 256, 64);
      _tile_loadd(7, vp + 512, 64);
      _tile_dpbf16ps(0, 4, 5);
      _tile_dpbf16ps(1, 4, 6);
      _tile_dpbf16ps(2, 4, 7);
      _tile_loadd(5, vp + 768, 64);
      _tile_dpbf16ps(3, 4, 5);
    }
    _tile_stored(0, o, kHeadDim * 4);
    _tile_stored(1, o + 16, kHeadDim * 4);
    _tile_stored(2, o + 32, kHeadDim * 4);
    _tile_stored(3, o + 48, kHeadDim * 4);
    uint16_t* out = static_cast<uint16_t*>(pb.out) + (bh * T + t0) * kHeadDim;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t d = 0; d < kHeadDim; d += 16) {
        __m256bh b16 = _mm512_cvtneps_pbh(_mm512_loadu_ps(o + i * kHeadDim + d));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * kHeadDim + d), (__m256i)b16);
      }
  }
}

// ---- fp32: both products on AVX-512 FMA ----------------------------------------------------

// The three fp32 products of attention, on AVX-512 FMA register blocks of 16 accumulators.

// What the forward pass adds to q k^T while a block of scores is in registers: the biases of
// the first `rows` queries (pos rows of stride S, key; either may be null) as
// attention_kernel.scores adds them, -inf past the last key S, and each row's maximum.
struct ScoreBiases {
  const float* pos;
  const float* key;
  int64_t S, rows;
  float* rowmax;  // 16
};

// out (16 x Sp) = x16 (16 x K, row-major) times y (S x K) transposed, given as y_t (K x Sp,
// zero past the last key), plus `biases` where given: 8 rows x 32 keys at a time, over the 64
// head dims.
void RowsTimesTransposed(const float* x16, const float* y_t, int64_t Sp, float* out,
                         const ScoreBiases* biases = nullptr) {
  for (int64_t i0 = 0; i0 < kRows; i0 += 8) {
    __m512 vmax[8];
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) vmax[r] = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < Sp; j += 32) {
      __m512 acc[8][2];
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      for (int64_t d = 0; d < kHeadDim; ++d) {
        const __m512 y0 = _mm512_loadu_ps(y_t + d * Sp + j);
        const __m512 y1 = _mm512_loadu_ps(y_t + d * Sp + j + 16);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) {
          const __m512 x = _mm512_set1_ps(x16[(i0 + r) * kHeadDim + d]);
          acc[r][0] = _mm512_fmadd_ps(x, y0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(x, y1, acc[r][1]);
        }
      }
      if (biases != nullptr) {
        const int64_t S = biases->S;
        const __mmask16 in0 = Lanes(S - j), in1 = Lanes(S - j - 16);
        const __m512 masked = _mm512_set1_ps(-INFINITY);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) {
          if (i0 + r < biases->rows) {  // rows past the last query: no biases, scores unused
            const float* pos = biases->pos != nullptr ? biases->pos + (i0 + r) * S : nullptr;
            acc[r][0] = BiasedScores(acc[r][0], pos, biases->key, j, in0);
            acc[r][1] = BiasedScores(acc[r][1], pos, biases->key, j + 16, in1);
          }
          acc[r][0] = _mm512_mask_mov_ps(masked, in0, acc[r][0]);
          acc[r][1] = _mm512_mask_mov_ps(masked, in1, acc[r][1]);
          vmax[r] = _mm512_max_ps(_mm512_max_ps(vmax[r], acc[r][0]), acc[r][1]);
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) {
        _mm512_storeu_ps(out + (i0 + r) * Sp + j, acc[r][0]);
        _mm512_storeu_ps(out + (i0 + r) * Sp + j + 16, acc[r][1]);
      }
    }
    if (biases != nullptr)
      for (int r = 0; r < 8; ++r) biases->rowmax[i0 + r] = _mm512_reduce_max_ps(vmax[r]);
  }
}

// out rows (the first `rows` of 16, row stride K) = a (16 x Sp) times y (S x K, row-major),
// row r divided by z[r] where z is given: 4 rows x 64 dims at a time, over the S keys.
void RowsTimes(const float* a, int64_t Sp, int64_t S, const float* y, int64_t rows, float* out,
               const float* z = nullptr) {
  for (int64_t i0 = 0; i0 < rows; i0 += 4) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_ps();
    for (int64_t s = 0; s < S; ++s) {
      const float* ys = y + s * kHeadDim;
      const __m512 y0 = _mm512_loadu_ps(ys), y1 = _mm512_loadu_ps(ys + 16),
                   y2 = _mm512_loadu_ps(ys + 32), y3 = _mm512_loadu_ps(ys + 48);
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {  // rows past `rows` (in a of 16) are computed, not written
        const __m512 x = _mm512_set1_ps(a[(i0 + r) * Sp + s]);
        acc[r][0] = _mm512_fmadd_ps(x, y0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(x, y1, acc[r][1]);
        acc[r][2] = _mm512_fmadd_ps(x, y2, acc[r][2]);
        acc[r][3] = _mm512_fmadd_ps(x, y3, acc[r][3]);
      }
    }
    for (int r = 0; r < 4 && i0 + r < rows; ++r) {
      const __m512 vz = _mm512_set1_ps(z != nullptr ? z[i0 + r] : 1.f);
      for (int c = 0; c < 4; ++c)
        _mm512_storeu_ps(out + (i0 + r) * kHeadDim + c * 16,
                         z != nullptr ? _mm512_div_ps(acc[r][c], vz) : acc[r][c]);
    }
  }
}

// acc (S x K) += a (16 x Sp) transposed times x16 (16 x K): 4 keys x 64 dims at a time, over
// the 16 rows (rows of a past the last query must be zero).
void AccumulateTransposedTimes(const float* a, int64_t Sp, int64_t S, const float* x16,
                               float* acc) {
  for (int64_t s0 = 0; s0 < S; s0 += 4) {
    const int64_t n = S - s0 < 4 ? S - s0 : 4;
    __m512 c[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r)
      for (int d = 0; d < 4; ++d)
        c[r][d] = r < n ? _mm512_loadu_ps(acc + (s0 + r) * kHeadDim + d * 16) : _mm512_setzero_ps();
    for (int64_t i = 0; i < kRows; ++i) {
      const float* xi = x16 + i * kHeadDim;
      const __m512 x0 = _mm512_loadu_ps(xi), x1 = _mm512_loadu_ps(xi + 16),
                   x2 = _mm512_loadu_ps(xi + 32), x3 = _mm512_loadu_ps(xi + 48);
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {  // keys past S read a's zero padding
        const __m512 w = _mm512_set1_ps(a[i * Sp + s0 + r]);
        c[r][0] = _mm512_fmadd_ps(w, x0, c[r][0]);
        c[r][1] = _mm512_fmadd_ps(w, x1, c[r][1]);
        c[r][2] = _mm512_fmadd_ps(w, x2, c[r][2]);
        c[r][3] = _mm512_fmadd_ps(w, x3, c[r][3]);
      }
    }
    for (int r = 0; r < n; ++r)
      for (int d = 0; d < 4; ++d) _mm512_storeu_ps(acc + (s0 + r) * kHeadDim + d * 16, c[r][d]);
  }
}

// x (S x K) transposed into x_t (K x Sp), zero past the last key.
void Transpose(const float* x, int64_t S, int64_t Sp, float* x_t) {
  for (int64_t d = 0; d < kHeadDim; ++d) {
    float* row = x_t + d * Sp;
    for (int64_t s = 0; s < S; ++s) row[s] = x[s * kHeadDim + d];
    for (int64_t s = S; s < Sp; ++s) row[s] = 0.f;
  }
}

// 16 rows of x (K wide) from row t0 of T, zero past the last: x itself where all 16 exist.
const float* SixteenRows(const float* x, int64_t t0, int64_t T, float* pad) {
  const int64_t rows = T - t0 < kRows ? T - t0 : kRows;
  if (rows == kRows) return x + t0 * kHeadDim;
  std::memset(pad, 0, kRows * kHeadDim * 4);
  std::memcpy(pad, x + t0 * kHeadDim, rows * kHeadDim * 4);
  return pad;
}

// The forward pass of one (b, h) pair in fp32, 16 queries at a time.
struct F32Head {
  std::vector<float> k_t;     // K x keys_padded
  std::vector<float> scores;  // kRows x keys_padded; exp(s - m) in place
  alignas(64) float q_rows[kRows * kHeadDim];
  float rowmax[kRows];

  explicit F32Head(const Problem& pb)
      : k_t(kHeadDim * pb.keys_padded), scores(kRows * pb.keys_padded) {}

  void Task(const Problem& pb, int64_t i) {  // the (b, h) pair i
    const int64_t b = i / pb.heads, h = i % pb.heads;
    const int64_t T = pb.queries, S = pb.keys, Sp = pb.keys_padded;
    const int64_t bh = b * pb.heads + h;
    const float* q_TK = static_cast<const float*>(pb.q) + bh * T * kHeadDim;
    const float* v_SK = static_cast<const float*>(pb.v) + bh * S * kHeadDim;
    Transpose(static_cast<const float*>(pb.k) + bh * S * kHeadDim, S, Sp, k_t.data());
    const float* pos = pb.PosRows(b, h);
    const float* key = pb.key != nullptr ? pb.key + b * S : nullptr;
    for (int64_t t0 = 0; t0 < T; t0 += kRows) {
      const int64_t rows = T - t0 < kRows ? T - t0 : kRows;
      const ScoreBiases biases{pos != nullptr ? pos + t0 * S : nullptr, key, S, rows, rowmax};
      RowsTimesTransposed(SixteenRows(q_TK, t0, T, q_rows), k_t.data(), Sp, scores.data(),
                          &biases);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t t = bh * T + t0 + i;
        pb.z[t] = ExpRow(scores.data() + i * Sp, S, rowmax[i], pb.abstain, &pb.m[t]);
      }
      // p v / z: dividing the 64 outputs of a query rather than its S probabilities
      RowsTimes(scores.data(), Sp, S, v_SK, rows,
                static_cast<float*>(pb.out) + (bh * T + t0) * kHeadDim, pb.z + bh * T + t0);
    }
  }
};

// x rounded to the nearest bf16 (ties to even), kept in fp32: what XLA's bf16 backward
// rounds p and ds to before its products (AVX-512F integer ops; no bf16 instructions).
inline __m512 RoundToBf16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i up = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
  return _mm512_castsi512_ps(_mm512_and_si512(up, _mm512_set1_epi32(int(0xFFFF0000u))));
}

// One (b, h) pair's arrays for the backward pass, in fp32.
struct BackwardArrays {
  const float *q_TK, *k_SK, *v_SK, *o_TK, *do_TK;
  float *dq_TK, *dk_SK, *dv_SK;
};

// The backward pass of one head h, over every example b in turn (so that a position bias
// shared by the batch gets its cotangent summed here, with no other task writing it), 16
// queries at a time, by attention_kernel's formula:
//   p = exp(s - m) / z, dp = do v^T, ds = p * (dp - rowsum(do * o)),
//   dq = ds k, dk = ds^T q, dv = p^T do, dpos = ds (summed over the batch), dkey = rowsums.
// In fp32 on FMA register blocks. A bf16 problem is converted to fp32 a pair at a time, with
// p and ds rounded to bf16 before the products and the cotangents rounded after, as XLA's
// bf16 backward does (its products are exact in fp32; only the summation order differs).
struct BackwardHead {
  std::vector<float> k_t, v_t;  // K x keys_padded
  std::vector<float> p, ds;     // kRows x keys_padded
  std::vector<float> f32;       // a bf16 pair's q, k, v, o, do, dq, dk, dv in fp32
  alignas(64) float q_rows[kRows * kHeadDim];
  alignas(64) float do_rows[kRows * kHeadDim];
  bool bf16;

  explicit BackwardHead(const Problem& pb)
      : k_t(kHeadDim * pb.keys_padded), v_t(kHeadDim * pb.keys_padded),
        p(kRows * pb.keys_padded), ds(kRows * pb.keys_padded),
        bf16(pb.dtype_is_bf16) {
    if (bf16) f32.resize(4 * (pb.queries + pb.keys) * kHeadDim);
  }

  void Task(const Problem& pb, int64_t h) {
    for (int64_t b = 0; b < pb.batch; ++b) {
      const int64_t bh = b * pb.heads + h, T = pb.queries, S = pb.keys;
      const int64_t nq = T * kHeadDim, nk = S * kHeadDim;
      if (!bf16) {
        auto in = [&](const void* x, int64_t n) { return static_cast<const float*>(x) + bh * n; };
        auto out = [&](void* x, int64_t n) { return static_cast<float*>(x) + bh * n; };
        Example(pb, b, h, {in(pb.q, nq), in(pb.k, nk), in(pb.v, nk), in(pb.o, nq),
                           in(pb.dout, nq), out(pb.dq, nq), out(pb.dk, nk), out(pb.dv, nk)});
        continue;
      }
      float* x = f32.data();
      BackwardArrays a{x, x + nq, x + nq + nk, x + nq + 2 * nk, x + 2 * nq + 2 * nk,
                       x + 3 * nq + 2 * nk, x + 4 * nq + 2 * nk, x + 4 * nq + 3 * nk};
      auto widen = [&](const void* from, int64_t n, const float* to) {
        const uint16_t* src = static_cast<const uint16_t*>(from) + bh * n;
        uint32_t* dst = reinterpret_cast<uint32_t*>(const_cast<float*>(to));
        for (int64_t i = 0; i < n; ++i) dst[i] = uint32_t(src[i]) << 16;
      };
      widen(pb.q, nq, a.q_TK);
      widen(pb.k, nk, a.k_SK);
      widen(pb.v, nk, a.v_SK);
      widen(pb.o, nq, a.o_TK);
      widen(pb.dout, nq, a.do_TK);
      Example(pb, b, h, a);
      auto narrow = [&](const float* from, int64_t n, void* to) {
        uint16_t* dst = static_cast<uint16_t*>(to) + bh * n;
        for (int64_t i = 0; i < n; i += 16) {
          const __mmask16 in = Lanes(n - i);
          const __m512i bits = _mm512_castps_si512(RoundToBf16(_mm512_maskz_loadu_ps(in, from + i)));
          _mm256_mask_storeu_epi16(dst + i, in, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
        }
      };
      narrow(a.dq_TK, nq, pb.dq);
      narrow(a.dk_SK, nk, pb.dk);
      narrow(a.dv_SK, nk, pb.dv);
    }
  }

  void Example(const Problem& pb, int64_t b, int64_t h, const BackwardArrays& a) {
    const int64_t T = pb.queries, S = pb.keys, Sp = pb.keys_padded;
    const int64_t bh = b * pb.heads + h;
    Transpose(a.k_SK, S, Sp, k_t.data());
    Transpose(a.v_SK, S, Sp, v_t.data());
    std::memset(a.dk_SK, 0, S * kHeadDim * 4);
    std::memset(a.dv_SK, 0, S * kHeadDim * 4);
    const float* pos = pb.PosRows(b, h);
    float* dpos = nullptr;
    if (pb.dpos != nullptr) {
      dpos = pb.dpos + (pos - pb.pos);  // the same rows of pos's cotangent
      if (pb.pos_batched || b == 0) std::memset(dpos, 0, T * S * 4);
    }
    const float* key = pb.key != nullptr ? pb.key + b * S : nullptr;
    float* dkey = pb.dkey != nullptr ? pb.dkey + bh * S : nullptr;
    if (dkey != nullptr) std::memset(dkey, 0, S * 4);
    for (int64_t t0 = 0; t0 < T; t0 += kRows) {
      const int64_t rows = T - t0 < kRows ? T - t0 : kRows;
      const float* q16 = SixteenRows(a.q_TK, t0, T, q_rows);
      const float* do16 = SixteenRows(a.do_TK, t0, T, do_rows);
      RowsTimesTransposed(q16, k_t.data(), Sp, p.data());    // scores
      RowsTimesTransposed(do16, v_t.data(), Sp, ds.data());  // dp
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t t = bh * T + t0 + i;
        const float* o_K = a.o_TK + (t0 + i) * kHeadDim;
        const float* do_K = do16 + i * kHeadDim;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < kHeadDim; d += 16)
          acc = _mm512_fmadd_ps(_mm512_loadu_ps(do_K + d), _mm512_loadu_ps(o_K + d), acc);
        const __m512 delta = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
        const __m512 m = _mm512_set1_ps(pb.m[t]), z = _mm512_set1_ps(pb.z[t]);
        const float* pos_row = pos != nullptr ? pos + (t0 + i) * S : nullptr;
        float* dpos_row = dpos != nullptr ? dpos + (t0 + i) * S : nullptr;
        float* p_row = p.data() + i * Sp;
        float* ds_row = ds.data() + i * Sp;
        for (int64_t j = 0; j < Sp; j += 16) {
          const __mmask16 in = Lanes(S - j);
          const __m512 x = BiasedScores(_mm512_maskz_loadu_ps(in, p_row + j), pos_row, key, j, in);
          const __m512 pj = _mm512_maskz_div_ps(in, Exp(_mm512_sub_ps(x, m)), z);
          const __m512 dsj = _mm512_maskz_mul_ps(
              in, pj, _mm512_sub_ps(_mm512_loadu_ps(ds_row + j), delta));
          // zero past the last key
          _mm512_storeu_ps(p_row + j, bf16 ? RoundToBf16(pj) : pj);
          _mm512_storeu_ps(ds_row + j, bf16 ? RoundToBf16(dsj) : dsj);
          if (dpos_row != nullptr)
            _mm512_mask_storeu_ps(dpos_row + j, in, _mm512_add_ps(_mm512_maskz_loadu_ps(in, dpos_row + j), dsj));
          if (dkey != nullptr)
            _mm512_mask_storeu_ps(dkey + j, in, _mm512_add_ps(_mm512_maskz_loadu_ps(in, dkey + j), dsj));
        }
      }
      for (int64_t i = rows; i < kRows; ++i) {  // rows past the last query add nothing
        std::memset(p.data() + i * Sp, 0, Sp * 4);
        std::memset(ds.data() + i * Sp, 0, Sp * 4);
      }
      RowsTimes(ds.data(), Sp, S, a.k_SK, rows, a.dq_TK + t0 * kHeadDim);
      AccumulateTransposedTimes(ds.data(), Sp, S, q16, a.dk_SK);
      AccumulateTransposedTimes(p.data(), Sp, S, do16, a.dv_SK);
    }
  }
};

// ---- the call --------------------------------------------------------------------------------

// Workers take tasks 0 .. total - 1 from a shared counter until none is left; Head is the
// per-thread scratch and the computation of one task.
template <typename Head>
struct Work {
  Problem problem;
  std::atomic<int64_t> next{0}, done{0};
  int64_t total = 0;

  void Run() {
    int64_t i = next.fetch_add(1);
    if (i >= total) return;
    Head head(problem);
    for (; i < total; i = next.fetch_add(1)) {
      head.Task(problem, i);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

template <typename Head>
void RunOnPool(ffi::ThreadPool& pool, const Problem& pb, int64_t tasks) {
  auto work = std::make_shared<Work<Head>>();
  work->problem = pb;
  work->total = tasks;
  // The calling thread works too, so the call finishes even where the pool is busy; helpers
  // that start late find nothing left and return (they hold `work` alive till then).
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), tasks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work->Run(); });
  work->Run();
  while (work->done.load(std::memory_order_acquire) < tasks) _mm_pause();
}

bool AmxPermitted() {
  // Linux hands out AMX's tile state only to a process that asks (ARCH_REQ_XCOMP_PERM for
  // XFEATURE_XTILEDATA); asking again is harmless.
  static const bool permitted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return permitted;
}

// What both passes read of q, k, v and the biases, checked: q, k, v of one dtype (bf16 or
// f32), (B, H, T|S, 64).
ffi::Error ReadInputs(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                      ffi::Buffer<ffi::F32> pos, ffi::Buffer<ffi::F32> key, int64_t has_pos,
                      int64_t has_key, Problem& pb) {
  const ffi::DataType dtype = q.element_type();
  if (dtype != ffi::DataType::BF16 && dtype != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("q, k, v must be bf16 or f32");
  if (k.element_type() != dtype || v.element_type() != dtype)
    return ffi::Error::InvalidArgument("q, k, v must share one dtype");
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || qd[3] != kHeadDim ||
      kd[0] != qd[0] || kd[1] != qd[1] || kd[3] != kHeadDim || vd[0] != kd[0] ||
      vd[1] != kd[1] || vd[2] != kd[2] || vd[3] != kd[3])
    return ffi::Error::InvalidArgument("q must be (B, H, T, 64), k and v (B, H, S, 64)");
  pb.batch = qd[0];
  pb.heads = qd[1];
  pb.queries = qd[2];
  pb.keys = kd[2];
  pb.keys_padded = (pb.keys + 31) / 32 * 32;
  pb.q = q.untyped_data();
  pb.k = k.untyped_data();
  pb.v = v.untyped_data();
  pb.pos = has_pos ? pos.typed_data() : nullptr;
  pb.pos_batched = has_pos && pos.dimensions().size() == 4;
  pb.key = has_key ? key.typed_data() : nullptr;
  pb.dtype_is_bf16 = dtype == ffi::DataType::BF16;
  const int64_t B = pb.batch, H = pb.heads, T = pb.queries, S = pb.keys;
  if (has_pos && pos.element_count() != size_t((pb.pos_batched ? B : 1) * H * T * S))
    return ffi::Error::InvalidArgument("pos_bias must be (H, T, S) or (B, H, T, S)");
  if (has_key && key.element_count() != size_t(B * S))
    return ffi::Error::InvalidArgument("key_bias must be (B, S)");
  return ffi::Error::Success();
}

ffi::Error Attention(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                     ffi::Buffer<ffi::F32> pos, ffi::Buffer<ffi::F32> key,
                     ffi::Result<ffi::AnyBuffer> out, ffi::ResultBuffer<ffi::F32> m,
                     ffi::ResultBuffer<ffi::F32> z, int64_t abstain, int64_t has_pos,
                     int64_t has_key) {
  Problem pb;
  if (ffi::Error e = ReadInputs(q, k, v, pos, key, has_pos, has_key, pb); e.failure()) return e;
  if (out->element_type() != q.element_type())
    return ffi::Error::InvalidArgument("the output must be q's dtype");
  pb.abstain = abstain != 0;
  pb.out = out->untyped_data();
  pb.m = m->typed_data();
  pb.z = z->typed_data();
  if (!pb.dtype_is_bf16) {
    RunOnPool<F32Head>(pool, pb, pb.batch * pb.heads);
  } else {
    if (!AmxPermitted())
      return ffi::Error::Internal("the kernel refused AMX tile state (arch_prctl)");
    RunOnPool<AmxHead>(pool, pb, pb.batch * pb.heads);
  }
  return ffi::Error::Success();
}

ffi::Error AttentionBackward(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k,
                             ffi::AnyBuffer v, ffi::AnyBuffer o, ffi::AnyBuffer dout,
                             ffi::Buffer<ffi::F32> m, ffi::Buffer<ffi::F32> z,
                             ffi::Buffer<ffi::F32> pos, ffi::Buffer<ffi::F32> key,
                             ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                             ffi::Result<ffi::AnyBuffer> dv, ffi::ResultBuffer<ffi::F32> dpos,
                             ffi::ResultBuffer<ffi::F32> dkey, int64_t has_pos, int64_t has_key) {
  Problem pb;
  if (ffi::Error e = ReadInputs(q, k, v, pos, key, has_pos, has_key, pb); e.failure()) return e;
  for (ffi::DataType t : {o.element_type(), dout.element_type(), dq->element_type(),
                          dk->element_type(), dv->element_type()})
    if (t != q.element_type()) return ffi::Error::InvalidArgument("every array must be q's dtype");
  const size_t queries = pb.batch * pb.heads * pb.queries;
  if (o.element_count() != queries * kHeadDim || dout.element_count() != queries * kHeadDim ||
      m.element_count() != queries || z.element_count() != queries)
    return ffi::Error::InvalidArgument("out and its cotangent must be q's shape, m and z (B, H, T)");
  pb.abstain = false;  // m and z hold it: the gradient's formula is the same
  pb.m = m.typed_data();
  pb.z = z.typed_data();
  pb.o = o.untyped_data();
  pb.dout = dout.untyped_data();
  pb.dq = dq->untyped_data();
  pb.dk = dk->untyped_data();
  pb.dv = dv->untyped_data();
  pb.dpos = has_pos ? dpos->typed_data() : nullptr;
  pb.dkey = has_key ? dkey->typed_data() : nullptr;
  RunOnPool<BackwardHead>(pool, pb, pb.heads);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BytelmAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()          // q
                                  .Arg<ffi::AnyBuffer>()          // k
                                  .Arg<ffi::AnyBuffer>()          // v
                                  .Arg<ffi::Buffer<ffi::F32>>()   // pos_bias
                                  .Arg<ffi::Buffer<ffi::F32>>()   // key_bias
                                  .Ret<ffi::AnyBuffer>()          // out
                                  .Ret<ffi::Buffer<ffi::F32>>()   // m
                                  .Ret<ffi::Buffer<ffi::F32>>()   // z
                                  .Attr<int64_t>("abstain")
                                  .Attr<int64_t>("has_pos")
                                  .Attr<int64_t>("has_key"));

// For the loader's check, before a bf16 call, that Linux grants this process the AMX tiles.
extern "C" int bytelm_attention_amx_ready() { return AmxPermitted() ? 1 : 0; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(BytelmAttentionBackward, AttentionBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()         // q
                                  .Arg<ffi::AnyBuffer>()         // k
                                  .Arg<ffi::AnyBuffer>()         // v
                                  .Arg<ffi::AnyBuffer>()         // out
                                  .Arg<ffi::AnyBuffer>()         // its cotangent
                                  .Arg<ffi::Buffer<ffi::F32>>()  // m
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z
                                  .Arg<ffi::Buffer<ffi::F32>>()  // pos_bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // key_bias
                                  .Ret<ffi::AnyBuffer>()         // dq
                                  .Ret<ffi::AnyBuffer>()         // dk
                                  .Ret<ffi::AnyBuffer>()         // dv
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dpos
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dkey (B, H, S)
                                  .Attr<int64_t>("has_pos")
                                  .Attr<int64_t>("has_key"));
