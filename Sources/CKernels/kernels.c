#include "ckernels.h"
#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BK_X86 1
#define BK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define BK_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
#else
#define BK_X86 0
#endif

// ---------------------------------------------------------------- half precision

static float half_table[65536];
static int half_table_ready = 0;

static float half_to_float_bits(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    int exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    float f;
    if (exp == 0) {
        f = ldexpf((float)mant, -24);
        return sign ? -f : f;
    }
    uint32_t bits = exp == 31 ? (sign | 0x7f800000u | (mant << 13)) : (sign | ((uint32_t)(exp - 15 + 127) << 23) | (mant << 13));
    memcpy(&f, &bits, 4);
    return f;
}

static void init_half_table(void) {
    if (half_table_ready) return;
    for (int i = 0; i < 65536; i++) half_table[i] = half_to_float_bits((uint16_t)i);
    __atomic_store_n(&half_table_ready, 1, __ATOMIC_RELEASE);
}

static inline float h2f(uint16_t h) { return half_table[h]; }

float bk_half_to_float(uint16_t h) { init_half_table(); return h2f(h); }

uint16_t bk_float_to_half(float f) {
    // Round to nearest even, with overflow to infinity and subnormals, as IEEE requires.
    uint32_t x; memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000 ? 0x200 : 0));
    if (absx >= 0x477ff000) return (uint16_t)(sign | 0x7c00);          // rounds to >= 65520: inf
    if (absx < 0x38800000) {                                            // subnormal half or zero
        if (absx < 0x33000000) return (uint16_t)sign;                   // < 2^-25 rounds to 0
        uint32_t mant = (absx & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(absx >> 23);                            // 14..24
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = ((absx - 0x38000000) >> 13);
    uint32_t rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

// ---------------------------------------------------------------- dispatch

static int force_portable = 0;
static int avx2_state = -1;

int bk_has_avx2(void) {
#if BK_X86
    if (avx2_state < 0) {
        __builtin_cpu_init();
        avx2_state = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return avx2_state && !force_portable;
#else
    return 0;
#endif
}

void bk_force_portable(int on) { force_portable = on; }

static int force_no_vnni = 0;
static int vnni_state = -1;

// AVX-512 VNNI on 256-bit vectors (vpdpbusd): one instruction for the u8·s8 sums of four
// that AVX2 forms with maddubs + madd. The integer sums are identical (the 16-bit pair sums
// of the quantised types never saturate), so every path gives the same floats.
int bk_has_vnni(void) {
#if BK_X86
    if (vnni_state < 0) {
        __builtin_cpu_init();
        vnni_state = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    }
    return vnni_state && !force_no_vnni && bk_has_avx2();
#else
    return 0;
#endif
}

void bk_force_no_vnni(int on) { force_no_vnni = on; }

static inline uint16_t load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

// 5-bit weight k of a Q5_0/Q5_1 block whose 32-bit qh word is at q (its 16 nibble bytes follow).
static inline int q5_at(const uint8_t *q, uint32_t qh, int k) {
    int nib = k < 16 ? (q[4 + k] & 0x0f) : (q[4 + k - 16] >> 4);
    return nib | (int)((qh >> k) & 1) << 4;
}

// ---------------------------------------------------------------- portable kernels

static void quantize_q8_portable(const float *x, int n, int8_t *qs, float *d, int32_t *sums, float *ds) {
    for (int b = 0; b < n / 32; b++) {
        const float *v = x + 32 * b;
        float amax = 0;
        for (int j = 0; j < 32; j++) { float a = fabsf(v[j]); if (a > amax) amax = a; }
        float scale = amax / 127.0f;
        float inv = scale != 0 ? 1.0f / scale : 0.0f;
        int32_t s = 0;
        for (int j = 0; j < 32; j++) {
            int q = (int)nearbyintf(v[j] * inv);
            qs[32 * b + j] = (int8_t)q;
            s += q;
        }
        d[b] = h2f(bk_float_to_half(scale));
        sums[b] = s;
        ds[b] = h2f(bk_float_to_half(scale * (float)s));
    }
}

static float dot_q4_1_portable(const uint8_t *p, const int8_t *qs, const float *d, const float *ds, int blocks) {
    float acc = 0;
    for (int b = 0; b < blocks; b++, p += 20) {
        int32_t isum = 0;
        const int8_t *a = qs + 32 * b;
        for (int j = 0; j < 16; j++) isum += (p[4 + j] & 0x0f) * a[j] + (p[4 + j] >> 4) * a[j + 16];
        acc += h2f(load_u16(p)) * d[b] * (float)isum + h2f(load_u16(p + 2)) * ds[b];
    }
    return acc;
}

static float dot_q4_0_portable(const uint8_t *p, const int8_t *qs, const float *d, const int32_t *sums, int blocks) {
    float acc = 0;
    for (int b = 0; b < blocks; b++, p += 18) {
        int32_t isum = 0;
        const int8_t *a = qs + 32 * b;
        for (int j = 0; j < 16; j++) isum += ((p[2 + j] & 0x0f) - 8) * a[j] + ((p[2 + j] >> 4) - 8) * a[j + 16];
        acc += h2f(load_u16(p)) * d[b] * (float)isum;
        (void)sums;
    }
    return acc;
}

// Σ (q - bias)·a over one Q5 block (qh word at q, nibbles after it).
static inline int32_t q5_block_isum(const uint8_t *q, const int8_t *a, int bias) {
    uint32_t qh = load_u32(q);
    int32_t isum = 0;
    for (int k = 0; k < 32; k++) isum += (q5_at(q, qh, k) - bias) * a[k];
    return isum;
}

static float dot_q5_0_portable(const uint8_t *p, const int8_t *qs, const float *d, int blocks) {
    float acc = 0;
    for (int b = 0; b < blocks; b++, p += 22) acc += h2f(load_u16(p)) * d[b] * (float)q5_block_isum(p + 2, qs + 32 * b, 16);
    return acc;
}

static float dot_q5_1_portable(const uint8_t *p, const int8_t *qs, const float *d, const float *ds, int blocks) {
    float acc = 0;
    for (int b = 0; b < blocks; b++, p += 24)
        acc += h2f(load_u16(p)) * d[b] * (float)q5_block_isum(p + 4, qs + 32 * b, 0) + h2f(load_u16(p + 2)) * ds[b];
    return acc;
}

static float dot_q8_0_portable(const uint8_t *p, const int8_t *qs, const float *d, int blocks) {
    float acc = 0;
    for (int b = 0; b < blocks; b++, p += 34) {
        int32_t isum = 0;
        const int8_t *w = (const int8_t *)(p + 2);
        const int8_t *a = qs + 32 * b;
        for (int j = 0; j < 32; j++) isum += w[j] * a[j];
        acc += h2f(load_u16(p)) * d[b] * (float)isum;
    }
    return acc;
}


// ---------------------------------------------------------------- K-quants on Q8_K activations

static void quantize_q8k_portable(const float *x, int n, int8_t *qs, float *d, int16_t *bsums) {
    for (int b = 0; b < n / 256; b++) {
        const float *v = x + 256 * b;
        int8_t *q = qs + 256 * b;
        float amax = 0, peak = 0;   // the first value of largest magnitude, with its sign
        for (int j = 0; j < 256; j++) { float a = fabsf(v[j]); if (a > amax) { amax = a; peak = v[j]; } }
        if (amax == 0) {
            d[b] = 0;
            memset(q, 0, 256);
            for (int g = 0; g < 16; g++) bsums[16 * b + g] = 0;
            continue;
        }
        float iscale = -127.0f / peak;
        for (int j = 0; j < 256; j++) {
            int r = (int)nearbyintf(iscale * v[j]);
            q[j] = (int8_t)(r > 127 ? 127 : r);
        }
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += q[16 * g + j];
            bsums[16 * b + g] = (int16_t)s;
        }
        d[b] = 1.0f / iscale;
    }
}

// The 6-bit scales and mins of a Q4_K/Q5_K super-block (12 packed bytes at s).
static inline void kq_scales(const uint8_t *s, int32_t sc[8], int32_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0f) | (s[j] >> 6) << 4;
        mn[j + 4] = (s[j + 8] >> 4) | (s[j + 4] >> 6) << 4;
    }
}

// Σ_j mins_j · (sum of the 32 activations of sub-block j).
static inline int32_t kq_min_sum(const int32_t mn[8], const int16_t *bs) {
    int32_t s = 0;
    for (int j = 0; j < 8; j++) s += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
    return s;
}

// One super-block's contribution. Two products in separate statements, so no compiler fuses
// them into an FMA: every path (and the Swift twin) rounds the same way.
static inline float kq_term(float dw, float dmw, float da, int32_t isum, int32_t imin) {
    float main = (dw * da) * (float)isum;
    float off = (dmw * da) * (float)imin;
    return main - off;
}

// Q4_K (bytes 144) and Q5_K (bytes 176): w = d·sc·q - dmin·m per sub-block of 32.
static float dot_q45k_portable(const uint8_t *p, int bytes, const int8_t *qs, const float *d, const int16_t *bsums, int sblocks) {
    const int five = bytes == 176;
    float acc = 0;
    for (int b = 0; b < sblocks; b++, p += bytes) {
        int32_t sc[8], mn[8];
        kq_scales(p + 4, sc, mn);
        const uint8_t *qh = p + 16, *ql = p + (five ? 48 : 16);
        const int8_t *a = qs + 256 * b;
        int32_t isum = 0;
        for (int j = 0; j < 8; j++) {
            const uint8_t *q = ql + 32 * (j / 2);
            int32_t s = 0;
            for (int l = 0; l < 32; l++) {
                int v = (j & 1) ? q[l] >> 4 : q[l] & 0x0f;
                if (five) v |= ((qh[l] >> j) & 1) << 4;
                s += v * a[32 * j + l];
            }
            isum += sc[j] * s;
        }
        acc += kq_term(h2f(load_u16(p)), h2f(load_u16(p + 2)), d[b], isum, kq_min_sum(mn, bsums + 16 * b));
    }
    return acc;
}

