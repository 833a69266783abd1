/* What infleet's CPU kernels share: bf16 <-> float32 as PyTorch converts, and the entry points one kernel calls in
 * another (cpu_decode_layer.c is made of the others). Each cpu_*.c includes this, so a definition that drifts from
 * its declaration here does not compile. */
#ifndef INFLEET_CPU_KERNELS_H
#define INFLEET_CPU_KERNELS_H

#include <stdint.h>

/* bf16 is the top half of a float32: exact */
static inline float from_bf16(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float v;
    __builtin_memcpy(&v, &bits, sizeof v);
    return v;
}

/* float32 -> bf16 rounded to nearest even, NaN kept NaN (a bit test: -ffast-math drops isnan): PyTorch's cast */
static inline uint16_t to_bf16(float v) {
    uint32_t bits;
    __builtin_memcpy(&bits, &v, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* cpu_woq_gemm.c */
int bf16_gemm(const uint16_t *x, const uint16_t *w, void *out, int out_bf16, int64_t rows, int64_t n, int64_t k,
              int num_threads);
/* cpu_pointwise.c */
int rms_norm_bf16(const uint16_t *x, const uint16_t *residual, const uint16_t *weight, uint16_t *out,
                  uint16_t *residual_out, int64_t rows, int64_t dim, float eps, int num_threads);
int silu_and_mul_bf16(const uint16_t *gate, const uint16_t *up, uint16_t *out, int64_t rows, int64_t dim,
                      int64_t stride, int num_threads);
int rope_bf16(const uint16_t *x, int64_t stride, const uint16_t *cos, const uint16_t *sin, uint16_t *out,
              int64_t rows, int64_t heads, int64_t dim, int num_threads);
/* cpu_decode_attention.c */
int decode_attention(const float *q, const void *k_cache, const void *v_cache, int bf16, const int64_t *block_tables,
                     const int64_t *context_lens, float *out, int64_t num_seqs, int64_t num_heads,
                     int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int64_t max_blocks,
                     int64_t block_stride, int64_t token_stride, int64_t head_stride, float scale, int num_threads);

#endif
