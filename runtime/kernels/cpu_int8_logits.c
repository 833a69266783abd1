/* Logits through an int8 LM head on the CPU: out[m, n] = scale[n] * sum_k x[m, k] * w[n, k], in float32.
 *
 * x float32 [rows, k], w int8 [vocab, k] (the tied embedding table), scale float32 [vocab]. Vocabulary rows are
 * converted to float32 four at a time (kept in L1) and every activation row is dotted with the four, so the table's
 * int8 bytes are read once per step and never written back as floats. Each output is one dot product in a fixed
 * order, whatever the number of rows: a row's logits do not depend on its batch. Built and loaded by cpu_native.py.
 */
#include <stdint.h>
#include <stdlib.h>

#define BLOCK_ROWS 16 /* vocabulary rows per task */
#define GROUP 4        /* vocabulary rows converted together: each activation row is loaded once for GROUP dots */

__attribute__((target_clones("avx512f", "avx2", "default")))
static void block(const float *x, const int8_t *w, const float *scale, float *out, int64_t rows, int64_t vocab,
                  int64_t k, int64_t first, int64_t last, float *wf) {
    for (int64_t n0 = first; n0 < last; n0 += GROUP) {
        int64_t g = last - n0 < GROUP ? last - n0 : GROUP;
        for (int64_t j = 0; j < GROUP; j++) /* a short group repeats its last row: the same code for every row */
            for (int64_t d = 0; d < k; d++) wf[j * k + d] = (float)w[(n0 + (j < g ? j : g - 1)) * k + d];
        for (int64_t m = 0; m < rows; m++) {
            const float *xm = x + m * k;
            float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
            for (int64_t d = 0; d < k; d++) {
                d0 += xm[d] * wf[d];
                d1 += xm[d] * wf[k + d];
                d2 += xm[d] * wf[2 * k + d];
                d3 += xm[d] * wf[3 * k + d];
            }
            float dots[GROUP] = {d0, d1, d2, d3};
            for (int64_t j = 0; j < g; j++) out[m * vocab + n0 + j] = dots[j] * scale[n0 + j];
        }
    }
}

/* Returns 0, or -1 when a scratch row cannot be allocated. */
int int8_logits(const float *x, const int8_t *w, const float *scale, float *out, int64_t rows, int64_t vocab,
                int64_t k, int num_threads) {
    int failed = 0;
#pragma omp parallel num_threads(num_threads) reduction(| : failed)
    {
        float *wf = malloc(sizeof(float) * (size_t)(GROUP * (k > 0 ? k : 1)));
        if (!wf) failed = 1;
#pragma omp for schedule(static)
        for (int64_t first = 0; first < vocab; first += BLOCK_ROWS) {
            if (wf) block(x, w, scale, out, rows, vocab, k, first, first + BLOCK_ROWS < vocab ? first + BLOCK_ROWS : vocab, wf);
        }
        free(wf);
    }
    return failed ? -1 : 0;
}
