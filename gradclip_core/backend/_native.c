/* gradclip's fused CPU loops (loaded by _native.py through ctypes; used by the torch CPU kernels).
 *
 * Each function is one pass over its arrays that does what a run of NumPy operations on an
 * in-cache chunk does, with the same IEEE float operations in the same order, so the results are
 * the NumPy path's bit for bit:
 * - no contraction of a multiply and an add into an FMA (compiled with -ffp-contract=off), no
 *   fast-math; a min or a count does not depend on the order of its elements;
 * - NaN ratios are skipped as np.fmin.reduce skips them (`r < m` is false for NaN);
 * - the clamp is torch's clamp_ (and np.clip with infinite missing bounds): a NaN keeps its
 *   payload, an element equal to a bound (a signed zero too) is kept.
 * The loops keep LANES independent partial results, so GCC and Clang vectorize them (Clippy's
 * ratio is written with vector types); on x86-64 Linux GCC also builds AVX-512 and AVX2 clones,
 * chosen at load time by the CPU.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LANES 16

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && defined(GC_CLONES)
#define GC_CLONE __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GC_CLONE
#endif

/* min over i of (|w_i| * rel + abs) / |d_i|, NaN ratios skipped (+inf if none): d = a - b and w = b
 * (diff != 0: the update after a step, formed per element in the arrays' dtype), or d = a, w = b.
 * Written with vector types (GCC/Clang vector extensions): GCC does not vectorize the select of a
 * minimum that skips NaN by itself. |x| clears the sign bit; `r < m` is false for a NaN r. */