// Q6_K: 210 bytes; w = d·sc·(q - 32) with a signed 8-bit scale per 16 weights.
static float dot_q6k_portable(const uint8_t *p, const int8_t *qs, const float *d, int sblocks) {
    float acc = 0;
    for (int b = 0; b < sblocks; b++, p += 210) {
        const int8_t *a = qs + 256 * b;
        const int8_t *sc = (const int8_t *)(p + 192);
        int32_t isum = 0;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = p + 64 * h, *qh = p + 128 + 32 * h;
            int32_t s[8] = {0};   // per 16 weights of this half
            for (int l = 0; l < 32; l++) {
                int q0 = (ql[l] & 0x0f) | (qh[l] & 3) << 4;
                int q1 = (ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4;
                int q2 = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
                int q3 = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4;
                const int8_t *ah = a + 128 * h + l;
                s[l / 16] += (q0 - 32) * ah[0];
                s[2 + l / 16] += (q1 - 32) * ah[32];
                s[4 + l / 16] += (q2 - 32) * ah[64];
                s[6 + l / 16] += (q3 - 32) * ah[96];
            }
            for (int g = 0; g < 8; g++) isum += sc[8 * h + g] * s[g];
        }
        acc += kq_term(h2f(load_u16(p + 208)), 0.0f, d[b], isum, 0);
    }
    return acc;
}

// ---------------------------------------------------------------- AVX2 kernels

#if BK_X86
BK_AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

BK_AVX2 static inline float h2f_avx(const uint8_t *p) { return _cvtsh_ss(load_u16(p)); }

// Decode's matrix-vector products read each weight row once, in order. The hardware
// prefetcher alone keeps one core at about two thirds of the bandwidth two cores can draw
// (a 30 MB Q8_0 head on a 2-core Zen 2: 17.5 GB/s of 27.5; 25.8 with rows asked for 1 KB
// ahead, 26.0 with 2 KB); asking for the row BK_PREFETCH_AHEAD bytes ahead at the start of
// each row closes most of the gap.
// Prefetches never fault, so running past the matrix's end is harmless.
#define BK_PREFETCH_AHEAD 2048
static inline void prefetch_row_ahead(const uint8_t *row, size_t rb) {
    for (size_t k = 0; k < rb; k += 64) __builtin_prefetch(row + BK_PREFETCH_AHEAD + k, 0, 3);
}

BK_AVX2 static void quantize_q8_avx2(const float *x, int n, int8_t *qs, float *d, int32_t *sums, float *ds) {
    const __m256 signmask = _mm256_set1_ps(-0.0f);
    for (int b = 0; b < n / 32; b++) {
        const float *v = x + 32 * b;
        __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16), v3 = _mm256_loadu_ps(v + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(signmask, v0), _mm256_andnot_ps(signmask, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(signmask, v2), _mm256_andnot_ps(signmask, v3)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float scale = amax / 127.0f;
        float inv = scale != 0 ? 1.0f / scale : 0.0f;
        __m256 iv = _mm256_set1_ps(inv);
        // Round to nearest even in both paths (ggml's AVX path does the same).
#define BK_ROUND_MODE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, iv), BK_ROUND_MODE));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, iv), BK_ROUND_MODE));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, iv), BK_ROUND_MODE));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, iv), BK_ROUND_MODE));
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        sums[b] = _mm_cvtsi128_si32(s4);
        ds[b] = _cvtsh_ss(_cvtss_sh(scale * (float)sums[b], 0));
        // pack 32 x int32 -> 32 x int8 in order
        __m256i p01 = _mm256_packs_epi32(i0, i1);     // lanes interleaved by 128-bit halves
        __m256i p23 = _mm256_packs_epi32(i2, i3);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(qs + 32 * b), p);
        d[b] = _cvtsh_ss(_cvtss_sh(scale, 0));
    }
}

BK_AVX2 static inline __m256i unpack_nibbles(const uint8_t *q) {
    __m128i raw = _mm_loadu_si128((const __m128i *)q);
    __m128i lo = _mm_and_si128(raw, _mm_set1_epi8(0x0f));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f));
    return _mm256_set_m128i(hi, lo);   // weights 0..15 then 16..31
}

// The 32 fifth bits of a Q5 block as bytes of 0 or 0xff, in weight order (byte k <- bit k of qh).
BK_AVX2 static inline __m256i q5_bit_mask(const uint8_t *qhp) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)load_u32(qhp)), spread);
    return _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
}

// 5-bit weights 0..31 of a Q5 block (qh word at q) as unsigned bytes.
BK_AVX2 static inline __m256i unpack_q5(const uint8_t *q) {
    return _mm256_or_si256(unpack_nibbles(q + 4), _mm256_and_si256(q5_bit_mask(q), _mm256_set1_epi8(16)));
}

// The weights of a Q4_1 block (bytes == 20, nibbles at p + 4) or a Q5_1 block (qh word at p + 4).
BK_AVX2 static inline __m256i unpack_q_1(const uint8_t *p, int bytes) { return bytes == 24 ? unpack_q5(p + 4) : unpack_nibbles(p + 4); }

// Two accumulators per dot product (even and odd blocks) hide the FMA latency of the
// loop-carried sum. matvec and gemm use the same macro per (row, token, block) and combine
// the two halves the same way, so a batched prompt and token-by-token decode stay
// bit-identical.
#define BK_Q4_1_STEP(P, A, D, DS, B, ACC, M) { \
    __m256i prod_ = _mm256_madd_epi16(_mm256_maddubs_epi16(q_, _mm256_loadu_si256((const __m256i *)((A) + 32 * (B)))), ones); \
    ACC = _mm256_fmadd_ps(_mm256_set1_ps(wd_ * (D)[B]), _mm256_cvtepi32_ps(prod_), ACC); \
    M += wm_ * (DS)[B]; }

// Q4_1 (bytes = 20) and Q5_1 (bytes = 24).
BK_AVX2 static void matvec_q_1_avx2(const uint8_t *w, size_t rb, int bytes, int r0, int r1, int blocks,
                                     const int8_t *qs, const float *d, const float *ds, float *y) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = r0; r < r1; r++) {
        const uint8_t *p = w + (size_t)r * rb;
        prefetch_row_ahead(p, rb);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
        float m0 = 0, m1 = 0;
        for (int b = 0; b < blocks; b++, p += bytes) {
            __m256i q_ = unpack_q_1(p, bytes);
            float wd_ = h2f_avx(p), wm_ = h2f_avx(p + 2);
            if (b & 1) BK_Q4_1_STEP(p, qs, d, ds, b, acc1, m1) else BK_Q4_1_STEP(p, qs, d, ds, b, acc0, m0)
        }
        y[r - r0] = hsum256(_mm256_add_ps(acc0, acc1)) + (m0 + m1);
    }
}

// Four tokens per pass over a weight row: each block is unpacked once and used four times.
BK_AVX2 static void gemm_q_1_avx2(const uint8_t *w, size_t rb, int bytes, int r0, int r1, int blocks, int n,
                                    const int8_t *qs, const float *d, const float *ds, float *y, int ldy) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int cols = 32 * blocks;
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = w + (size_t)r * rb;
        int t = 0;
        for (; t + 4 <= n; t += 4) {
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
            float m00 = 0, m01 = 0, m10 = 0, m11 = 0, m20 = 0, m21 = 0, m30 = 0, m31 = 0;
            const int8_t *x0 = qs + (size_t)t * cols, *x1 = x0 + cols, *x2 = x1 + cols, *x3 = x2 + cols;
            const float *d0 = d + (size_t)t * blocks, *d1 = d0 + blocks, *d2 = d1 + blocks, *d3 = d2 + blocks;
            const float *s0 = ds + (size_t)t * blocks, *s1 = s0 + blocks, *s2 = s1 + blocks, *s3 = s2 + blocks;
            const uint8_t *p = row;
            for (int b = 0; b < blocks; b++, p += bytes) {
                __m256i q_ = unpack_q_1(p, bytes);
                float wd_ = h2f_avx(p), wm_ = h2f_avx(p + 2);
                if (b & 1) {
                    BK_Q4_1_STEP(p, x0, d0, s0, b, a01, m01) BK_Q4_1_STEP(p, x1, d1, s1, b, a11, m11)
                    BK_Q4_1_STEP(p, x2, d2, s2, b, a21, m21) BK_Q4_1_STEP(p, x3, d3, s3, b, a31, m31)
                } else {
                    BK_Q4_1_STEP(p, x0, d0, s0, b, a00, m00) BK_Q4_1_STEP(p, x1, d1, s1, b, a10, m10)
                    BK_Q4_1_STEP(p, x2, d2, s2, b, a20, m20) BK_Q4_1_STEP(p, x3, d3, s3, b, a30, m30)
                }
            }
            y[(size_t)t * ldy + (r - r0)] = hsum256(_mm256_add_ps(a00, a01)) + (m00 + m01);
            y[(size_t)(t + 1) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a10, a11)) + (m10 + m11);
            y[(size_t)(t + 2) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a20, a21)) + (m20 + m21);
            y[(size_t)(t + 3) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a30, a31)) + (m30 + m31);
        }
        for (; t < n; t++)
            matvec_q_1_avx2(w, rb, bytes, r, r + 1, blocks, qs + (size_t)t * cols, d + (size_t)t * blocks, ds + (size_t)t * blocks,
                             y + (size_t)t * ldy + (r - r0));
    }
}

