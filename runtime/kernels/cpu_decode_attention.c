/* Decode attention over the paged KV cache on the CPU, reading each sequence's blocks in place.
 *
 * One query row per sequence (a decode). Cache, per layer: [num_blocks, block_size, num_kv_heads, head_dim] in
 * float32 or bfloat16, any block/token/head strides (in elements), head_dim contiguous; token t of sequence s lives
 * in block block_tables[s, t / block_size] at slot t % block_size. Query heads share KV heads in groups (GQA). One
 * task per (sequence, KV head): a float32 cache is read in place by each query head of the group in turn (the
 * group's later heads find the rows in cache); a bfloat16 one is first unpacked into a float32 scratch, once for
 * the group. Exact softmax in two passes over float32 scores. Tasks are independent, so a sequence's output does
 * not depend on its batch. Built and loaded by cpu_attention.py; target_clones picks the widest vector unit when
 * the library loads.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "cpu_kernels.h"

#define MAX_HEAD_DIM 256
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

/* A float32 view of one KV head: token t's row is at k/v + table[t / block_size] * block_stride
 * + (t % block_size) * token_stride. */
typedef struct {
    const float *k, *v;
    const int64_t *table;
    int64_t block_size, block_stride, token_stride;
} Rows;

/* One query head: q, out [dim]; scores [len] scratch. Inlined into one copy per common head_dim, so that the
 * accumulator stays in vector registers. Walks the table block by block: no division per token. */
static inline __attribute__((always_inline)) void attend(const Rows *r, const float *restrict q, int64_t len,
                                                         float scale, float *restrict scores, float *restrict out,
                                                         int64_t dim) {
    const int64_t *table = r->table, bs = r->block_size, step = r->token_stride;
    float acc[MAX_HEAD_DIM], top = -FLT_MAX, sum = 0.0f;
    for (int64_t t0 = 0, b = 0; t0 < len; t0 += bs, b++) { /* scores[t] = q . k_t * scale */
        const float *k = r->k + table[b] * r->block_stride;
        for (int64_t t = t0; t < len && t < t0 + bs; t++, k += step) {
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < dim; d++) dot += q[d] * k[d];
            scores[t] = dot * scale;
            top = scores[t] > top ? scores[t] : top;
        }
    }
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t < len; t++) sum += (scores[t] = expf(scores[t] - top));
    for (int64_t d = 0; d < dim; d++) acc[d] = 0.0f;
    for (int64_t t0 = 0, b = 0; t0 < len; t0 += bs, b++) { /* acc += p_t v_t */
        const float *v = r->v + table[b] * r->block_stride;
        for (int64_t t = t0; t < len && t < t0 + bs; t++, v += step) {
            float p = scores[t];
#pragma omp simd
            for (int64_t d = 0; d < dim; d++) acc[d] += p * v[d];
        }
    }
    for (int64_t d = 0; d < dim; d++) out[d] = acc[d] / sum;
}

#define ARGS const Rows *r, const float *q, int64_t len, float scale, float *scores, float *out
CLONES static void attend_64(ARGS) { attend(r, q, len, scale, scores, out, 64); }
CLONES static void attend_128(ARGS) { attend(r, q, len, scale, scores, out, 128); }
CLONES static void attend_any(ARGS, int64_t dim) { attend(r, q, len, scale, scores, out, dim); }

/* A bfloat16 KV head's first len rows -> float32 [len, dim] (bfloat16 is the top half of a float32). */
CLONES static void unpack(const uint16_t *cache, const int64_t *table, int64_t len, int64_t dim, int64_t block_size,
                          int64_t block_stride, int64_t token_stride, float *out) {
    for (int64_t t0 = 0, b = 0; t0 < len; t0 += block_size, b++) {
        const uint16_t *x = cache + table[b] * block_stride;
        for (int64_t t = t0; t < len && t < t0 + block_size; t++, x += token_stride, out += dim) {
            for (int64_t d = 0; d < dim; d++) out[d] = from_bf16(x[d]);
        }
    }
}

/* q, out: [num_seqs, num_heads, head_dim] float32; block_tables [num_seqs, max_blocks], context_lens [num_seqs].
 * Returns 0, or -1 for head_dim above MAX_HEAD_DIM, a length below 1, heads that do not divide, or a scratch buffer that cannot be allocated. */
int decode_attention(const float *q, const void *k_cache, const void *v_cache, int bf16, const int64_t *block_tables,
                     const int64_t *context_lens, float *out, int64_t num_seqs, int64_t num_heads,
                     int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int64_t max_blocks,
                     int64_t block_stride, int64_t token_stride, int64_t head_stride, float scale, int num_threads) {
    if (head_dim > MAX_HEAD_DIM || num_kv_heads <= 0 || num_heads % num_kv_heads) return -1;
    int64_t group = num_heads / num_kv_heads;
    static const int64_t first_block = 0;
    int failed = 0;
#pragma omp parallel for collapse(2) schedule(dynamic) num_threads(num_threads) reduction(| : failed)
    for (int64_t s = 0; s < num_seqs; s++) {
        for (int64_t g = 0; g < num_kv_heads; g++) {
            int64_t len = context_lens[s], at = g * head_stride;
            const int64_t *table = block_tables + s * max_blocks;
            float *scratch = len > 0 ? malloc(sizeof(float) * (size_t)(len + (bf16 ? 2 * len * head_dim : 0))) : NULL;
            if (!scratch) {
                failed = 1;
                continue;
            }
            Rows r = {(const float *)k_cache + at, (const float *)v_cache + at, table, block_size, block_stride,
                      token_stride};
            if (bf16) { /* the group reads a contiguous float32 copy: one "block" of len rows */
                float *k = scratch + len, *v = k + len * head_dim;
                unpack((const uint16_t *)k_cache + at, table, len, head_dim, block_size, block_stride, token_stride, k);
                unpack((const uint16_t *)v_cache + at, table, len, head_dim, block_size, block_stride, token_stride, v);
                r = (Rows){k, v, &first_block, len, 0, head_dim};
            }
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                int64_t first = (s * num_heads + h) * head_dim;
                if (head_dim == 64)
                    attend_64(&r, q + first, len, scale, scratch, out + first);
                else if (head_dim == 128)
                    attend_128(&r, q + first, len, scale, scratch, out + first);
                else
                    attend_any(&r, q + first, len, scale, scratch, out + first, head_dim);
            }
            free(scratch);
        }
    }
    return failed ? -1 : 0;
}
