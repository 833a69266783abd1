/* RMSNorm (with the residual add) and SiLU-and-multiply over bf16 rows, each in one pass, in float32.
 *
 * In PyTorch each is a chain of small ops on a decode step's one row (casts up, add, square, mean, rsqrt, multiply,
 * casts down): about ten dispatches per norm, sixty norms per step, each costing more than its arithmetic. Here one
 * call does a row's whole norm. Rounding to bf16 is PyTorch's (`to_bf16`). Built and loaded by
 * cpu_native.py; used for bf16 activations by dispatch.py (cpu_pointwise.py).
 */
#include <math.h>
#include <stdint.h>

#include "cpu_kernels.h"

/* out = bf16(h / sqrt(mean(h^2) + eps) * weight) for contiguous [rows, dim], h = x (+ residual, then also stored as
 * bf16 into residual_out) */
int rms_norm_bf16(const uint16_t *x, const uint16_t *residual, const uint16_t *weight, uint16_t *out,
                  uint16_t *residual_out, int64_t rows, int64_t dim, float eps, int num_threads) {
    if (rows < 0 || dim <= 0 || (residual && !residual_out)) return -1;
    const int64_t stride = dim;
#pragma omp parallel for if (rows >= 64) num_threads(num_threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * stride;
        float h[dim];
        float squares = 0.0f;
        for (int64_t d = 0; d < dim; d++) {
            h[d] = from_bf16(xr[d]) + (residual ? from_bf16(residual[r * stride + d]) : 0.0f);
            squares += h[d] * h[d];
        }
        if (residual)
            for (int64_t d = 0; d < dim; d++) residual_out[r * stride + d] = to_bf16(h[d]);
        float inv = 1.0f / sqrtf(squares / (float)dim + eps);
        for (int64_t d = 0; d < dim; d++) out[r * stride + d] = to_bf16(h[d] * inv * from_bf16(weight[d]));
    }
    return 0;
}

/* out [rows, dim] = bf16(silu(gate) * up); gate and up rows `stride` elements apart (halves of one tensor) */
int silu_and_mul_bf16(const uint16_t *gate, const uint16_t *up, uint16_t *out, int64_t rows, int64_t dim,
                      int64_t stride, int num_threads) {
    if (rows < 0 || dim <= 0 || stride < dim) return -1;
#pragma omp parallel for if (rows >= 64) num_threads(num_threads) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t d = 0; d < dim; d++) {
            float g = from_bf16(gate[r * stride + d]), u = from_bf16(up[r * stride + d]);
            out[r * dim + d] = to_bf16(g / (1.0f + expf(-g)) * u);
        }
    return 0;
}

/* Rotary embedding of x [rows, heads, dim] (rows `stride` elements apart, heads contiguous) into contiguous out:
 * out = x * cos + rotate_half(x) * sin, with cos and sin [rows, dim] as the model's tables give them (sin negated on
 * the first half). Each product and the sum are rounded to bf16 as PyTorch's bf16 ops round them: the same bits. */
int rope_bf16(const uint16_t *x, int64_t stride, const uint16_t *cos, const uint16_t *sin, uint16_t *out,
              int64_t rows, int64_t heads, int64_t dim, int num_threads) {
    if (rows < 0 || heads <= 0 || dim <= 0 || dim % 2 || stride < heads * dim) return -1;
    const int64_t half = dim / 2;
#pragma omp parallel for if (rows >= 64) num_threads(num_threads) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t h = 0; h < heads; h++) {
            const uint16_t *xh = x + r * stride + h * dim, *c = cos + r * dim, *s = sin + r * dim;
            uint16_t *o = out + (r * heads + h) * dim;
            for (int64_t d = 0; d < dim; d++) {
                float straight = from_bf16(to_bf16(from_bf16(xh[d]) * from_bf16(c[d])));
                float turned = from_bf16(to_bf16(from_bf16(xh[d < half ? d + half : d - half]) * from_bf16(s[d])));
                o[d] = to_bf16(straight + turned);
            }
        }
    return 0;
}