// The signed weights of a Q8_0 (bytes = 34), Q4_0 (18: q - 8) or Q5_0 (22: q - 16) block.
BK_AVX2 static inline __m256i signed_weights(const uint8_t *p, int bytes) {
    if (bytes == 34) return _mm256_loadu_si256((const __m256i *)(p + 2));
    // q - 16 is the nibble when the fifth bit is set, else the nibble - 16 (its top bits all ones)
    if (bytes == 22) return _mm256_or_si256(unpack_nibbles(p + 6), _mm256_andnot_si256(q5_bit_mask(p + 2), _mm256_set1_epi8((char)0xf0)));
    return _mm256_sub_epi8(unpack_nibbles(p + 2), _mm256_set1_epi8(8));
}

#define BK_Q8_0_STEP(A, D, B, ACC) { \
    __m256i a_ = _mm256_loadu_si256((const __m256i *)((A) + 32 * (B))); \
    __m256i prod_ = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs_, _mm256_sign_epi8(a_, wv_)), ones); \
    ACC = _mm256_fmadd_ps(_mm256_set1_ps(wd_ * (D)[B]), _mm256_cvtepi32_ps(prod_), ACC); }

// Q8_0, Q4_0 and Q5_0 (block size `bytes`): w·a as |w|·(a with w's sign), one step macro for
// matvec and gemm.
BK_AVX2 static void matvec_q_0_avx2(const uint8_t *w, size_t rb, int bytes, int r0, int r1, int blocks,
                                     const int8_t *qs, const float *d, float *y) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = r0; r < r1; r++) {
        const uint8_t *p = w + (size_t)r * rb;
        prefetch_row_ahead(p, rb);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
        for (int b = 0; b < blocks; b++, p += bytes) {
            // maddubs needs an unsigned operand: |w| · (a with w's sign)
            __m256i wv_ = signed_weights(p, bytes);
            __m256i wabs_ = _mm256_sign_epi8(wv_, wv_);
            float wd_ = h2f_avx(p);
            if (b & 1) BK_Q8_0_STEP(qs, d, b, acc1) else BK_Q8_0_STEP(qs, d, b, acc0)
        }
        y[r - r0] = hsum256(_mm256_add_ps(acc0, acc1));
    }
}

BK_AVX2 static void gemm_q_0_avx2(const uint8_t *w, size_t rb, int bytes, int r0, int r1, int blocks, int n,
                                   const int8_t *qs, const float *d, float *y, int ldy) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int cols = 32 * blocks;
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = w + (size_t)r * rb;
        int t = 0;
        for (; t + 4 <= n; t += 4) {
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
            const int8_t *x0 = qs + (size_t)t * cols, *x1 = x0 + cols, *x2 = x1 + cols, *x3 = x2 + cols;
            const float *d0 = d + (size_t)t * blocks, *d1 = d0 + blocks, *d2 = d1 + blocks, *d3 = d2 + blocks;
            const uint8_t *p = row;
            for (int b = 0; b < blocks; b++, p += bytes) {
                __m256i wv_ = signed_weights(p, bytes);
                __m256i wabs_ = _mm256_sign_epi8(wv_, wv_);
                float wd_ = h2f_avx(p);
                if (b & 1) {
                    BK_Q8_0_STEP(x0, d0, b, a01) BK_Q8_0_STEP(x1, d1, b, a11) BK_Q8_0_STEP(x2, d2, b, a21) BK_Q8_0_STEP(x3, d3, b, a31)
                } else {
                    BK_Q8_0_STEP(x0, d0, b, a00) BK_Q8_0_STEP(x1, d1, b, a10) BK_Q8_0_STEP(x2, d2, b, a20) BK_Q8_0_STEP(x3, d3, b, a30)
                }
            }
            y[(size_t)t * ldy + (r - r0)] = hsum256(_mm256_add_ps(a00, a01));
            y[(size_t)(t + 1) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a10, a11));
            y[(size_t)(t + 2) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a20, a21));
            y[(size_t)(t + 3) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a30, a31));
        }
        for (; t < n; t++)
            matvec_q_0_avx2(w, rb, bytes, r, r + 1, blocks, qs + (size_t)t * cols, d + (size_t)t * blocks, y + (size_t)t * ldy + (r - r0));
    }
}


// The prompt path for the 32-weight block types. A block of weight rows is unpacked once
// (at most BK_UNPACK_BYTES, so it stays in L1 with a tile of four tokens' activations); then
// every four-token tile runs over those rows. Streaming each token tile once per row block
// instead of once per row keeps the loop out of L2. The block loop is unrolled by two (even
// blocks into one set of accumulators, odd into the other, as the step macros alternate), and
// the four tokens' activation scales are laid out side by side once per tile, so that one
// multiply gives the four products w_scale · a_scale. Per (row, token, block) the arithmetic is
// exactly the step macro's (same integer sums, the same scale product, the same even/odd
// accumulators, the offset terms summed in the same order), so the result equals the matvec's
// bit for bit (KernelTests compare them).
#define BK_UNPACK_BYTES 20480

// Broadcast lane 0, 1, 2 or 3 of four scales to eight lanes.
#define BK_LANE0(v) _mm256_broadcastss_ps(v)
#define BK_LANE1(v) _mm256_broadcastss_ps(_mm_movehdup_ps(v))
#define BK_LANE2(v) _mm256_broadcastss_ps(_mm_movehl_ps(v, v))
#define BK_LANE3(v) _mm256_broadcastss_ps(_mm_shuffle_ps(v, v, 0xff))

// The four tokens' scales of block b side by side (each token's row holds `blocks` scales):
// out[b] = (s[b], s[b + blocks], s[b + 2·blocks], s[b + 3·blocks]).
#define BK_SIDE_BY_SIDE(OUT, S, BLOCKS) \
    for (int b_ = 0; b_ < (BLOCKS); b_++) OUT[b_] = _mm_setr_ps((S)[b_], (S)[b_ + (BLOCKS)], (S)[b_ + 2 * (BLOCKS)], (S)[b_ + 3 * (BLOCKS)]);

// Q8_0/Q4_0/Q5_0: w·a as |w|·(a with w's sign), as BK_Q8_0_STEP.
#define BK_GEMM_Q0_UNPACKED(NAME, TARGET, DOT4)                                                                   \
TARGET static void NAME(const uint8_t *w, size_t rb, int bytes, int r0, int r1, int blocks, int n,                \
                        const int8_t *qs, const float *d, float *y, int ldy) {                                     \
    const int cols = 32 * blocks;                                                                                  \
    const __m256i ones = _mm256_set1_epi16(1); (void)ones;                                                         \
    __m256i unpacked[BK_UNPACK_BYTES / 32];                                                                        \
    float wscale[BK_UNPACK_BYTES / 64];                                                                            \
    __m128 dT[BK_UNPACK_BYTES / 64];                                                                               \
    int rowsPerBlock = BK_UNPACK_BYTES / (64 * blocks);                                                            \
    if (rowsPerBlock > 16) rowsPerBlock = 16;                                                                      \
    const int tiles = n / 4;                                                                                       \
    for (int rb0 = r0; rb0 < r1; rb0 += rowsPerBlock) {                                                            \
        const int rb1 = rb0 + rowsPerBlock < r1 ? rb0 + rowsPerBlock : r1;                                         \
        for (int r = rb0; r < rb1; r++) {                                                                          \
            const uint8_t *p = w + (size_t)r * rb;                                                                 \
            __m256i *u = unpacked + 2 * (size_t)(r - rb0) * blocks;                                                \
            for (int b = 0; b < blocks; b++, p += bytes) {                                                         \
                __m256i v = signed_weights(p, bytes);                                                              \
                u[2 * b] = v; u[2 * b + 1] = _mm256_sign_epi8(v, v); wscale[(r - rb0) * blocks + b] = h2f_avx(p);  \
            }                                                                                                      \
        }                                                                                                          \
        for (int tile = 0; tile < tiles; tile++) {                                                                 \
            const int t = 4 * tile;                                                                                \
            const int8_t *x0 = qs + (size_t)t * cols, *x1 = x0 + cols, *x2 = x1 + cols, *x3 = x2 + cols;             \
            BK_SIDE_BY_SIDE(dT, d + (size_t)t * blocks, blocks)                                                    \
            for (int r = rb0; r < rb1; r++) {                                                                      \
                const __m256i *u = unpacked + 2 * (size_t)(r - rb0) * blocks;                                      \
                const float *ws = wscale + (r - rb0) * blocks;                                                     \
                __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00; \
                _Pragma("clang loop unroll(disable)")                                                              \
                for (int b = 0; b < blocks; b += 2) {                                                              \
                    BK_GEMM_Q0_STEP(DOT4, b, a00, a10, a20, a30)                                                   \
                    if (b + 1 < blocks) BK_GEMM_Q0_STEP(DOT4, b + 1, a01, a11, a21, a31)                           \
                }                                                                                                  \
                y[(size_t)t * ldy + (r - r0)] = hsum256(_mm256_add_ps(a00, a01));                                  \
                y[(size_t)(t + 1) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a10, a11));                            \
                y[(size_t)(t + 2) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a20, a21));                            \
                y[(size_t)(t + 3) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a30, a31));                            \
            }                                                                                                      \
        }                                                                                                          \
        for (int t = 4 * tiles; t < n; t++)                                                                        \
            matvec_q_0_avx2(w, rb, bytes, rb0, rb1, blocks, qs + (size_t)t * cols, d + (size_t)t * blocks,         \
                            y + (size_t)t * ldy + (rb0 - r0));                                                     \
    }                                                                                                              \
}
// One block of a Q0 tile: four tokens against one unpacked row block.
#define BK_GEMM_Q0_STEP(DOT4, B, A0, A1, A2, A3) {                                                                \
    const __m256i sg = u[2 * (B)], ab = u[2 * (B) + 1];                                                            \
    const __m128 sc = _mm_mul_ps(_mm_set1_ps(ws[B]), dT[B]);                                                       \
    A0 = _mm256_fmadd_ps(BK_LANE0(sc), _mm256_cvtepi32_ps(DOT4(ab, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(x0 + 32 * (B))), sg))), A0); \
    A1 = _mm256_fmadd_ps(BK_LANE1(sc), _mm256_cvtepi32_ps(DOT4(ab, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(x1 + 32 * (B))), sg))), A1); \
    A2 = _mm256_fmadd_ps(BK_LANE2(sc), _mm256_cvtepi32_ps(DOT4(ab, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(x2 + 32 * (B))), sg))), A2); \
    A3 = _mm256_fmadd_ps(BK_LANE3(sc), _mm256_cvtepi32_ps(DOT4(ab, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(x3 + 32 * (B))), sg))), A3); }

