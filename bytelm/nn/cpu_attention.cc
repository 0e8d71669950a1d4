// Fused bf16 attention for x86 CPUs with AMX tiles, as an XLA FFI custom call.
//
// Axis legend: B batch, H heads, T queries, S keys, K head dim (64).
//
// out = softmax(q k^T + pos_bias + key_bias) v for bf16 q, k, v, the same arithmetic as
// bytelm/nn/attention_kernel.py's `_forward`: fp32 scores accumulated from bf16 products,
// fp32 softmax p = exp(s - m) / z, p rounded to bf16, p v accumulated in fp32 and rounded to
// bf16. XLA computes the same thing as separate passes over the B*H*T*S scores in main memory;
// here 16 queries at a time go through scores, softmax and p v while their scores stay in the
// core's cache, and both products run on the AMX tiles. It also returns each query's score
// maximum m and exp-sum z, which the backward pass of attention_kernel.py recomputes p from.
//
// Built and loaded by bytelm/nn/cpu_attention.py (g++ on the user's machine); only called
// where the CPU has AMX and the loader's self-test passed.

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

constexpr int64_t kHeadDim = 64;  // two 32-wide bf16 chunks: one AMX tile row each
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

void ConfigureTiles() { _tile_loadconfig(&kTiles); }

// exp(x) for x <= 0 in fp32: 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, and 2^f by its
// degree-6 Taylor polynomial (relative error ~1e-7, below fp32's half ulp at 1).
inline __m512 Exp(__m512 x) {
  __m512 t = _mm512_max_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                           _mm512_set1_ps(-160.f));  // exp(-inf) = 0, not nan
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
  const uint16_t* q;  // bf16 bits, (B, H, T, K)
  const uint16_t* k;  // (B, H, S, K)
  const uint16_t* v;  // (B, H, S, K)
  const float* pos;   // (H, T, S) or (B, H, T, S) or null
  bool pos_batched;
  const float* key;  // (B, S) or null
  bool abstain;
  uint16_t* out;  // (B, H, T, K)
  float* m;       // (B, H, T)
  float* z;       // (B, H, T)
};

// Scratch of one worker, reused across the (b, h) pairs it takes.
struct Scratch {
  std::vector<uint32_t> k_packed, v_packed;  // B operands of q k^T and p v
  std::vector<float> scores;                 // kRows x keys_padded
  std::vector<uint16_t> p;                   // kRows x keys_padded, bf16
  std::vector<uint16_t> q_rows;              // kRows x K, for the last partial block
  alignas(64) float o[kRows * kHeadDim];
};

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

// softmax over one query's scores (in place: exp(s - m)), p rounded to bf16; m and z out.
void Softmax(float* s, const float* pos, const float* key, const Problem& pb, uint16_t* p,
             float* m_out, float* z_out) {
  const int64_t keys = pb.keys;
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j < keys; j += 16) {
    __mmask16 in = keys - j >= 16 ? 0xFFFF : (__mmask16)((1u << (keys - j)) - 1);
    __m512 x = _mm512_maskz_loadu_ps(in, s + j);
    if (pos != nullptr || key != nullptr) {  // s + (pos + key), as attention_kernel.scores
      __m512 bias;
      if (pos != nullptr && key != nullptr)
        bias = _mm512_add_ps(_mm512_maskz_loadu_ps(in, pos + j), _mm512_maskz_loadu_ps(in, key + j));
      else
        bias = _mm512_maskz_loadu_ps(in, pos != nullptr ? pos + j : key + j);
      x = _mm512_add_ps(x, bias);
    }
    _mm512_mask_storeu_ps(s + j, in, x);
    vmax = _mm512_mask_max_ps(vmax, in, vmax, x);
  }
  float m = _mm512_reduce_max_ps(vmax);
  if (pb.abstain && m < 0.f) m = 0.f;
  const __m512 vm = _mm512_set1_ps(m);
  __m512 vsum = _mm512_setzero_ps();
  for (j = 0; j < keys; j += 16) {
    __mmask16 in = keys - j >= 16 ? 0xFFFF : (__mmask16)((1u << (keys - j)) - 1);
    __m512 e = Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(in, s + j), vm));
    _mm512_mask_storeu_ps(s + j, in, e);
    vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(in, e));
  }
  float z = _mm512_reduce_add_ps(vsum);
  if (pb.abstain) z += Exp(_mm512_set1_ps(-m))[0];  // the implicit zero logit
  const __m512 vz = _mm512_set1_ps(z);
  for (j = 0; j < pb.keys_padded; j += 16) {
    __mmask16 in = keys - j >= 16 ? 0xFFFF : keys > j ? (__mmask16)((1u << (keys - j)) - 1) : 0;
    __m512 e = _mm512_maskz_loadu_ps(in, s + j);  // zero past the last key
    __m256bh b = _mm512_cvtneps_pbh(_mm512_div_ps(e, vz));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), (__m256i)b);
  }
  *m_out = m;
  *z_out = z;
}

