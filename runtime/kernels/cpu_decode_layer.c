/* One Llama decoder layer over a step of bf16 decode rows, in one call: the bf16 tier's Python layer, op for op.
 *
 * At batch 1 a layer's weights are read at memory speed by the GEMM kernel (cpu_woq_gemm.c), and the rest of a
 * Python step is the interpreter between ~20 calls per layer. This file calls the same C functions the Python path
 * calls, in the same order, on the same bf16 values, so its rows come out bit for bit as the Python layer's:
 *   h = rms_norm(x); qkv = h @ Wqkv; q, k = rope(q), rope(k); cache[slot] = k, v; a = attention(q)
 *   h, x = rms_norm(a @ Wo + x), a @ Wo + x; x = x + (silu(gate) * up) @ Wdown, gate|up = h @ Wgate_up
 * Weights are packed by cpu_woq.pack_bf16; the cache is [blocks, block_size, kv_heads, head_dim] bf16. Built and
 * loaded by cpu_native.py; used by cpu_decode_layer.py.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_kernels.h" /* the kernels this layer is made of */

typedef struct {
    const uint16_t *input_norm, *post_norm; /* [hidden] */
    const uint16_t *qkv, *o, *gate_up, *down; /* packed [n / 16, k / 2, 16, 2] */
} Weights;

typedef struct {
    uint16_t *k, *v;                /* [blocks, block_size, kv_heads, head_dim] */
    const int64_t *slots;           /* [rows]: where each row's k and v go, block * block_size + offset */
    const int64_t *tables, *lens;   /* [rows, max_blocks], [rows] (the new token included) */
    int64_t max_blocks, block_size, block_stride, token_stride, head_stride;
} Cache;

typedef struct {
    int64_t hidden, heads, kv_heads, head_dim, inter;
    float eps, scale;
} Shape;

/* x [rows, hidden] bf16 is updated in place; cos, sin [rows, head_dim] bf16 (sin negated on the first half).
 * Returns 0, or -1 when a kernel refuses its input or a buffer cannot be allocated. */
int decode_layer_bf16(uint16_t *x, int64_t rows, const uint16_t *cos, const uint16_t *sin, const Weights *w,
                      const Cache *c, const Shape *s, int num_threads) {
    const int64_t hd = s->head_dim, qn = s->heads * hd, kvn = s->kv_heads * hd, qkvn = qn + 2 * kvn;
    const int64_t widest = s->hidden > 2 * s->inter ? s->hidden : 2 * s->inter;
    /* bf16: h, qkv, q, k, attention out, projection out, act; float32: q and attention out for the kernel */
    size_t halves = (size_t)rows * (size_t)(s->hidden + qkvn + qn + kvn + qn + widest + s->inter);
    uint16_t *h = malloc(sizeof(uint16_t) * halves + sizeof(float) * (size_t)(rows * 2 * qn) + 64);
    if (!h) return -1;
    uint16_t *qkv = h + rows * s->hidden, *q = qkv + rows * qkvn, *k = q + rows * qn, *a = k + rows * kvn;
    uint16_t *proj = a + rows * qn, *act = proj + rows * widest;
    float *q32 = (float *)(((uintptr_t)(act + rows * s->inter) + 63) & ~(uintptr_t)63), *a32 = q32 + rows * qn;
    int bad = 0;

    bad |= rms_norm_bf16(x, NULL, w->input_norm, h, NULL, rows, s->hidden, s->eps, num_threads);
    bad |= bf16_gemm(h, w->qkv, qkv, 1, rows, qkvn, s->hidden, num_threads);
    bad |= rope_bf16(qkv, qkvn, cos, sin, q, rows, s->heads, hd, num_threads);
    bad |= rope_bf16(qkv + qn, qkvn, cos, sin, k, rows, s->kv_heads, hd, num_threads);
    for (int64_t r = 0; r < rows; r++) { /* this step's keys and values into their slots */
        int64_t slot = c->slots[r], at = slot / c->block_size * c->block_stride + slot % c->block_size * c->token_stride;
        for (int64_t g = 0; g < s->kv_heads; g++) {
            memcpy(c->k + at + g * c->head_stride, k + (r * s->kv_heads + g) * hd, sizeof(uint16_t) * (size_t)hd);
            memcpy(c->v + at + g * c->head_stride, qkv + r * qkvn + qn + kvn + g * hd, sizeof(uint16_t) * (size_t)hd);
        }
    }
    for (int64_t i = 0; i < rows * qn; i++) q32[i] = from_bf16(q[i]);
    bad |= decode_attention(q32, c->k, c->v, 1, c->tables, c->lens, a32, rows, s->heads, s->kv_heads, hd,
                            c->block_size, c->max_blocks, c->block_stride, c->token_stride, c->head_stride, s->scale,
                            num_threads);
    for (int64_t i = 0; i < rows * qn; i++) a[i] = to_bf16(a32[i]);
    bad |= bf16_gemm(a, w->o, proj, 1, rows, s->hidden, qn, num_threads);
    bad |= rms_norm_bf16(proj, x, w->post_norm, h, x, rows, s->hidden, s->eps, num_threads); /* x = a + x */
    bad |= bf16_gemm(h, w->gate_up, proj, 1, rows, 2 * s->inter, s->hidden, num_threads);
    bad |= silu_and_mul_bf16(proj, proj + s->inter, act, rows, s->inter, 2 * s->inter, num_threads);
    bad |= bf16_gemm(act, w->down, proj, 1, rows, s->hidden, s->inter, num_threads);
    for (int64_t i = 0; i < rows * s->hidden; i++) x[i] = to_bf16(from_bf16(x[i]) + from_bf16(proj[i]));
    free(h);
    return bad ? -1 : 0;
}