// One block of an offset Q0 tile (gemm_q_0_unpacked_vnni): the same floats as BK_GEMM_Q0_STEP.
#define BK_GEMM_Q0_OFFSET_STEP(B, A0, A1, A2, A3) {                                                               \
    const __m256i wv = u[2 * (B)], base = u[2 * (B) + 1];                                                          \
    const __m128 sc = _mm_mul_ps(_mm_set1_ps(ws[B]), dT[B]);                                                       \
    A0 = _mm256_fmadd_ps(BK_LANE0(sc), _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(base, shifted[4 * (B)], wv)), A0);     \
    A1 = _mm256_fmadd_ps(BK_LANE1(sc), _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(base, shifted[4 * (B) + 1], wv)), A1); \
    A2 = _mm256_fmadd_ps(BK_LANE2(sc), _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(base, shifted[4 * (B) + 2], wv)), A2); \
    A3 = _mm256_fmadd_ps(BK_LANE3(sc), _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(base, shifted[4 * (B) + 3], wv)), A3); }

// Q4_1 and Q5_1: unsigned weights plus an offset term, as BK_Q4_1_STEP; the four tokens'
// offset terms (w_min · a_sum) side by side in one vector per parity.
#define BK_GEMM_Q1_UNPACKED(NAME, TARGET, DOT4)                                                                   \
TARGET static void NAME(const uint8_t *w, size_t rb, int bytes, int r0, int r1, int blocks, int n,                \
                        const int8_t *qs, const float *d, const float *ds, float *y, int ldy) {                    \
    const int cols = 32 * blocks;                                                                                  \
    const __m256i ones = _mm256_set1_epi16(1); (void)ones;                                                         \
    __m256i unpacked[BK_UNPACK_BYTES / 32];                                                                        \
    float wscale[BK_UNPACK_BYTES / 32], wmin[BK_UNPACK_BYTES / 32];                                                \
    __m128 dT[BK_UNPACK_BYTES / 32], sT[BK_UNPACK_BYTES / 32];                                                     \
    int rowsPerBlock = BK_UNPACK_BYTES / (32 * blocks);                                                            \
    if (rowsPerBlock > 16) rowsPerBlock = 16;                                                                      \
    const int tiles = n / 4;                                                                                       \
    for (int rb0 = r0; rb0 < r1; rb0 += rowsPerBlock) {                                                            \
        const int rb1 = rb0 + rowsPerBlock < r1 ? rb0 + rowsPerBlock : r1;                                         \
        for (int r = rb0; r < rb1; r++) {                                                                          \
            const uint8_t *p = w + (size_t)r * rb;                                                                 \
            const int o = (r - rb0) * blocks;                                                                      \
            for (int b = 0; b < blocks; b++, p += bytes) {                                                         \
                unpacked[o + b] = unpack_q_1(p, bytes); wscale[o + b] = h2f_avx(p); wmin[o + b] = h2f_avx(p + 2);  \
            }                                                                                                      \
        }                                                                                                          \
        for (int tile = 0; tile < tiles; tile++) {                                                                 \
            const int t = 4 * tile;                                                                                \
            const int8_t *x0 = qs + (size_t)t * cols, *x1 = x0 + cols, *x2 = x1 + cols, *x3 = x2 + cols;             \
            BK_SIDE_BY_SIDE(dT, d + (size_t)t * blocks, blocks)                                                    \
            BK_SIDE_BY_SIDE(sT, ds + (size_t)t * blocks, blocks)                                                   \
            for (int r = rb0; r < rb1; r++) {                                                                      \
                const int o = (r - rb0) * blocks;                                                                  \
                __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00; \
                __m128 mEven = _mm_setzero_ps(), mOdd = mEven;                                                     \
                _Pragma("clang loop unroll(disable)")                                                              \
                for (int b = 0; b < blocks; b += 2) {                                                              \
                    BK_GEMM_Q1_STEP(DOT4, b, a00, a10, a20, a30, mEven)                                            \
                    if (b + 1 < blocks) BK_GEMM_Q1_STEP(DOT4, b + 1, a01, a11, a21, a31, mOdd)                     \
                }                                                                                                  \
                const __m128 m = _mm_add_ps(mEven, mOdd);                                                          \
                y[(size_t)t * ldy + (r - r0)] = hsum256(_mm256_add_ps(a00, a01)) + _mm_cvtss_f32(m);               \
                y[(size_t)(t + 1) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a10, a11)) + _mm_cvtss_f32(_mm_movehdup_ps(m)); \
                y[(size_t)(t + 2) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a20, a21)) + _mm_cvtss_f32(_mm_movehl_ps(m, m)); \
                y[(size_t)(t + 3) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a30, a31)) + _mm_cvtss_f32(_mm_shuffle_ps(m, m, 0xff)); \
            }                                                                                                      \
        }                                                                                                          \
        for (int t = 4 * tiles; t < n; t++)                                                                        \
            matvec_q_1_avx2(w, rb, bytes, rb0, rb1, blocks, qs + (size_t)t * cols, d + (size_t)t * blocks,         \
                            ds + (size_t)t * blocks, y + (size_t)t * ldy + (rb0 - r0));                            \
    }                                                                                                              \
}
// One block of a Q1 tile: four tokens against one unpacked row block, and their offset terms.
#define BK_GEMM_Q1_STEP(DOT4, B, A0, A1, A2, A3, M) {                                                             \
    const __m256i q = unpacked[o + (B)];                                                                           \
    const __m128 sc = _mm_mul_ps(_mm_set1_ps(wscale[o + (B)]), dT[B]);                                             \
    M = _mm_add_ps(M, _mm_mul_ps(_mm_set1_ps(wmin[o + (B)]), sT[B]));                                              \
    A0 = _mm256_fmadd_ps(BK_LANE0(sc), _mm256_cvtepi32_ps(DOT4(q, _mm256_loadu_si256((const __m256i *)(x0 + 32 * (B))))), A0); \
    A1 = _mm256_fmadd_ps(BK_LANE1(sc), _mm256_cvtepi32_ps(DOT4(q, _mm256_loadu_si256((const __m256i *)(x1 + 32 * (B))))), A1); \
    A2 = _mm256_fmadd_ps(BK_LANE2(sc), _mm256_cvtepi32_ps(DOT4(q, _mm256_loadu_si256((const __m256i *)(x2 + 32 * (B))))), A2); \
    A3 = _mm256_fmadd_ps(BK_LANE3(sc), _mm256_cvtepi32_ps(DOT4(q, _mm256_loadu_si256((const __m256i *)(x3 + 32 * (B))))), A3); }

#define BK_DOT4_AVX2(U, S) _mm256_madd_epi16(_mm256_maddubs_epi16(U, S), ones)
#define BK_DOT4_VNNI(U, S) _mm256_dpbusd_epi32(_mm256_setzero_si256(), U, S)
BK_GEMM_Q0_UNPACKED(gemm_q_0_unpacked_avx2, BK_AVX2, BK_DOT4_AVX2)