// One (b, h) pair: every block of 16 queries through scores, softmax and p v.
void AttendHead(const Problem& pb, int64_t b, int64_t h, Scratch& w) {
  const int64_t T = pb.queries, S = pb.keys, Sp = pb.keys_padded;
  const int64_t bh = b * pb.heads + h;
  PackK(pb.k + bh * S * kHeadDim, S, Sp, w.k_packed.data());
  PackV(pb.v + bh * S * kHeadDim, S, Sp, w.v_packed.data());
  const float* pos = nullptr;
  if (pb.pos != nullptr)
    pos = pb.pos + ((pb.pos_batched ? bh : h) * T) * S;
  const float* key = pb.key != nullptr ? pb.key + b * S : nullptr;
  for (int64_t t0 = 0; t0 < T; t0 += kRows) {
    const int64_t rows = T - t0 < kRows ? T - t0 : kRows;
    const uint16_t* q = pb.q + (bh * T + t0) * kHeadDim;
    if (rows < kRows) {  // the last block: zero rows below the last query
      std::memset(w.q_rows.data(), 0, kRows * kHeadDim * 2);
      std::memcpy(w.q_rows.data(), q, rows * kHeadDim * 2);
      q = w.q_rows.data();
    }
    // scores: tiles 0, 1 = 16 queries x 32 keys; 2, 3 = q's two 32-wide chunks; 4-7 = k.
    _tile_loadd(2, q, kHeadDim * 2);
    _tile_loadd(3, q + 32, kHeadDim * 2);
    for (int64_t n = 0; n < Sp / 32; ++n) {
      const uint32_t* kp = w.k_packed.data() + n * 4 * 256;
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
      _tile_stored(0, w.scores.data() + n * 32, Sp * 4);
      _tile_stored(1, w.scores.data() + n * 32 + 16, Sp * 4);
    }
    for (int64_t i = 0; i < rows; ++i)
      Softmax(w.scores.data() + i * Sp, pos != nullptr ? pos + (t0 + i) * S : nullptr, key, pb,
              w.p.data() + i * Sp, pb.m + bh * T + t0 + i, pb.z + bh * T + t0 + i);
    for (int64_t i = rows; i < kRows; ++i) std::memset(w.p.data() + i * Sp, 0, Sp * 2);
    // p v: tiles 0-3 = 16 queries x 64 dims; 4 = 32 keys of p; 5-7 = v.
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t c = 0; c < Sp / 32; ++c) {
      const uint32_t* vp = w.v_packed.data() + c * 4 * 256;
      _tile_loadd(4, w.p.data() + c * 32, Sp * 2);
      _tile_loadd(5, vp, 64);
      _tile_loadd(6, vp + 256, 64);
      _tile_loadd(7, vp + 512, 64);
      _tile_dpbf16ps(0, 4, 5);
      _tile_dpbf16ps(1, 4, 6);
      _tile_dpbf16ps(2, 4, 7);
      _tile_loadd(5, vp + 768, 64);
      _tile_dpbf16ps(3, 4, 5);
    }
    _tile_stored(0, w.o, kHeadDim * 4);
    _tile_stored(1, w.o + 16, kHeadDim * 4);
    _tile_stored(2, w.o + 32, kHeadDim * 4);
    _tile_stored(3, w.o + 48, kHeadDim * 4);
    uint16_t* out = pb.out + (bh * T + t0) * kHeadDim;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t d = 0; d < kHeadDim; d += 16) {
        __m256bh b16 = _mm512_cvtneps_pbh(_mm512_loadu_ps(w.o + i * kHeadDim + d));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * kHeadDim + d), (__m256i)b16);
      }
  }
}

