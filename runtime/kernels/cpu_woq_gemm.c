/* bf16, int8 and int4 weight GEMMs on the CPU with AVX512-BF16 dot products: out = x @ dequantize(w).T, summed in
 * float32 and stored as float32 or rounded to bf16 (round to nearest even, as a cast would).
 *
 * x is bf16 [rows, k]. Weights are packed at load (cpu_woq.py) in blocks of 16 output channels, one lane each:
 *   bf16: [n / 16][k / 2][16][2] bf16 (for each pair of inputs, each channel's two weights): the pairs as the dot
 *         product reads them, so a block is used where it lies, with nothing to convert;
 *   int8: [n / 16][k / 2][2][16] int8 (for each pair of inputs, the 16 channels' first then second weight)
 *   int4: [n / 16][k / 2][16] bytes (low nibble: the pair's first weight, high nibble: its second), codes 0..15,
 *         with float16 scale and offset [n / 16][k / group][16]: w = code * scale + offset.
 * A block's weights are turned into bf16 pairs once (exact: |int8| <= 128 and 0..15 fit bf16's 8 bits) into a
 * scratch that every activation row then reads, so a block of weights is read from memory once per call, however
 * many rows there are. Each output is accumulated in one fixed order (`vdpbf16ps` over the input pairs, then the
 * scale), whatever the number of rows and wherever a row falls in a tile: a row's result does not depend on its
 * batch. Needs AVX512-BF16 (`woq_available`); without it the runtime keeps PyTorch's kernels. Built and loaded by
 * cpu_native.py.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#include "cpu_kernels.h"

#define LANES 16 /* output channels per block: one zmm of float32 */
#define TILE 4   /* activation rows per pass over a block's scratch */
#define CHAINS 4 /* accumulators per row, each over every CHAINS-th input pair (the sum of four, in one order) */

#define AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

int woq_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
}

/* a + b, as a builtin that -ffast-math may not reassociate: every path sums the chains in the same order */
#define ADD(a, b) _mm512_add_round_ps((a), (b), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define PAIR(x, j) ((__m512bh)_mm512_set1_epi32(*(const int32_t *)((x) + 2 * (j))))

/* Two planes of 16 int8 (the pair's first and second weight per lane) -> 16 bf16 pairs */
AVX512_BF16 static inline __m512i int8_pairs(const int8_t *p) {
    __m512i lo = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))));
    __m512i hi = _mm512_castps_si512(
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + LANES)))));
    /* bf16 = the top half of float32, exact here: (hi & 0xffff0000) | (lo >> 16) */
    return _mm512_ternarylogic_epi32(hi, _mm512_srli_epi32(lo, 16), _mm512_set1_epi32((int)0xffff0000u), 0xEC);
}

/* 16 bytes of two nibbles per lane -> 16 bf16 pairs (codes 0..15 as bf16: a table lookup) */
AVX512_BF16 static inline __m512i int4_pairs(const uint8_t *p, __m512i table) {
    __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    __m512i idx = _mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi32(0xf)),
                                  _mm512_slli_epi32(_mm512_srli_epi32(b, 4), 16));
    return _mm512_permutexvar_epi16(idx, table);
}

/* Where a row's weight pairs come from: a block's scratch (converted once for many rows), or, for a single row,
 * the packed int8 or int4 weights converted on the way (one row reads them once anyway) */
typedef struct {
    const __m512i *scratch;
    const int8_t *int8;
    const uint8_t *int4;
    __m512i table;
} Pairs;

AVX512_BF16 static inline __m512bh pair_at(const Pairs *p, int64_t j) {
    if (p->scratch) return (__m512bh)_mm512_loadu_si512(p->scratch + j);
    if (p->int8) return (__m512bh)int8_pairs(p->int8 + j * 2 * LANES);
    return (__m512bh)int4_pairs(p->int4 + j * LANES, p->table);
}

/* x . w over pairs first..last for one row: CHAINS accumulators (each every CHAINS-th pair, hiding the dot
 * product's latency), summed in one order, wherever the pairs come from */
AVX512_BF16 static inline __m512 dot_row(const uint16_t *x, const Pairs *pairs, int64_t first, int64_t last) {
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    for (int64_t j = first; j < last; j += CHAINS) {
        c0 = _mm512_dpbf16_ps(c0, PAIR(x, j), pair_at(pairs, j));
        c1 = _mm512_dpbf16_ps(c1, PAIR(x, j + 1), pair_at(pairs, j + 1));
        c2 = _mm512_dpbf16_ps(c2, PAIR(x, j + 2), pair_at(pairs, j + 2));
        c3 = _mm512_dpbf16_ps(c3, PAIR(x, j + 3), pair_at(pairs, j + 3));
    }
    return ADD(ADD(c0, c1), ADD(c2, c3));
}