// Q8_0/Q4_0/Q5_0 with VNNI: w·a as (a + 128)·w − 128·Σw. Each 32-bit lane (four products) is an
// exact integer equal to the |w|·(a with w's sign) of the form above, so the floats that follow
// are the same bit for bit. The offset copy of the activations is made once per tile and shared
// by every row of the block, which saves the per-row sign instruction of the form above (its
// share of the work is largest in the output head). AVX2 cannot do this: maddubs saturates the
// (a + 128)·w pairs at 16 bits.
BK_VNNI static void gemm_q_0_unpacked_vnni(const uint8_t *w, size_t rb, int bytes, int r0, int r1, int blocks, int n,
                                           const int8_t *qs, const float *d, float *y, int ldy) {
    const int cols = 32 * blocks;
    const __m256i offset = _mm256_set1_epi8((char)0x80), zero = _mm256_setzero_si256();
    __m256i unpacked[BK_UNPACK_BYTES / 32];          // per row and block: w, then −128·Σw per lane
    __m256i shifted[4 * (BK_UNPACK_BYTES / 64)];     // per block: the four tokens' a + 128
    float wscale[BK_UNPACK_BYTES / 64];
    __m128 dT[BK_UNPACK_BYTES / 64];
    int rowsPerBlock = BK_UNPACK_BYTES / (64 * blocks);
    if (rowsPerBlock > 16) rowsPerBlock = 16;
    const int tiles = n / 4;
    for (int rb0 = r0; rb0 < r1; rb0 += rowsPerBlock) {
        const int rb1 = rb0 + rowsPerBlock < r1 ? rb0 + rowsPerBlock : r1;
        for (int r = rb0; r < rb1; r++) {
            const uint8_t *p = w + (size_t)r * rb;
            __m256i *u = unpacked + 2 * (size_t)(r - rb0) * blocks;
            for (int b = 0; b < blocks; b++, p += bytes) {
                __m256i v = signed_weights(p, bytes);
                u[2 * b] = v; u[2 * b + 1] = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, offset, v));
                wscale[(r - rb0) * blocks + b] = h2f_avx(p);
            }
        }
        for (int tile = 0; tile < tiles; tile++) {
            const int t = 4 * tile;
            const int8_t *x = qs + (size_t)t * cols;
            BK_SIDE_BY_SIDE(dT, d + (size_t)t * blocks, blocks)
            for (int b = 0; b < blocks; b++)
                for (int j = 0; j < 4; j++)
                    shifted[4 * b + j] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(x + (size_t)j * cols + 32 * b)), offset);
            for (int r = rb0; r < rb1; r++) {
                const __m256i *u = unpacked + 2 * (size_t)(r - rb0) * blocks;
                const float *ws = wscale + (r - rb0) * blocks;
                __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
                _Pragma("clang loop unroll(disable)")
                for (int b = 0; b < blocks; b += 2) {
                    BK_GEMM_Q0_OFFSET_STEP(b, a00, a10, a20, a30)
                    if (b + 1 < blocks) BK_GEMM_Q0_OFFSET_STEP(b + 1, a01, a11, a21, a31)
                }
                y[(size_t)t * ldy + (r - r0)] = hsum256(_mm256_add_ps(a00, a01));
                y[(size_t)(t + 1) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a10, a11));
                y[(size_t)(t + 2) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a20, a21));
                y[(size_t)(t + 3) * ldy + (r - r0)] = hsum256(_mm256_add_ps(a30, a31));
            }
        }
        for (int t = 4 * tiles; t < n; t++)
            matvec_q_0_avx2(w, rb, bytes, rb0, rb1, blocks, qs + (size_t)t * cols, d + (size_t)t * blocks,
                            y + (size_t)t * ldy + (rb0 - r0));
    }
}
BK_GEMM_Q1_UNPACKED(gemm_q_1_unpacked_avx2, BK_AVX2, BK_DOT4_AVX2)
BK_GEMM_Q1_UNPACKED(gemm_q_1_unpacked_vnni, BK_VNNI, BK_DOT4_VNNI)

BK_AVX2 static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

// The K-quant AVX2 kernels work on one weight row against NT activation rows at once (NT = 1
// for decode, 4 in the batched product): each super-block is unpacked once and used NT times.
// Every (row, token) result is the same exact integer sums and the same scalar float steps, so
// a batch gives bit for bit what token-by-token decoding gives.
typedef struct { const int8_t *qs; const float *d; const int16_t *bsums; } kq_acts;

// Same integer sums as dot_q45k_portable, 32 weights per instruction.
BK_AVX2 static inline __attribute__((always_inline)) void q45k_row_avx2(const uint8_t *p, int bytes, int sblocks, const int nt,
                                                                        const kq_acts *a, float *out) {
    const int five = bytes == 176;
    const __m256i low4 = _mm256_set1_epi8(0x0f), bit = _mm256_set1_epi8(1);
    float acc[4] = {0, 0, 0, 0};
    for (int b = 0; b < sblocks; b++, p += bytes) {
        int32_t sc[8], mn[8];
        kq_scales(p + 4, sc, mn);
        const uint8_t *ql = p + (five ? 48 : 16);
        __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(p + 16)) : _mm256_setzero_si256();
        __m256i sum[4];
        for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_si256();
        for (int g = 0; g < 4; g++) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(ql + 32 * g));
            __m256i lo = _mm256_and_si256(raw, low4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
            if (five) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), bit), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * g + 1), bit), 4));
            }
            const __m256i s0 = _mm256_set1_epi16((short)sc[2 * g]), s1 = _mm256_set1_epi16((short)sc[2 * g + 1]);
            for (int t = 0; t < nt; t++) {
                const int8_t *x = a[t].qs + 256 * b + 64 * g;
                __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)x));
                __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(x + 32)));
                sum[t] = _mm256_add_epi32(sum[t], _mm256_add_epi32(_mm256_madd_epi16(p0, s0), _mm256_madd_epi16(p1, s1)));
            }
        }
        const float dw = h2f_avx(p), dmw = h2f_avx(p + 2);
        for (int t = 0; t < nt; t++)
            acc[t] += kq_term(dw, dmw, a[t].d[b], hsum_epi32(sum[t]), kq_min_sum(mn, a[t].bsums + 16 * b));
    }
    for (int t = 0; t < nt; t++) out[t] = acc[t];
}

// Q6_K: the unsigned 6-bit values against the activations, then the -32 offset through bsums.
BK_AVX2 static inline __attribute__((always_inline)) void q6k_row_avx2(const uint8_t *p, int sblocks, const int nt,
                                                                       const kq_acts *a, float *out) {
    const __m256i low4 = _mm256_set1_epi8(0x0f), two = _mm256_set1_epi8(3);
    float acc[4] = {0, 0, 0, 0};
    for (int b = 0; b < sblocks; b++, p += 210) {
        const int8_t *sc = (const int8_t *)(p + 192);
        __m256i sum[4];
        for (int t = 0; t < nt; t++) sum[t] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(p + 64 * h));
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(p + 64 * h + 32));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, two), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, low4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two), 4));
            for (int k = 0; k < 4; k++) {
                const __m256i scales = _mm256_set_m128i(_mm_set1_epi16((short)sc[8 * h + 2 * k + 1]), _mm_set1_epi16((short)sc[8 * h + 2 * k]));
                for (int t = 0; t < nt; t++) {
                    __m256i prod = _mm256_maddubs_epi16(q[k], _mm256_loadu_si256((const __m256i *)(a[t].qs + 256 * b + 128 * h + 32 * k)));
                    sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(prod, scales));
                }
            }
        }
        const float dw = h2f_avx(p + 208);
        for (int t = 0; t < nt; t++) {
            const int16_t *bs = a[t].bsums + 16 * b;
            int32_t offset = 0;
            for (int g = 0; g < 16; g++) offset += sc[g] * bs[g];
            acc[t] += kq_term(dw, 0.0f, a[t].d[b], hsum_epi32(sum[t]) - 32 * offset, 0);
        }
    }
    for (int t = 0; t < nt; t++) out[t] = acc[t];
}

// Rows [r0, r1) of a Q4_K (12), Q5_K (13) or Q6_K (14) matrix against NT activation rows;
// out[t * ldy + (r - r0)].
BK_AVX2 static inline __attribute__((always_inline)) void kq_rows_avx2(int type, const uint8_t *w, size_t rb, int r0, int r1, int sblocks,
                                                                       const int nt, const kq_acts *a, float *y, size_t ldy) {
    for (int r = r0; r < r1; r++) {
        const uint8_t *p = w + (size_t)r * rb;
        if (nt == 1) prefetch_row_ahead(p, rb);
        float out[4];
        if (type == 14) q6k_row_avx2(p, sblocks, nt, a, out);
        else q45k_row_avx2(p, type == 13 ? 176 : 144, sblocks, nt, a, out);
        for (int t = 0; t < nt; t++) y[t * ldy + (size_t)(r - r0)] = out[t];
    }
}

BK_AVX2 static void matvec_qk_avx2(int type, const uint8_t *w, size_t rb, int r0, int r1, int sblocks, kq_acts a, float *y) {
    kq_rows_avx2(type, w, rb, r0, r1, sblocks, 1, &a, y, 0);
}

BK_AVX2 static void gemm_qk_avx2(int type, const uint8_t *w, size_t rb, int r0, int r1, int sblocks, int n,
                                 const int8_t *qs, const float *d, const int16_t *bsums, float *y, int ldy) {
    const size_t cols = (size_t)256 * sblocks;
    for (int r = r0; r < r1; r++) {   // one row at a time stays in cache across all tokens
        int t = 0;
        for (; t + 4 <= n; t += 4) {
            kq_acts a[4];
            for (int k = 0; k < 4; k++) a[k] = (kq_acts){ qs + (t + k) * cols, d + (size_t)(t + k) * sblocks, bsums + (size_t)(t + k) * 16 * sblocks };
            kq_rows_avx2(type, w, rb, r, r + 1, sblocks, 4, a, y + (size_t)t * ldy + (r - r0), (size_t)ldy);
        }
        for (; t < n; t++) {
            kq_acts a = { qs + t * cols, d + (size_t)t * sblocks, bsums + (size_t)t * 16 * sblocks };
            kq_rows_avx2(type, w, rb, r, r + 1, sblocks, 1, &a, y + (size_t)t * ldy + (r - r0), 0);
        }
    }
}