// Workers take (b, h) pairs from a shared counter until none is left.
struct Work {
  Problem problem;
  std::atomic<int64_t> next{0}, done{0};
  int64_t total = 0;

  void Run() {
    int64_t i = next.fetch_add(1);
    if (i >= total) return;
    ConfigureTiles();  // tile configuration is per thread
    Scratch w;
    const int64_t Sp = problem.keys_padded;
    w.k_packed.resize(Sp * kHeadDim / 2);
    w.v_packed.resize(Sp * kHeadDim / 2);
    w.scores.resize(kRows * Sp);
    w.p.resize(kRows * Sp);
    w.q_rows.resize(kRows * kHeadDim);
    for (; i < total; i = next.fetch_add(1)) {
      AttendHead(problem, i / problem.heads, i % problem.heads, w);
      done.fetch_add(1, std::memory_order_release);
    }
    _tile_release();
  }
};

bool AmxPermitted() {
  // Linux hands out AMX's tile state only to a process that asks (ARCH_REQ_XCOMP_PERM for
  // XFEATURE_XTILEDATA); asking again is harmless.
  static const bool permitted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return permitted;
}

ffi::Error Attention(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> q, ffi::Buffer<ffi::BF16> k,
                     ffi::Buffer<ffi::BF16> v, ffi::Buffer<ffi::F32> pos,
                     ffi::Buffer<ffi::F32> key, ffi::ResultBuffer<ffi::BF16> out,
                     ffi::ResultBuffer<ffi::F32> m, ffi::ResultBuffer<ffi::F32> z,
                     int64_t abstain, int64_t has_pos, int64_t has_key) {
  if (!AmxPermitted())
    return ffi::Error::Internal("the kernel refused AMX tile state (arch_prctl)");
  auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || qd[3] != kHeadDim || kd[3] != kHeadDim)
    return ffi::Error::InvalidArgument("q, k, v must be (B, H, T|S, 64)");
  auto work = std::make_shared<Work>();
  Problem& pb = work->problem;
  pb.batch = qd[0];
  pb.heads = qd[1];
  pb.queries = qd[2];
  pb.keys = kd[2];
  pb.keys_padded = (pb.keys + 31) / 32 * 32;
  pb.q = reinterpret_cast<const uint16_t*>(q.typed_data());
  pb.k = reinterpret_cast<const uint16_t*>(k.typed_data());
  pb.v = reinterpret_cast<const uint16_t*>(v.typed_data());
  pb.pos = has_pos ? pos.typed_data() : nullptr;
  pb.pos_batched = has_pos && pos.dimensions().size() == 4;
  pb.key = has_key ? key.typed_data() : nullptr;
  pb.abstain = abstain != 0;
  pb.out = reinterpret_cast<uint16_t*>(out->typed_data());
  pb.m = m->typed_data();
  pb.z = z->typed_data();
  work->total = pb.batch * pb.heads;
  // The calling thread works too, so the call finishes even where the pool is busy; helpers
  // that start late find nothing left and return (they hold `work` alive till then).
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->total) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work->Run(); });
  work->Run();
  while (work->done.load(std::memory_order_acquire) < work->total) _mm_pause();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BytelmAttentionBf16, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // q
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // k
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // v
                                  .Arg<ffi::Buffer<ffi::F32>>()   // pos_bias
                                  .Arg<ffi::Buffer<ffi::F32>>()   // key_bias
                                  .Ret<ffi::Buffer<ffi::BF16>>()  // out
                                  .Ret<ffi::Buffer<ffi::F32>>()   // m
                                  .Ret<ffi::Buffer<ffi::F32>>()   // z
                                  .Attr<int64_t>("abstain")
                                  .Attr<int64_t>("has_pos")
                                  .Attr<int64_t>("has_key"));

// For the loader's check that the library and the CPU agree before anything is registered.
extern "C" int bytelm_attention_amx_ready() { return AmxPermitted() ? 1 : 0; }