/* dot_row for TILE rows (k apart) at once, each weight pair loaded once: the same sums, bit for bit */
AVX512_BF16 static inline void dot_tile(const uint16_t *x, int64_t k, const __m512i *pairs, int64_t first,
                                        int64_t last, __m512 out[TILE]) {
    __m512 c[TILE][CHAINS];
#pragma GCC unroll 4
    for (int t = 0; t < TILE; t++)
#pragma GCC unroll 4
        for (int i = 0; i < CHAINS; i++) c[t][i] = _mm512_setzero_ps();
    for (int64_t j = first; j < last; j += CHAINS)
#pragma GCC unroll 4
        for (int i = 0; i < CHAINS; i++) {
            __m512bh w = (__m512bh)_mm512_loadu_si512(pairs + j + i);
#pragma GCC unroll 4
            for (int t = 0; t < TILE; t++) c[t][i] = _mm512_dpbf16_ps(c[t][i], PAIR(x + t * k, j + i), w);
        }
#pragma GCC unroll 4
    for (int t = 0; t < TILE; t++) out[t] = ADD(ADD(c[t][0], c[t][1]), ADD(c[t][2], c[t][3]));
}

/* One call's operands (int8: w int8, scale float32; int4: w bytes, scale/offset float16, xsum per row and group) */
typedef struct {
    const uint16_t *x;
    const void *w, *scale, *offset;
    const float *xsum;
    void *out;
    int64_t rows, n, k, group;
    int out_bf16; /* store bf16 (rounded once) instead of float32: the layer's output dtype, without a cast after */
} Gemm;

/* the 16 outputs of `block` in `row` */
AVX512_BF16 static inline void store(const Gemm *gemm, int64_t row, int64_t block, __m512 v) {
    int64_t at = row * gemm->n + block * LANES;
    if (gemm->out_bf16)
        _mm256_storeu_si256((__m256i *)((uint16_t *)gemm->out + at), (__m256i)_mm512_cvtneps_pbh(v));
    else
        _mm512_storeu_ps((float *)gemm->out + at, v);
}

/* bf16 weights are their own pairs: every row reads the block in place (the same sums as the other paths) */
AVX512_BF16 static void bf16_block(const Gemm *gemm, int64_t block, __m512i *scratch) {
    (void)scratch;
    const uint16_t *x = gemm->x;
    const int64_t rows = gemm->rows, n = gemm->n, k = gemm->k;
    const __m512i *wb = (const __m512i *)gemm->w + block * (k / 2);
    Pairs pairs = {wb, NULL, NULL, _mm512_setzero_si512()};
    int64_t m = 0;
    for (; m + TILE <= rows; m += TILE) {
        __m512 dots[TILE];
        dot_tile(x + m * k, k, wb, 0, k / 2, dots);
#pragma GCC unroll 4
        for (int t = 0; t < TILE; t++) store(gemm, m + t, block, dots[t]);
    }
    for (; m < rows; m++) store(gemm, m, block, dot_row(x + m * k, &pairs, 0, k / 2));
}

AVX512_BF16 static void int8_block(const Gemm *gemm, int64_t block, __m512i *scratch) {
    const uint16_t *x = gemm->x;
    const float *scale = gemm->scale;
    const int64_t rows = gemm->rows, n = gemm->n, k = gemm->k;
    const int8_t *wb = (const int8_t *)gemm->w + block * (k / 2) * 2 * LANES;
    __m512 s = _mm512_loadu_ps(scale + block * LANES);
    Pairs pairs = {NULL, wb, NULL, _mm512_setzero_si512()};
    int64_t m = 0;
    if (rows > 1) {
        for (int64_t j = 0; j < k / 2; j++) scratch[j] = int8_pairs(wb + j * 2 * LANES);
        pairs = (Pairs){scratch, NULL, NULL, _mm512_setzero_si512()};
        for (; m + TILE <= rows; m += TILE) {
            __m512 dots[TILE];
            dot_tile(x + m * k, k, scratch, 0, k / 2, dots);
#pragma GCC unroll 4
            for (int t = 0; t < TILE; t++)
                store(gemm, m + t, block, _mm512_mul_ps(dots[t], s));
        }
    }
    for (; m < rows; m++)
        store(gemm, m, block, _mm512_mul_ps(dot_row(x + m * k, &pairs, 0, k / 2), s));
}