// bk_quantize_q8k with the same float steps as the portable path: bit-identical results.
BK_AVX2 static void quantize_q8k_avx2(const float *x, int n, int8_t *qs, float *d, int16_t *bsums) {
    const __m256 signmask = _mm256_set1_ps(-0.0f);
    for (int b = 0; b < n / 256; b++) {
        const float *v = x + 256 * b;
        int8_t *q = qs + 256 * b;
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < 256; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(signmask, _mm256_loadu_ps(v + j)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        if (amax == 0) {
            d[b] = 0;
            memset(q, 0, 256);
            memset(bsums + 16 * b, 0, 16 * sizeof(int16_t));
            continue;
        }
        float peak = 0;   // the first value of largest magnitude
        const __m256 target = _mm256_set1_ps(amax);
        for (int j = 0; j < 256; j += 8) {
            int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(signmask, _mm256_loadu_ps(v + j)), target, _CMP_EQ_OQ));
            if (hit) { peak = v[j + __builtin_ctz((unsigned)hit)]; break; }
        }
        const float iscale = -127.0f / peak;
        const __m256 iv = _mm256_set1_ps(iscale);
        const __m256i top = _mm256_set1_epi32(127);
        for (int g = 0; g < 16; g++) {
            __m256i i0 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(v + 16 * g), iv), BK_ROUND_MODE)), top);
            __m256i i1 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(v + 16 * g + 8), iv), BK_ROUND_MODE)), top);
            bsums[16 * b + g] = (int16_t)hsum_epi32(_mm256_add_epi32(i0, i1));
            __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(i0), _mm256_extracti128_si256(i0, 1));
            __m128i p16b = _mm_packs_epi32(_mm256_castsi256_si128(i1), _mm256_extracti128_si256(i1, 1));
            _mm_storeu_si128((__m128i *)(q + 16 * g), _mm_packs_epi16(p16, p16b));
        }
        d[b] = 1.0f / iscale;
    }
}

BK_AVX2 static float dot_f32_avx2(const float *x, const float *y, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
    }
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

// One F16 (or BF16) weight row · fp32 activations, in fp32: the weights widen exactly, so
// only the summation order differs from the scalar reference.
BK_AVX2 static float dot_f16_avx2(const uint8_t *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * i)));
        __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * i + 16)));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < n; i++) s += _cvtsh_ss(load_u16(w + 2 * i)) * x[i];
    return s;
}

BK_AVX2 static float dot_bf16_avx2(const uint8_t *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i r0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + 2 * i)));
        __m256i r1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + 2 * i + 16)));
        a0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(r0, 16)), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(r1, 16)), _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < n; i++) { uint32_t b = (uint32_t)load_u16(w + 2 * i) << 16; float f; memcpy(&f, &b, 4); s += f * x[i]; }
    return s;
}

BK_AVX2 static void axpy_f32_avx2(float a, const float *x, float *y, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

BK_AVX2 static void dequant_q4_1_avx2(const uint8_t *p, float *dst, int count) {
    for (int b = 0; b < count / 32; b++, p += 20) {
        __m256 dv = _mm256_set1_ps(h2f_avx(p)), mv = _mm256_set1_ps(h2f_avx(p + 2));
        __m128i raw = _mm_loadu_si128((const __m128i *)(p + 4));
        __m128i lo = _mm_and_si128(raw, _mm_set1_epi8(0x0f));
        __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f));
        float *o = dst + 32 * b;
        _mm256_storeu_ps(o, _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), mv));
        _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), mv));
        _mm256_storeu_ps(o + 16, _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), mv));
        _mm256_storeu_ps(o + 24, _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), mv));
    }
}

BK_AVX2 static void round_to_half_avx2(float *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), 0)));
    for (; i < n; i++) x[i] = _cvtsh_ss(_cvtss_sh(x[i], 0));
}
#endif

// ---------------------------------------------------------------- public entry points

void bk_quantize_q8(const float *x, int n, int8_t *qs, float *d, int32_t *sums, float *ds) {
    init_half_table();
#if BK_X86
    if (bk_has_avx2()) { quantize_q8_avx2(x, n, qs, d, sums, ds); return; }
#endif
    quantize_q8_portable(x, n, qs, d, sums, ds);
}

void bk_matvec_q(int type, const void *w, size_t rb, int r0, int r1, int cols,
                 const int8_t *qs, const float *d, const int32_t *sums, const float *ds, float *y) {
    init_half_table();
    const uint8_t *base = (const uint8_t *)w;
    int blocks = cols / 32;
#if BK_X86
    if (bk_has_avx2()) {
        switch (type) {
        case 3: matvec_q_1_avx2(base, rb, 20, r0, r1, blocks, qs, d, ds, y); return;
        case 7: matvec_q_1_avx2(base, rb, 24, r0, r1, blocks, qs, d, ds, y); return;
        case 2: matvec_q_0_avx2(base, rb, 18, r0, r1, blocks, qs, d, y); return;
        case 6: matvec_q_0_avx2(base, rb, 22, r0, r1, blocks, qs, d, y); return;
        case 8: matvec_q_0_avx2(base, rb, 34, r0, r1, blocks, qs, d, y); return;
        }
    }
#endif
    for (int r = r0; r < r1; r++) {
        const uint8_t *p = base + (size_t)r * rb;
        switch (type) {
        case 3: y[r - r0] = dot_q4_1_portable(p, qs, d, ds, blocks); break;
        case 2: y[r - r0] = dot_q4_0_portable(p, qs, d, sums, blocks); break;
        case 8: y[r - r0] = dot_q8_0_portable(p, qs, d, blocks); break;
        case 6: y[r - r0] = dot_q5_0_portable(p, qs, d, blocks); break;
        case 7: y[r - r0] = dot_q5_1_portable(p, qs, d, ds, blocks); break;
        default: y[r - r0] = NAN; break;
        }
    }
}

void bk_gemm_q(int type, const void *w, size_t rb, int r0, int r1, int cols,
               int n, const int8_t *qs, const float *d, const int32_t *sums, const float *ds, float *y, int ldy) {
    init_half_table();
    const int blocks = cols / 32;
#if BK_X86
    if (bk_has_avx2()) {
        if (type == 2 || type == 6 || type == 8) {
            const int bytes = type == 2 ? 18 : type == 6 ? 22 : 34;
            if (64 * blocks > BK_UNPACK_BYTES) gemm_q_0_avx2((const uint8_t *)w, rb, bytes, r0, r1, blocks, n, qs, d, y, ldy);
            else if (bk_has_vnni()) gemm_q_0_unpacked_vnni((const uint8_t *)w, rb, bytes, r0, r1, blocks, n, qs, d, y, ldy);
            else gemm_q_0_unpacked_avx2((const uint8_t *)w, rb, bytes, r0, r1, blocks, n, qs, d, y, ldy);
            return;
        }
        if (type == 3 || type == 7) {
            const int bytes = type == 3 ? 20 : 24;
            if (32 * blocks > BK_UNPACK_BYTES) gemm_q_1_avx2((const uint8_t *)w, rb, bytes, r0, r1, blocks, n, qs, d, ds, y, ldy);
            else if (bk_has_vnni()) gemm_q_1_unpacked_vnni((const uint8_t *)w, rb, bytes, r0, r1, blocks, n, qs, d, ds, y, ldy);
            else gemm_q_1_unpacked_avx2((const uint8_t *)w, rb, bytes, r0, r1, blocks, n, qs, d, ds, y, ldy);
            return;
        }
    }
#endif
    // Other types and the portable path: one matvec per token over the row range
    // (identical arithmetic by construction).
    for (int t = 0; t < n; t++)
        bk_matvec_q(type, w, rb, r0, r1, cols, qs + (size_t)t * cols, d + (size_t)t * blocks, sums + (size_t)t * blocks,
                    ds + (size_t)t * blocks, y + (size_t)t * ldy);
}

void bk_quantize_q8k(const float *x, int n, int8_t *qs, float *d, int16_t *bsums) {
#if BK_X86
    if (bk_has_avx2()) { quantize_q8k_avx2(x, n, qs, d, bsums); return; }
#endif
    quantize_q8k_portable(x, n, qs, d, bsums);
}

void bk_matvec_qk(int type, const void *w, size_t rb, int r0, int r1, int cols,
                  const int8_t *qs, const float *d, const int16_t *bsums, float *y) {
    init_half_table();
    const uint8_t *base = (const uint8_t *)w;
    const int sblocks = cols / 256;
#if BK_X86
    if (bk_has_avx2()) {
        if (type >= 12 && type <= 14) { matvec_qk_avx2(type, base, rb, r0, r1, sblocks, (kq_acts){ qs, d, bsums }, y); return; }
    }
#endif
    for (int r = r0; r < r1; r++) {
        const uint8_t *p = base + (size_t)r * rb;
        switch (type) {
        case 12: y[r - r0] = dot_q45k_portable(p, 144, qs, d, bsums, sblocks); break;
        case 13: y[r - r0] = dot_q45k_portable(p, 176, qs, d, bsums, sblocks); break;
        case 14: y[r - r0] = dot_q6k_portable(p, qs, d, sblocks); break;
        default: y[r - r0] = NAN; break;
        }
    }
}

