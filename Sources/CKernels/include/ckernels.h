// Hot inner loops of the engine, in C so they can use the CPU's vector instructions
// (AVX2/FMA/F16C on x86-64, chosen at run time; portable C elsewhere). Each has a scalar
// reference twin on the Swift side (BuddyCore/Kernels) that tests compare it against.
#ifndef BUDDY_CKERNELS_H
#define BUDDY_CKERNELS_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// 1 when the AVX2 paths are in use.
int bk_has_avx2(void);
/// Force the portable paths (tests use this to check both).
void bk_force_portable(int on);
/// 1 when AVX-512 VNNI kernels are used (x86 with avx512vl+avx512vnni, not forced off)
int bk_has_vnni(void);
/// tests: 1 = use the AVX2 kernels even where VNNI is available
void bk_force_no_vnni(int on);

/// Quantise x[0..n) (n % 32 == 0) to int8 blocks of 32: qs[n], d[n/32] (scale, rounded to
/// half precision like ggml's Q8 formats), sums[n/32] (integer sum of each block) and
/// ds[n/32] (unrounded scale × sum, rounded to half: the `s` of ggml's Q8_1, used by Q4_1).
void bk_quantize_q8(const float *x, int n, int8_t *qs, float *d, int32_t *sums, float *ds);

/// y[r - row_begin] = row r · activations for r in [row_begin, row_end).
/// type: 2 = Q4_0, 3 = Q4_1, 6 = Q5_0, 7 = Q5_1, 8 = Q8_0 (ggml numbering). cols % 32 == 0.
void bk_matvec_q(int type, const void *w, size_t row_bytes, int row_begin, int row_end, int cols,
                 const int8_t *qs, const float *d, const int32_t *sums, const float *ds, float *y);

/// The screened output head's product (BuddyCore ScreenedHead): y[8·(g − g0) + j] = row 8g + j of
/// the 4-bit screen copy · activations, for row groups g in [g0, g1); cols % 64 == 0. Layout and
/// arithmetic in kernels.c; the Swift twin is ScreenedHead.screenRef.
void bk_screen_q4(const void *w, int g0, int g1, int cols, const int8_t *qs, const float *d, const int32_t *sums, float *y);

/// The indices of the `count` largest of x[0..n) into top (a min-heap's order; ties to the lower
/// index). Twin: ScreenedHead.largest.
void bk_top_rows(const float *x, int n, int count, int32_t *top);

/// Matrix product for a batch of n activation rows, each quantised with bk_quantize_q8 and
/// stored with strides (qs: n × cols; d, sums and ds: n × cols/32):
///   y[t * ldy + (r - row_begin)] = row r · activation t   for r in [row_begin, row_end), t < n.
/// Each (row, token) dot is computed with exactly the arithmetic of bk_matvec_q, so a batched
/// prompt and a token-by-token decode give bit-identical projections.
void bk_gemm_q(int type, const void *w, size_t row_bytes, int row_begin, int row_end, int cols,
               int n, const int8_t *qs, const float *d, const int32_t *sums, const float *ds, float *y, int ldy);

/// Quantise x[0..n) (n % 256 == 0) to Q8_K super-blocks of 256 as llama.cpp pairs with its
/// K-quants: per super-block a float scale d[n/256] (the value of largest magnitude maps to
/// -127), int8 qs[n] (rounded to nearest even) and bsums[n/16], the sum of each run of 16.
void bk_quantize_q8k(const float *x, int n, int8_t *qs, float *d, int16_t *bsums);

/// y[r - row_begin] = row r · activations (quantised with bk_quantize_q8k) for r in
/// [row_begin, row_end). type: 12 = Q4_K, 13 = Q5_K, 14 = Q6_K. cols % 256 == 0.
/// Each super-block's integer sums are exact and combined in the same float order on every
/// path, so the AVX2 and portable paths give bit-identical results.
void bk_matvec_qk(int type, const void *w, size_t row_bytes, int row_begin, int row_end, int cols,
                  const int8_t *qs, const float *d, const int16_t *bsums, float *y);

/// bk_matvec_qk for n activation rows (qs: n × cols; d: n × cols/256; bsums: n × cols/16):
///   y[t * ldy + (r - row_begin)] = row r · activation t, with exactly bk_matvec_qk's arithmetic.
void bk_gemm_qk(int type, const void *w, size_t row_bytes, int row_begin, int row_end, int cols,
                int n, const int8_t *qs, const float *d, const int16_t *bsums, float *y, int ldy);

/// Dequantise `count` elements of one row of `type` (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 6 Q5_0, 7 Q5_1,
/// 8 Q8_0, 30 BF16).
/// Returns 0 for unsupported types.
int bk_dequantize_row(int type, const void *src, float *dst, int count);

/// Attention of one query head over positions 0..n-1 of one layer's cache:
///   s_t = q·k_t · scale (positions with present[t] == 0 are left out), p = softmax(s),
///   out = Σ p_t v_t; with half_weights, p is rounded to half precision first (as llama.cpp
///   multiplies its f16 V cache). keys/values point at position 0 of this KV head and advance
///   by `stride` floats per position. present may be NULL (all present). scores: scratch [n].
void bk_attend(const float *q, const float *keys, const float *values, size_t stride, const uint8_t *present,
               int n, int hd, float scale, int half_weights, float *scores, float *out);

/// The entropy of softmax(x) in nats, log z − Σ softmax(x)·(x − max) with z = Σ exp(x − max):
/// one max pass and one exp pass (AVX2: a polynomial exp in float, sums in double). _ref is the
/// scalar twin in double throughout.
double bk_entropy(const float *x, int n);
double bk_entropy_ref(const float *x, int n);

/// rows [r0, r1) of an F16 (type 1) or BF16 (type 30) matrix · fp32 x, into y[0 ..< r1-r0]
void bk_matvec_half(int type, const void *w, size_t rb, int r0, int r1, int cols, const float *x, float *y);
float bk_dot_f32(const float *x, const float *y, int n);
/// y += a * x
void bk_axpy_f32(float a, const float *x, float *y, int n);

float bk_half_to_float(uint16_t h);
uint16_t bk_float_to_half(float f);
/// Round each value to the nearest half-precision value (as an f16 KV cache stores it).
void bk_round_to_half(float *x, int n);

#ifdef __cplusplus
}
#endif
#endif