/* 16 float16 -> float32 */
AVX512_BF16 static inline __m512 halves(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* one row's group g: acc + (x . codes) * scale + sum(x over the group) * offset */
AVX512_BF16 static inline __m512 int4_group(__m512 acc, __m512 dot, float xsum, __m512 s, __m512 o) {
    return _mm512_fmadd_ps(_mm512_set1_ps(xsum), o, _mm512_fmadd_ps(dot, s, acc));
}

AVX512_BF16 static void int4_block(const Gemm *gemm, int64_t block, __m512i *scratch) {
    const uint16_t *x = gemm->x, *scale = gemm->scale, *offset = gemm->offset;
    const float *xsum = gemm->xsum;
    const int64_t rows = gemm->rows, n = gemm->n, k = gemm->k, group = gemm->group;
    const int64_t groups = k / group, half = group / 2;
    /* bf16 bits of 0..15, in the low 16 words of the table */
    __m512i table = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x4170, 0x4160, 0x4150, 0x4140,
                                     0x4130, 0x4120, 0x4110, 0x4100, 0x40e0, 0x40c0, 0x40a0, 0x4080, 0x4040, 0x4000,
                                     0x3f80, 0x0000);
    const uint8_t *wb = (const uint8_t *)gemm->w + block * (k / 2) * LANES;
    const uint16_t *sb = scale + block * groups * LANES, *ob = offset + block * groups * LANES;
    Pairs pairs = {NULL, NULL, wb, table};
    int64_t m = 0;
    if (rows > 1) {
        for (int64_t j = 0; j < k / 2; j++) scratch[j] = int4_pairs(wb + j * LANES, table);
        pairs = (Pairs){scratch, NULL, NULL, table};
        for (; m + TILE <= rows; m += TILE) {
            __m512 acc[TILE];
#pragma GCC unroll 4
            for (int t = 0; t < TILE; t++) acc[t] = _mm512_setzero_ps();
            for (int64_t g = 0; g < groups; g++) {
                __m512 dots[TILE], s = halves(sb + g * LANES), o = halves(ob + g * LANES);
                dot_tile(x + m * k, k, scratch, g * half, (g + 1) * half, dots);
#pragma GCC unroll 4
                for (int t = 0; t < TILE; t++) acc[t] = int4_group(acc[t], dots[t], xsum[(m + t) * groups + g], s, o);
            }
#pragma GCC unroll 4
            for (int t = 0; t < TILE; t++) store(gemm, m + t, block, acc[t]);
        }
    }
    for (; m < rows; m++) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t g = 0; g < groups; g++)
            acc = int4_group(acc, dot_row(x + m * k, &pairs, g * half, (g + 1) * half), xsum[m * groups + g],
                             halves(sb + g * LANES), halves(ob + g * LANES));
        store(gemm, m, block, acc);
    }
}

static int check(int64_t rows, int64_t n, int64_t k) {
    return rows < 0 || n % LANES || k <= 0 || k % (2 * CHAINS) ? -1 : 0;
}

/* Every block of 16 channels, on the intra-op threads, each thread with its own scratch of k / 2 pairs when the
 * weights need converting (and more than one row will read them) */
static int run_blocks(const Gemm *gemm, void (*block_fn)(const Gemm *, int64_t, __m512i *), int scratch,
                      int num_threads) {
    int failed = 0;
#pragma omp parallel num_threads(num_threads) reduction(| : failed)
    {
        __m512i *pairs = scratch ? aligned_alloc(64, sizeof(__m512i) * (size_t)(gemm->k / 2)) : NULL;
        if (scratch && !pairs) failed = 1;
#pragma omp for schedule(static)
        for (int64_t block = 0; block < gemm->n / LANES; block++)
            if (pairs || !scratch) block_fn(gemm, block, pairs);
        free(pairs);
    }
    return failed ? -1 : 0;
}

/* Returns 0, or -1 on a refused shape, a CPU without AVX512-BF16 or a failed allocation. */
int bf16_gemm(const uint16_t *x, const uint16_t *w, void *out, int out_bf16, int64_t rows, int64_t n, int64_t k,
              int num_threads) {
    if (check(rows, n, k) || !woq_available()) return -1;
    Gemm gemm = {x, w, NULL, NULL, NULL, out, rows, n, k, 0, out_bf16};
    return run_blocks(&gemm, bf16_block, 0, num_threads);
}

int int8_gemm(const uint16_t *x, const int8_t *w, const float *scale, void *out, int out_bf16, int64_t rows, int64_t n,
              int64_t k, int num_threads) {
    if (check(rows, n, k) || !woq_available()) return -1;
    Gemm gemm = {x, w, scale, NULL, NULL, out, rows, n, k, 0, out_bf16};
    return run_blocks(&gemm, int8_block, rows > 1, num_threads);
}

int int4_gemm(const uint16_t *x, const uint8_t *w, const uint16_t *scale, const uint16_t *offset, void *out,
              int out_bf16, int64_t rows, int64_t n, int64_t k, int64_t group, int num_threads) {
    if (check(rows, n, k) || group <= 0 || group % (2 * CHAINS) || k % group || !woq_available()) return -1;
    const int64_t groups = k / group;
    float *xsum = malloc(sizeof(float) * (size_t)(rows * groups > 0 ? rows * groups : 1));
    if (!xsum) return -1;
    for (int64_t i = 0; i < rows * groups; i++) { /* each row's sum over each group of inputs: the offsets' term */
        float sum = 0.0f;
        for (int64_t d = 0; d < group; d++) sum += from_bf16(x[i * group + d]);
        xsum[i] = sum;
    }
    Gemm gemm = {x, w, scale, offset, xsum, out, rows, n, k, group, out_bf16};
    int status = run_blocks(&gemm, int4_block, rows > 1, num_threads);
    free(xsum);
    return status;
}