void bk_gemm_qk(int type, const void *w, size_t rb, int r0, int r1, int cols,
                int n, const int8_t *qs, const float *d, const int16_t *bsums, float *y, int ldy) {
    const int sblocks = cols / 256;
#if BK_X86
    if (bk_has_avx2() && type >= 12 && type <= 14) {
        init_half_table();
        gemm_qk_avx2(type, (const uint8_t *)w, rb, r0, r1, sblocks, n, qs, d, bsums, y, ldy);
        return;
    }
#endif
    for (int t = 0; t < n; t++)
        bk_matvec_qk(type, w, rb, r0, r1, cols, qs + (size_t)t * cols, d + (size_t)t * sblocks, bsums + (size_t)t * 16 * sblocks,
                     y + (size_t)t * ldy);
}

int bk_dequantize_row(int type, const void *src, float *dst, int count) {
    init_half_table();
    const uint8_t *p = (const uint8_t *)src;
    switch (type) {
    case 0: memcpy(dst, src, (size_t)count * 4); return 1;
    case 1: for (int i = 0; i < count; i++) dst[i] = h2f(load_u16(p + 2 * i)); return 1;
    case 30:
        for (int i = 0; i < count; i++) { uint32_t b = (uint32_t)load_u16(p + 2 * i) << 16; memcpy(dst + i, &b, 4); }
        return 1;
    case 3:
#if BK_X86
        if (bk_has_avx2()) { dequant_q4_1_avx2(p, dst, count); return 1; }
#endif
        for (int b = 0; b < count / 32; b++, p += 20) {
            float dd = h2f(load_u16(p)), m = h2f(load_u16(p + 2));
            for (int j = 0; j < 16; j++) {
                dst[32 * b + j] = dd * (float)(p[4 + j] & 0x0f) + m;
                dst[32 * b + j + 16] = dd * (float)(p[4 + j] >> 4) + m;
            }
        }
        return 1;
    case 2:
        for (int b = 0; b < count / 32; b++, p += 18) {
            float dd = h2f(load_u16(p));
            for (int j = 0; j < 16; j++) {
                dst[32 * b + j] = dd * (float)((p[2 + j] & 0x0f) - 8);
                dst[32 * b + j + 16] = dd * (float)((p[2 + j] >> 4) - 8);
            }
        }
        return 1;
    case 6:
        for (int b = 0; b < count / 32; b++, p += 22) {
            float dd = h2f(load_u16(p));
            uint32_t qh = load_u32(p + 2);
            for (int k = 0; k < 32; k++) dst[32 * b + k] = dd * (float)(q5_at(p + 2, qh, k) - 16);
        }
        return 1;
    case 7:
        for (int b = 0; b < count / 32; b++, p += 24) {
            float dd = h2f(load_u16(p)), m = h2f(load_u16(p + 2));
            uint32_t qh = load_u32(p + 4);
            for (int k = 0; k < 32; k++) dst[32 * b + k] = dd * (float)q5_at(p + 4, qh, k) + m;
        }
        return 1;
    case 8:
        for (int b = 0; b < count / 32; b++, p += 34) {
            float dd = h2f(load_u16(p));
            for (int j = 0; j < 32; j++) dst[32 * b + j] = dd * (float)(int8_t)p[2 + j];
        }
        return 1;
    default: return 0;
    }
}

float bk_dot_f32(const float *x, const float *y, int n) {
#if BK_X86
    if (bk_has_avx2()) return dot_f32_avx2(x, y, n);
#endif
    float s = 0;
    for (int i = 0; i < n; i++) s += x[i] * y[i];
    return s;
}

void bk_matvec_half(int type, const void *w, size_t rb, int r0, int r1, int cols, const float *x, float *y) {
    init_half_table();
    for (int r = r0; r < r1; r++) {
        const uint8_t *p = (const uint8_t *)w + (size_t)r * rb;
        float s = 0;
#if BK_X86
        if (bk_has_avx2()) { prefetch_row_ahead(p, rb); y[r - r0] = type == 1 ? dot_f16_avx2(p, x, cols) : dot_bf16_avx2(p, x, cols); continue; }
#endif
        if (type == 1) {
            for (int i = 0; i < cols; i++) s += h2f(load_u16(p + 2 * i)) * x[i];
        } else {
            for (int i = 0; i < cols; i++) { uint32_t b = (uint32_t)load_u16(p + 2 * i) << 16; float f; memcpy(&f, &b, 4); s += f * x[i]; }
        }
        y[r - r0] = s;
    }
}