#define MIN_RATIO(NAME, T, I, ABS)                                                                \
    typedef T NAME##_vt __attribute__((vector_size(64)));                                         \
    typedef I NAME##_vi __attribute__((vector_size(64)));                                         \
    GC_CLONE T NAME(const T *a, const T *b, int64_t n, T rel, T add, int diff) {                  \
        enum { W = 64 / sizeof(T) };                                                               \
        const NAME##_vi sign = ~(NAME##_vi){} ^ (((NAME##_vi){} + 1) << (8 * sizeof(T) - 1));     \
        NAME##_vt m = (NAME##_vt){} + (T)INFINITY;                                                 \
        int64_t i = 0;                                                                             \
        for (; i + W <= n; i += W) {                                                               \
            NAME##_vt x, w;                                                                        \
            memcpy(&x, a + i, sizeof x);                                                           \
            memcpy(&w, b + i, sizeof w);                                                           \
            NAME##_vt d = diff ? x - w : x;                                                        \
            NAME##_vt bound = (NAME##_vt)((NAME##_vi)w & sign) * rel + add;                        \
            NAME##_vt r = bound / (NAME##_vt)((NAME##_vi)d & sign);                                \
            NAME##_vi lt = r < m;                                                                  \
            m = (NAME##_vt)(((NAME##_vi)r & lt) | ((NAME##_vi)m & ~lt));                           \
        }                                                                                          \
        T out = (T)INFINITY;                                                                       \
        for (int j = 0; j < W; j++) out = m[j] < out ? m[j] : out;                                 \
        for (; i < n; i++) {                                                                       \
            T d = diff ? a[i] - b[i] : a[i];                                                       \
            T r = (ABS(b[i]) * rel + add) / ABS(d);                                                \
            out = r < out ? r : out;                                                               \
        }                                                                                          \
        return out;                                                                                \
    }

MIN_RATIO(gc_min_ratio_f32, float, int32_t, fabsf)
MIN_RATIO(gc_min_ratio_f64, double, int64_t, fabs)

/* sum over i of ELEM(i)**2 in double, LANES partial sums (the sum's order is the lanes', not NumPy's
 * dot's); ELEM(k) is the k-th term as a double: */
#define SUMSQ(NAME, PARAMS, ELEM)                                                                 \
    GC_CLONE double NAME PARAMS {                                                                  \
        double s[LANES];                                                                           \
        for (int j = 0; j < LANES; j++) s[j] = 0.0;                                                \
        int64_t i = 0;                                                                             \
        for (; i + LANES <= n; i += LANES)                                                         \
            for (int j = 0; j < LANES; j++) {                                                      \
                double d = ELEM(i + j);                                                            \
                s[j] += d * d;                                                                     \
            }                                                                                      \
        double out = 0.0;                                                                          \
        for (; i < n; i++) {                                                                       \
            double d = ELEM(i);                                                                    \
            out += d * d;                                                                          \
        }                                                                                          \
        for (int j = 0; j < LANES; j++) out += s[j];                                               \
        return out;                                                                                \
    }

/* - (a_i - b_i): each difference rounded to the arrays' dtype, then upcast (float32: exact squares); */
#define DIFF_F32(k) ((double)(float)(a[k] - b[k]))
#define DIFF_F64(k) ((double)(a[k] - b[k]))
SUMSQ(gc_diff_sumsq_f32, (const float *a, const float *b, int64_t n), DIFF_F32)
SUMSQ(gc_diff_sumsq_f64, (const double *a, const double *b, int64_t n), DIFF_F64)

/* - x_i upcast (gc.accumulate's float64 norm of float32 without a float64 copy of the array). */
#define UPCAST(k) ((double)x[k])
SUMSQ(gc_sumsq_f32, (const float *x, int64_t n), UPCAST)

/* x clamped to [lo, hi] in place (a missing bound is -inf / +inf), returning how many elements were
 * below lo or above hi before the clamp (NaN is neither). */
#define CLAMP_COUNT(NAME, T)                                                                      \
    GC_CLONE int64_t NAME(T *x, int64_t n, T lo, T hi) {                                          \
        int64_t c[LANES];                                                                          \
        for (int j = 0; j < LANES; j++) c[j] = 0;                                                  \
        int64_t i = 0;                                                                             \
        for (; i + LANES <= n; i += LANES)                                                         \
            for (int j = 0; j < LANES; j++) {                                                      \
                T v = x[i + j];                                                                    \
                int below = v < lo, above = v > hi;                                                \
                c[j] += below + above;                                                             \
                v = below ? lo : v;                                                                \
                x[i + j] = v > hi ? hi : v;                                                        \
            }                                                                                      \
        int64_t out = 0;                                                                           \
        for (; i < n; i++) {                                                                       \
            T v = x[i];                                                                            \
            out += (v < lo) + (v > hi);                                                            \
            v = v < lo ? lo : v;                                                                   \
            x[i] = v > hi ? hi : v;                                                                \
        }                                                                                          \
        for (int j = 0; j < LANES; j++) out += c[j];                                               \
        return out;                                                                                \
    }

CLAMP_COUNT(gc_clamp_count_f32, float)
CLAMP_COUNT(gc_clamp_count_f64, double)

static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

/* The selection keys of hashed random scores (gradclip_core._hash.hash_scores; the torch kernel's
 * _hash_keys): for element j, h = fmix32(fmix32(base + j) ^ b2) >> 8, remixed with the step when
 * has_mix (h = fmix32(h + mix) >> 8); the key is the float32 bits of h (exact: h < 2**24) plus 1,
 * or 0 where keep is given and keep[j] is 0. */
GC_CLONE void gc_hash_keys(int32_t *out, int64_t n, uint32_t base, uint32_t b2, uint32_t mix, int has_mix,
                           const uint8_t *keep) {
    for (int64_t j = 0; j < n; j++) {
        uint32_t h = fmix32(fmix32(base + (uint32_t)j) ^ b2) >> 8;
        if (has_mix) h = fmix32(h + mix) >> 8;
        float f = (float)(int32_t)h;
        int32_t bits;
        memcpy(&bits, &f, sizeof bits);
        bits += 1;
        out[j] = keep ? bits * (int32_t)(keep[j] != 0) : bits;
    }
}

/* LAMP scores (gradclip_core.prune.lamp_scores) of one array, in place order, from its int32 keys
 * sorted ascending and their order: for i from n - 1 down, v is the float32 of sorted[i]'s bits,
 * sq = v * v, the suffix sum acc += sq in double (torch's cumsum of float32 accumulates in double),
 * and out[order[i]] = sq / ((float)acc > 0 ? (float)acc : 1). The same bits as the flip, cumsum,
 * flip, divide and scatter it replaces (five full-size temporaries, one pass here). */
void gc_lamp_scatter(const int32_t *sorted, const int64_t *order, int64_t n, float *out) {
    double acc = 0.0;
    for (int64_t i = n - 1; i >= 0; i--) {
        float v;
        memcpy(&v, sorted + i, sizeof v);
        float sq = v * v;
        acc += (double)sq;
        float suffix = (float)acc;
        out[order[i]] = sq / (suffix > 0.0f ? suffix : 1.0f);
    }
}