void bk_axpy_f32(float a, const float *x, float *y, int n) {
#if BK_X86
    if (bk_has_avx2()) { axpy_f32_avx2(a, x, y, n); return; }
#endif
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void bk_round_to_half(float *x, int n) {
    init_half_table();
#if BK_X86
    if (bk_has_avx2()) { round_to_half_avx2(x, n); return; }
#endif
    for (int i = 0; i < n; i++) x[i] = h2f(bk_float_to_half(x[i]));
}

#if BK_X86
// exp for eight floats: range reduction x = n·ln2 + r and a degree-5 polynomial for e^r
// (Cephes' coefficients); relative error about 1e-7 over the range softmax uses (x <= 0).
BK_AVX2 static inline __m256 exp_avx2(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-87.3365447504f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// The same three passes with the dot products and the weighted sum inlined (hd % 8 == 0).
BK_AVX2 static void attend_avx2(const float *q, const float *keys, const float *values, size_t stride, const uint8_t *present,
                                int n, int hd, float scale, int half_weights, float *scores, float *out) {
    float maxs = -INFINITY;
    int t = 0;
    // Four positions at a time: independent FMA chains instead of one latency-bound chain.
    for (; t + 4 <= n; t += 4) {
        const float *k0 = keys + (size_t)t * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
        for (int i = 0; i < hd; i += 8) {
            __m256 qv = _mm256_loadu_ps(q + i);
            c0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), c0);
            c1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), c1);
            c2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), c2);
            c3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), c3);
        }
        float s4[4] = { hsum256(c0) * scale, hsum256(c1) * scale, hsum256(c2) * scale, hsum256(c3) * scale };
        for (int j = 0; j < 4; j++) {
            if (present && !present[t + j]) { scores[t + j] = -INFINITY; continue; }
            scores[t + j] = s4[j];
            if (s4[j] > maxs) maxs = s4[j];
        }
    }
    for (; t < n; t++) {
        if (present && !present[t]) { scores[t] = -INFINITY; continue; }
        const float *k = keys + (size_t)t * stride;
        __m256 acc = _mm256_setzero_ps();
        for (int i = 0; i < hd; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), acc);
        float s = hsum256(acc) * scale;
        scores[t] = s;
        if (s > maxs) maxs = s;
    }
    // exp(s - max) eight at a time; left-out positions (-inf) get exactly 0.
    const __m256 vmax = _mm256_set1_ps(maxs), ninf = _mm256_set1_ps(-INFINITY);
    __m256 vsum = _mm256_setzero_ps();
    t = 0;
    for (; t + 8 <= n; t += 8) {
        __m256 sc = _mm256_loadu_ps(scores + t);
        __m256 e = _mm256_andnot_ps(_mm256_cmp_ps(sc, ninf, _CMP_EQ_OQ), exp_avx2(_mm256_sub_ps(sc, vmax)));
        _mm256_storeu_ps(scores + t, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum256(vsum);
    for (; t < n; t++) {
        float e = scores[t] == -INFINITY ? 0.0f : expf(scores[t] - maxs);
        scores[t] = e;
        sum += e;
    }
    memset(out, 0, (size_t)hd * sizeof(float));
    if (!(sum > 0)) return;
    float inv = 1.0f / sum;
    for (int t = 0; t < n; t++) scores[t] *= inv;
    if (half_weights) round_to_half_avx2(scores, n);
    // Positions with zero weight are skipped, not multiplied: a masked position's V may be
    // stale or uninitialised, and 0 × NaN would poison the sum.
    if (hd % 64 == 0) {
        // 64 output lanes at a time live in eight registers across the whole sum.
        for (int i0 = 0; i0 < hd; i0 += 64) {
            __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0;
            for (int u = 0; u < n; u++) {
                if (scores[u] == 0) continue;
                const __m256 w = _mm256_set1_ps(scores[u]);
                const float *v = values + (size_t)u * stride + i0;
                o0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v), o0);       o1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8), o1);
                o2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 16), o2);  o3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 24), o3);
                o4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 32), o4);  o5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 40), o5);
                o6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 48), o6);  o7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 56), o7);
            }
            _mm256_storeu_ps(out + i0, o0);      _mm256_storeu_ps(out + i0 + 8, o1);
            _mm256_storeu_ps(out + i0 + 16, o2); _mm256_storeu_ps(out + i0 + 24, o3);
            _mm256_storeu_ps(out + i0 + 32, o4); _mm256_storeu_ps(out + i0 + 40, o5);
            _mm256_storeu_ps(out + i0 + 48, o6); _mm256_storeu_ps(out + i0 + 56, o7);
        }
        return;
    }
    for (int u = 0; u < n; u++) {
        if (scores[u] == 0) continue;
        const __m256 w = _mm256_set1_ps(scores[u]);
        const float *v = values + (size_t)u * stride;
        for (int i = 0; i < hd; i += 8) _mm256_storeu_ps(out + i, _mm256_fmadd_ps(w, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
    }
}
#endif

#if BK_X86
// bk_entropy eight logits at a time: exp_avx2 in float, the two sums in double lanes (the
// vocabulary has ~50k terms, too many for float sums to keep 1e-6).
BK_AVX2 static double entropy_avx2(const float *x, int n) {
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    float m = -INFINITY;
    for (int j = 0; j < 8; j++) if (lanes[j] > m) m = lanes[j];
    for (; i < n; i++) if (x[i] > m) m = x[i];
    const __m256 vm = _mm256_set1_ps(m);
    __m256d z0 = _mm256_setzero_pd(), z1 = z0, w0 = z0, w1 = z0;
    i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
        __m256 e = exp_avx2(d), ed = _mm256_mul_ps(e, d);
        z0 = _mm256_add_pd(z0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        z1 = _mm256_add_pd(z1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
        w0 = _mm256_add_pd(w0, _mm256_cvtps_pd(_mm256_castps256_ps128(ed)));
        w1 = _mm256_add_pd(w1, _mm256_cvtps_pd(_mm256_extractf128_ps(ed, 1)));
    }
    double zs[4], ws[4];
    _mm256_storeu_pd(zs, _mm256_add_pd(z0, z1));
    _mm256_storeu_pd(ws, _mm256_add_pd(w0, w1));
    double z = zs[0] + zs[1] + zs[2] + zs[3], w = ws[0] + ws[1] + ws[2] + ws[3];
    for (; i < n; i++) { double d = (double)(x[i] - m), e = exp(d); z += e; w += e * d; }
    return log(z) - w / z;
}
#endif

double bk_entropy_ref(const float *x, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++) if (x[i] > m) m = x[i];
    double z = 0, w = 0;
    for (int i = 0; i < n; i++) { double d = (double)(x[i] - m), e = exp(d); z += e; w += e * d; }
    return log(z) - w / z;
}

double bk_entropy(const float *x, int n) {
#if BK_X86
    if (bk_has_avx2()) return entropy_avx2(x, n);
#endif
    return bk_entropy_ref(x, n);
}

void bk_attend(const float *q, const float *keys, const float *values, size_t stride, const uint8_t *present,
               int n, int hd, float scale, int half_weights, float *scores, float *out) {
#if BK_X86
    if (bk_has_avx2() && hd % 8 == 0) { attend_avx2(q, keys, values, stride, present, n, hd, scale, half_weights, scores, out); return; }
#endif
    float maxs = -INFINITY;
    for (int t = 0; t < n; t++) {
        if (present && !present[t]) { scores[t] = -INFINITY; continue; }
        float s = bk_dot_f32(q, keys + (size_t)t * stride, hd) * scale;
        scores[t] = s;
        if (s > maxs) maxs = s;
    }
    float sum = 0;
    for (int t = 0; t < n; t++) {
        float e = scores[t] == -INFINITY ? 0.0f : expf(scores[t] - maxs);
        scores[t] = e;
        sum += e;
    }
    memset(out, 0, (size_t)hd * sizeof(float));
    if (!(sum > 0)) return;
    float inv = 1.0f / sum;
    for (int t = 0; t < n; t++) scores[t] *= inv;
    if (half_weights) bk_round_to_half(scores, n);
    for (int t = 0; t < n; t++)
        if (scores[t] != 0) bk_axpy_f32(scores[t], values + (size_t)t * stride, out, hd);
}

// ---------------------------------------------------------------------------------------------
// The screened output head (BuddyCore/Model/ScreenedHead.swift): a 4-bit copy of the head laid
// out for this one product. Rows come in groups of 8 and columns in pairs of 32-column blocks;
// per group and pair, BK_SCREEN_PAIR_BYTES bytes: 16 half scales (the group's 8 rows for the
// pair's first block, then for its second), then per row 32 bytes whose low nibbles are the
// first block's columns and high nibbles the second's; a weight is scale · (nibble − 8).
// Per row, in block order: acc = fma(scale · d_a, (float)Σ (nibble − 8)·a, acc); the integer
// sum is Σ nibble·a − 8·Σ a (exact), so the vector path, the portable path and the Swift twin
// agree bit for bit. A group's 8 rows share each activation load, and one reduction turns the
// 8 rows' lane sums into 8 row sums: about half the instructions per weight of the Q4_0
// matvec, which on AVX2 is bound by instructions rather than by memory.
#define BK_SCREEN_PAIR_BYTES 288

static void screen_q4_portable(const uint8_t *w, int g0, int g1, int pairs, const int8_t *qs, const float *d,
                               const int32_t *sums, float *y) {
    for (int g = g0; g < g1; g++) {
        const uint8_t *group = w + (size_t)g * pairs * BK_SCREEN_PAIR_BYTES;
        for (int j = 0; j < 8; j++) {
            float acc = 0;
            for (int q = 0; q < pairs; q++) {
                const uint8_t *p = group + (size_t)q * BK_SCREEN_PAIR_BYTES;
                for (int half = 0; half < 2; half++) {
                    int b = 2 * q + half;
                    int32_t isum = 0;
                    for (int c = 0; c < 32; c++) {
                        uint8_t byte = p[32 + 32 * j + c];
                        isum += (int32_t)(half ? byte >> 4 : byte & 15) * qs[32 * b + c];
                    }
                    isum -= 8 * sums[b];
                    float scale = h2f(load_u16(p + 2 * (8 * half + j)));
                    acc = fmaf(scale * d[b], (float)isum, acc);
                }
            }
            y[8 * (g - g0) + j] = acc;
        }
    }
}

#if BK_X86
// Eight vectors of 8 int32 lane sums → one vector of their 8 totals, in order.
BK_AVX2 static inline __m256i reduce8_epi32(const __m256i s[8]) {
    __m256i h01 = _mm256_hadd_epi32(s[0], s[1]), h23 = _mm256_hadd_epi32(s[2], s[3]);
    __m256i h45 = _mm256_hadd_epi32(s[4], s[5]), h67 = _mm256_hadd_epi32(s[6], s[7]);
    __m256i h0123 = _mm256_hadd_epi32(h01, h23), h4567 = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20), _mm256_permute2x128_si256(h0123, h4567, 0x31));
}

BK_AVX2 static void screen_q4_avx2(const uint8_t *w, int g0, int g1, int pairs, const int8_t *qs, const float *d,
                                   const int32_t *sums, float *y) {
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(15);
    for (int g = g0; g < g1; g++) {
        const uint8_t *p = w + (size_t)g * pairs * BK_SCREEN_PAIR_BYTES;
        __m256 acc = _mm256_setzero_ps();
        for (int q = 0; q < pairs; q++, p += BK_SCREEN_PAIR_BYTES) {
            for (int k = 0; k < BK_SCREEN_PAIR_BYTES; k += 64) __builtin_prefetch(p + BK_PREFETCH_AHEAD + k, 0, 3);
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)(qs + 64 * q));
            const __m256i a1 = _mm256_loadu_si256((const __m256i *)(qs + 64 * q + 32));
            __m256i s0[8], s1[8];
            for (int j = 0; j < 8; j++) {
                __m256i raw = _mm256_loadu_si256((const __m256i *)(p + 32 + 32 * j));
                __m256i n0 = _mm256_and_si256(raw, low), n1 = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                s0[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(n0, a0), ones);
                s1[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(n1, a1), ones);
            }
            __m256i r0 = _mm256_sub_epi32(reduce8_epi32(s0), _mm256_set1_epi32(8 * sums[2 * q]));
            __m256i r1 = _mm256_sub_epi32(reduce8_epi32(s1), _mm256_set1_epi32(8 * sums[2 * q + 1]));
            __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
            __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
            acc = _mm256_fmadd_ps(_mm256_mul_ps(w0, _mm256_set1_ps(d[2 * q])), _mm256_cvtepi32_ps(r0), acc);
            acc = _mm256_fmadd_ps(_mm256_mul_ps(w1, _mm256_set1_ps(d[2 * q + 1])), _mm256_cvtepi32_ps(r1), acc);
        }
        _mm256_storeu_ps(y + 8 * (g - g0), acc);
    }
}
#endif

void bk_screen_q4(const void *w, int g0, int g1, int cols, const int8_t *qs, const float *d, const int32_t *sums, float *y) {
    init_half_table();
    const uint8_t *base = (const uint8_t *)w;
#if BK_X86
    if (bk_has_avx2()) { screen_q4_avx2(base, g0, g1, cols / 64, qs, d, sums, y); return; }
#endif
    screen_q4_portable(base, g0, g1, cols / 64, qs, d, sums, y);
}

// The indices of the `count` largest of x[0..n) into top, in the order a min-heap over top
// leaves them (ties go to the lower index): the screened head's candidates. The Swift twin
// ScreenedHead.largest runs the same heap, so both give the same array.
static inline int top_below(const float *x, int32_t a, int32_t b) { return x[a] < x[b] || (x[a] == x[b] && a > b); }
static void top_sift(const float *x, int32_t *top, int count, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < count && top_below(x, top[l], top[m])) m = l;
        if (r < count && top_below(x, top[r], top[m])) m = r;
        if (m == i) return;
        int32_t t = top[i]; top[i] = top[m]; top[m] = t;
        i = m;
    }
}
void bk_top_rows(const float *x, int n, int count, int32_t *top) {
    for (int i = 0; i < count; i++) top[i] = i;
    for (int i = count / 2 - 1; i >= 0; i--) top_sift(x, top, count, i);
    float floor = x[top[0]];
    for (int i = count; i < n; i++) {
        if (x[i] < floor || !top_below(x, top[0], i)) continue;
        top[0] = i;
        top_sift(x, top, count, 0);
        floor = x[top[0]];
    }
}
