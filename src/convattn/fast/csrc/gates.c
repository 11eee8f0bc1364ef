/* convattn native CPU kernels for the gating attention modules.
 *
 * Plain C99 + OpenMP (GCC/Clang vector extensions; AVX-512 intrinsics for a few
 * float loops where the CPU has them), compiled on first use by
 * convattn.fast.native and called through ctypes on contiguous (B, C, S) tensors
 * (S = product of the spatial sizes). Each kernel is one pass over the full-size
 * activation; with autograd the small gate networks (MLPs, 1-D / k x k convs on
 * pooled maps, BN) stay in PyTorch, in eval fused_impl.h runs whole modules.
 *
 * Every kernel exists for float (suffix _f32) and double (_f64), declared in
 * kernels.def; the shared types are in gates.h. Threads: the
 * caller passes torch.get_num_threads(); torch and this library share one
 * OpenMP runtime (libgomp is loaded once, by soname).
 *
 * Conventions: "row" = one (b, c) pair, S contiguous values. Nullable pointers
 * select the variant. Max pools also return the first arg-max and the number of
 * elements equal to the max (ties), so that the backward pass can split the
 * gradient evenly over ties as torch.amax does. NaN propagates as in torch.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef SCHUNK
#define SCHUNK 1024 /* positions per task in channel-direction kernels */
#endif

static inline int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }

/* A per-thread scratch buffer of at least `bytes` bytes, kept between calls (the
 * per-sample workspaces are often just above malloc's mmap threshold, where every
 * malloc/free pair is an mmap, munmap and fresh page faults: tens of microseconds
 * per call). Only leaf workspaces use it: a caller never holds it across a call
 * into another function that uses it. NULL if it cannot grow. */
static void *thread_scratch(size_t bytes) {
    static __thread void *buf = NULL;
    static __thread size_t cap = 0;
    if (bytes > cap) {
        size_t want = bytes + bytes / 4;
        void *p = realloc(buf, want);
        if (!p) return NULL;
        buf = p;
        cap = want;
    }
    return buf;
}

/* gate_eval streams Y to memory (scale_row_stream_f32) when X and Y together exceed
 * this many bytes, i.e. do not fit the last-level cache: Y would be evicted before the
 * next layer reads it, and the write-allocate reads are a third of the product's
 * traffic. Set by the loader from the cache size; off until then. */
static int64_t stream_min_bytes = INT64_MAX;
void convattn_set_stream_min_bytes(long long n) { stream_min_bytes = n > 0 ? (int64_t)n : INT64_MAX; }

/* compute-bound loops (exp per element) may use the full vector width */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define WIDE __attribute__((target("prefer-vector-width=512")))
#else
#define WIDE
#endif

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(f) CAT(f, SUF)

/* exp for float that vectorises (glibc's expf does not without -ffast-math):
 * Cephes' expf, relative error about 1e-7 over the float range. Inputs are
 * clamped to [-87.3, 88.7] (the result stays a normal float); NaN gives NaN. */
static inline float exp_f32(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.7f ? 88.7f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return y * scale;
}

/* 2^t for t <= 0 in float (SimAM's sigmoid, one per element): n = rint(t) and
 * 2^(t - n) by a near-minimax polynomial of degree 5 on [-1/2, 1/2] (relative
 * error 7.5e-8 in exact arithmetic, 2.4e-7 evaluated in float). No upper clamp
 * (the caller has t <= 0); t is clamped at -126 (the result stays a normal
 * float); NaN gives NaN. Cheaper than exp_f32: the range reduction is one
 * rounding and one subtraction. */
static inline float exp2neg_f32(float t) {
    t = t < -126.0f ? -126.0f : t;
    float n = rintf(t), f = t - n;
    float p = 1.327646430581808e-3f;
    p = p * f + 9.675540961325169e-3f;
    p = p * f + 5.550713464617729e-2f;
    p = p * f + 2.4022120237350464e-1f;
    p = p * f + 6.931469440460205e-1f;
    p = p * f + 1.0000001192092896f;
    int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return p * scale;
}

/* AVX-512 float paths for the compute-bound loops (the generic code in gates_impl.h
 * and fused_impl.h is the fallback, and the only path for double):
 * - SimAM's row (statistics, then o = p / (1 + 2^t), t = -(al d^2 + bl), d = p - mu);
 * - the sigmoid of coord's gate network.
 * Both are bound by the FMA pipes, so 2^t takes fewer of them than exp2neg_f32 /
 * exp_f32 (exp2_tab_ps): t = n + f with n = t rounded to a multiple of 1/32; the same
 * rounding happens when adding 1.5 * 2^18, whose sum's low 5 mantissa bits then index
 * a 32-entry table of 2^(j/32) (vpermt2ps); 2^f by a degree-2 near-minimax
 * polynomial on [-1/64, 1/64] (relative error 5.3e-8 in exact arithmetic); the
 * integer part of n by vscalefps. Measured on Zen 4, 784-value rows in L2, SimAM's
 * last pass: 11.1 cycles per 16 values against 13.4 for the generic loop; largest
 * relative error 1.4e-7 against a double reference. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_AVX512_F32 1
/* 2^(j / 32), j = 0..31, rounded to float */
static const float exp2_table[32] = {
    0x1p+0f, 0x1.059b0ep+0f, 0x1.0b5586p+0f, 0x1.11301ep+0f,
    0x1.172b84p+0f, 0x1.1d4874p+0f, 0x1.2387a6p+0f, 0x1.29e9ep+0f,
    0x1.306fep+0f, 0x1.371a74p+0f, 0x1.3dea64p+0f, 0x1.44e086p+0f,
    0x1.4bfdaep+0f, 0x1.5342b6p+0f, 0x1.5ab07ep+0f, 0x1.6247ecp+0f,
    0x1.6a09e6p+0f, 0x1.71f75ep+0f, 0x1.7a1148p+0f, 0x1.82589ap+0f,
    0x1.8ace54p+0f, 0x1.93737cp+0f, 0x1.9c4918p+0f, 0x1.a5503cp+0f,
    0x1.ae89fap+0f, 0x1.b7f77p+0f, 0x1.c199bep+0f, 0x1.cb720ep+0f,
    0x1.d5818ep+0f, 0x1.dfc974p+0f, 0x1.ea4afap+0f, 0x1.f50766p+0f,
};
/* the first `left` lanes of 16 */
static inline __mmask16 tail16(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* The row's mean and sum of squared deviations, two passes (as the generic sum_impl /
 * sqdev_impl) in 16-lane vectors with a masked last vector: 0.063 against 0.080 ns
 * per value for 784-value rows (the generic code keeps 8-lane vectors, which the
 * short-row kernels need). The fallback of simam_stats_f32 below. */
static void simam_stats2_f32(const float *restrict p, int64_t n, float *mu_out, float *q_out) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
    }
    for (; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(m, p + i));
    }
    float mu = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))) / (float)n;
    __m512 vm = _mm512_set1_ps(mu), b0 = _mm512_setzero_ps(), b1 = b0, b2 = b0, b3 = b0, d;
    for (i = 0; i + 64 <= n; i += 64) {
        d = _mm512_sub_ps(_mm512_loadu_ps(p + i), vm); b0 = _mm512_fmadd_ps(d, d, b0);
        d = _mm512_sub_ps(_mm512_loadu_ps(p + i + 16), vm); b1 = _mm512_fmadd_ps(d, d, b1);
        d = _mm512_sub_ps(_mm512_loadu_ps(p + i + 32), vm); b2 = _mm512_fmadd_ps(d, d, b2);
        d = _mm512_sub_ps(_mm512_loadu_ps(p + i + 48), vm); b3 = _mm512_fmadd_ps(d, d, b3);
    }
    for (; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, p + i), vm);
        b0 = _mm512_fmadd_ps(d, d, b0);
    }
    *mu_out = mu;
    *q_out = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3)));
}

/* The same in one pass: sums of d = x - c and of d^2 about c, the mean of the row's
 * first vector, then mu = c + sum d / n and q = sum d^2 - (sum d)^2 / n. The
 * subtraction loses about log2(sum d^2 / q) bits, so it is kept only when c lies
 * within 2 deviations of mu ((sum d)^2 / n <= 4 q: at most 5x the two-pass rounding;
 * c, a 16-value mean, is typically within half a deviation), else the two passes run.
 * SimAM's whole kernel: 1.18 -> 1.15 and 1.10 -> 1.065 cycles per value in two A/B
 * runs (1 thread, 784-value rows in L2). Split in three so that simam_rows_f32 can
 * take the sums inside another row's loop: begin, accumulate (16 values into the
 * pair of sums k: vectors 4j + k of the row, the tail into pair 0), finish. */
typedef struct { __m512 c, s[4], q[4]; float c0; } simam_sums;

static inline void simam_sums_begin(simam_sums *a, const float *restrict p, int64_t n) {
    a->c0 = _mm512_reduce_add_ps(_mm512_maskz_loadu_ps(tail16(n), p)) / (float)(n < 16 ? n : 16);
    a->c = _mm512_set1_ps(a->c0);
    for (int k = 0; k < 4; k++) a->s[k] = a->q[k] = _mm512_setzero_ps();
}

static inline void simam_sums_add(simam_sums *a, int k, __m512 v) { /* v: zeros past the row's end */
    __m512 d = _mm512_sub_ps(v, a->c);
    a->s[k] = _mm512_add_ps(a->s[k], d);
    a->q[k] = _mm512_fmadd_ps(d, d, a->q[k]);
}

static inline void simam_sums_add_tail(simam_sums *a, __mmask16 m, const float *restrict p) {
    __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, p), a->c);
    a->s[0] = _mm512_add_ps(a->s[0], d);
    a->q[0] = _mm512_fmadd_ps(d, d, a->q[0]);
}

static inline void simam_sums_finish(const simam_sums *a, const float *restrict p, int64_t n, float *mu_out,
                                     float *q_out) {
    float sd = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a->s[0], a->s[1]), _mm512_add_ps(a->s[2], a->s[3])));
    float off = sd * sd / (float)n;
    float qq = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a->q[0], a->q[1]), _mm512_add_ps(a->q[2], a->q[3]))) - off;
    if (!(off <= 4.0f * qq)) { /* also inf / NaN rows */
        simam_stats2_f32(p, n, mu_out, q_out);
        return;
    }
    *mu_out = a->c0 + sd / (float)n;
    *q_out = qq;
}

/* the whole row p into a, in the order simam_apply_f32's loop adds it */
static inline void simam_sums_row(simam_sums *a, const float *restrict p, int64_t n) {
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 4; k++) simam_sums_add(a, k, _mm512_loadu_ps(p + i + 16 * k));
    for (; i < n; i += 16) simam_sums_add_tail(a, tail16(n - i), p + i);
}

static void simam_stats_f32(const float *restrict p, int64_t n, float *mu_out, float *q_out) {
    simam_sums a;
    simam_sums_begin(&a, p, n);
    simam_sums_row(&a, p, n);
    simam_sums_finish(&a, p, n, mu_out, q_out);
}

/* 2^t for t in [-150, 150] (see above): 2^floor(n) 2^(j/32) 2^f; vscalefps gives 0
 * below 2^-149 and inf above 2^127. NaN propagates. */
static inline __m512 exp2_tab_ps(__m512 t, __m512 t_lo) { /* 2^(t + t_lo), |t_lo| tiny */
    const __m512 shifter = _mm512_set1_ps(393216.0f); /* 1.5 * 2^18: its ulp is 1/32 */
    const __m512 c1 = _mm512_set1_ps(0.6931573469011034f), c2 = _mm512_set1_ps(0.24022689925747048f);
    __m512 u = _mm512_add_ps(t, shifter); /* low 5 bits: j */
    /* not u - shifter: -fassociative-math folds that to t */
    __m512 n = _mm512_roundscale_ps(t, (5 << 4) | _MM_FROUND_TO_NEAREST_INT); /* t to 1/32 */
    __m512 f = _mm512_add_ps(_mm512_sub_ps(t, n), t_lo);
    __m512 tj = _mm512_permutex2var_ps(_mm512_loadu_ps(exp2_table), _mm512_castps_si512(u),
                                       _mm512_loadu_ps(exp2_table + 16));
    __m512 q = _mm512_fmadd_ps(_mm512_fmadd_ps(c2, f, c1), _mm512_mul_ps(f, tj), tj);
    return _mm512_scalef_ps(q, n);
}

/* y = v / (1 + 2^t) = v sigmoid(e), t = -e log2 e */
static inline __m512 simam_y(__m512 v, __m512 t) {
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), exp2_tab_ps(t, _mm512_setzero_ps())));
}

/* Row p's output into o (o may be p). With nx, also the sums of row pn (S values, as simam_stats_f32
 * adds them) in the same loop: the gate is compute-bound (the FP add pipes: table
 * index, rounding, 2^n scaling, 1 + 2^t) while the sums alone are bound by their
 * reductions' latency; a row's sums, its mean and a then gate the next row's loop.
 * Taking row r + 1's sums inside row r's loop overlaps the two. always_inline: the
 * nx == NULL calls lose the sums' code. */
static inline __attribute__((always_inline)) void simam_apply_f32(const float *p, float *o, int64_t S,
                                                                  float mu, float al, float bl, simam_sums *nx,
                                                                  const float *restrict pn) {
    const float sa = sqrtf(al); /* al > 0: lam > 0 */
    const __m512 vs = _mm512_set1_ps(sa), vms = _mm512_set1_ps(mu * sa), vbl = _mm512_set1_ps(bl);
    int64_t i = 0;
    if (!(fabsf(mu * sa) <= 1e18f)) { /* inf, NaN, or a mean 1e18 deviations from 0 */
        /* fmsub's d sqrt(al) would carry mu sqrt(al)'s rounding (up to inf): t to -inf
         * or NaN. Here d first, t clamped (2^-150 is 0 next to 1; max(lo, NaN) is NaN). */
        const __m512 vmu = _mm512_set1_ps(mu), lo = _mm512_set1_ps(-150.0f);
        for (i = 0; i < S; i += 16) {
            __mmask16 m = tail16(S - i);
            __m512 v = _mm512_maskz_loadu_ps(m, p + i), w = _mm512_mul_ps(_mm512_sub_ps(v, vmu), vs);
            _mm512_mask_storeu_ps(o + i, m, simam_y(v, _mm512_max_ps(lo, _mm512_fnmsub_ps(w, w, vbl))));
        }
        if (nx) simam_sums_row(nx, pn, S);
        return;
    }
    /* Otherwise t is finite: |d sqrt(al)| <= sqrt(S) / 2 up to mu sqrt(al)'s rounding
     * (< 2^37), and d^2 al bounded the same way. No clamp needed (dropping it: 5% of
     * the loop): below t = -150, vscalefps gives 0 whatever the table index. t's own
     * rounding (|t| 2^-24) only matters where 2^t is small next to 1. */
#define SIMAM_OUT(at, m)                                                                                  \
    do {                                                                                                  \
        __m512 v = _mm512_maskz_loadu_ps(m, p + (at)), w = _mm512_fmsub_ps(v, vs, vms); /* d sqrt(al) */ \
        _mm512_mask_storeu_ps(o + (at), m, simam_y(v, _mm512_fnmsub_ps(w, w, vbl))); /* t = -(al d^2) - bl */ \
    } while (0)
    for (; i + 64 <= S; i += 64)
        for (int k = 0; k < 4; k++) {
            SIMAM_OUT(i + 16 * k, (__mmask16)0xFFFF);
            if (nx) simam_sums_add(nx, k, _mm512_loadu_ps(pn + i + 16 * k));
        }
    for (; i < S; i += 16) {
        __mmask16 m = tail16(S - i);
        SIMAM_OUT(i, m);
        if (nx) simam_sums_add_tail(nx, m, pn + i);
    }
#undef SIMAM_OUT
}

/* SimAM's forward on rows [r0, r1) (see simam_fwd in gates_impl.h), each row's output
 * loop taking the next row's sums. a as the generic code computes it. */
static void simam_rows_f32(const float *x, int64_t r0, int64_t r1, int64_t S, float lam, float *out,
                           float *restrict aout) { /* out may be x: row r + 1 is read before it is written */
    const float log2e = (float)1.4426950408889634;
    float mu, q;
    simam_sums nx;
    if (r0 >= r1) return;
    simam_stats_f32(x + r0 * S, S, &mu, &q);
    for (int64_t r = r0; r < r1; r++) {
        const float *p = x + r * S;
        float a = 1.0f / (4.0f * (q / (float)(S - 1) + lam));
        if (aout) aout[r] = a;
        if (r + 1 < r1) {
            simam_sums_begin(&nx, p + S, S);
            simam_apply_f32(p, out + r * S, S, mu, a * log2e, 0.5f * log2e, &nx, p + S);
            simam_sums_finish(&nx, p + S, S, &mu, &q);
        } else {
            simam_apply_f32(p, out + r * S, S, mu, a * log2e, 0.5f * log2e, NULL, NULL);
        }
    }
}

/* scale_row's product (modes 0 and 1, or no spatial gate) with streaming stores: Y
 * goes to memory without its lines being read into the caches first (write-allocate)
 * and without evicting X. Only for Y that would not stay cached for its reader anyway
 * (gate_eval decides). Returns 0, having done nothing, for mode 2 or a misaligned o.
 * The caller fences (_mm_sfence) before anything reads Y. */
static int scale_row_stream_f32(const float *p, float a, const float *restrict q, int64_t S, int mode, float *o) {
    if ((q && mode == 2) || ((uintptr_t)o & 3u)) return 0;
    const __m512 va = _mm512_set1_ps(a);
    int64_t head = imin64(S, (int64_t)(((64u - ((uintptr_t)o & 63u)) & 63u) / 4u)); /* to a 64-byte line */
#define SCALE_Y(v, at, m) (!q ? _mm512_mul_ps(v, va)                                                      \
                           : mode == 0 ? _mm512_mul_ps(v, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, q + (at)))) \
                                       : _mm512_mul_ps(v, _mm512_add_ps(va, _mm512_maskz_loadu_ps(m, q + (at)))))
    if (head) {
        __mmask16 m = tail16(head);
        _mm512_mask_storeu_ps(o, m, SCALE_Y(_mm512_maskz_loadu_ps(m, p), 0, m));
    }
    int64_t i = head;
    for (; i + 16 <= S; i += 16)
        _mm512_stream_ps(o + i, SCALE_Y(_mm512_loadu_ps(p + i), i, (__mmask16)0xFFFF));
    if (i < S) {
        __mmask16 m = tail16(S - i);
        _mm512_mask_storeu_ps(o + i, m, SCALE_Y(_mm512_maskz_loadu_ps(m, p + i), i, m));
    }
#undef SCALE_Y
    return 1;
}

/* sigmoid(g) = 1 / (1 + 2^t), t = -g log2 e, in place, with exp2_tab_ps (the generic
 * loop, Cephes' exp, took half of coord's gate network). t is carried as t + t_lo (the
 * product's rounding error by an FMA, and log2 e's own): for g << 0, where sigmoid is
 * about 2^t, an error of |t| 2^-24 in t alone gave relative errors of 4e-6. g is
 * clamped to [-104, 104] (sigmoid is 1, or 0 within 1e-45, beyond); NaN propagates. */
static void sigmoid_inplace_avx512(float *restrict g, int64_t n) {
    const __m512 lo = _mm512_set1_ps(-104.0f), hi = _mm512_set1_ps(104.0f), one = _mm512_set1_ps(1.0f);
    const __m512 nl_hi = _mm512_set1_ps(-1.44269502162933349609375f), nl_lo = _mm512_set1_ps(-1.925963033500011e-08f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 z = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_maskz_loadu_ps(m, g + i))); /* finite t, t_lo */
        __m512 t = _mm512_mul_ps(z, nl_hi);
        __m512 t_lo = _mm512_fmadd_ps(z, nl_lo, _mm512_fmsub_ps(z, nl_hi, t)); /* exact z nl_hi - t, + z nl_lo */
        _mm512_mask_storeu_ps(g + i, m, _mm512_div_ps(one, _mm512_add_ps(one, exp2_tab_ps(t, t_lo))));
    }
}
#endif


/* The whole-sample driver of the eval kernels (fused_impl.h): with nth threads,
 * the first whole_samples(B, nth) samples go one sample per task, each thread
 * running fn(b, ctx, ws) with its scratch buffer of ws_bytes; the caller runs the
 * samples left over (fewer than the threads) stage by stage over all threads.
 * Returns 1 if a scratch buffer could not be allocated, else 0. */
static int64_t whole_samples(int64_t B, int nth) { return nth > 1 ? (B / nth) * nth : B; }

typedef void (*sample_fn)(int64_t b, const void *ctx, void *ws);

static int run_samples(int64_t nfull, size_t ws_bytes, sample_fn fn, const void *ctx, int nth) {
    int failed = 0;
    if (nfull <= 0) return 0;
    #pragma omp parallel num_threads(nth) reduction(|:failed)
    {
        void *ws = thread_scratch(ws_bytes);
        if (!ws) failed = 1;
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < nfull; b++)
            if (ws) fn(b, ctx, ws);
    }
    return failed;
}

#include "gates.h"

/* kernels.def, included once per element type below, declares each kernel */
#define KERNEL(ret, name, params) ret NAME(name) params;

/* CALL(n) with n = nf as a constant for the common row widths (1-4 and 7 vectors:
 * 8-32 and 56 floats), so that arrays indexed by the vector number stay in registers;
 * CALL(nf) otherwise */
#define WITH_CONST_NF(nf, CALL)                     \
    switch (nf) {                                   \
    case 1: CALL(1); break;                         \
    case 2: CALL(2); break;                         \
    case 3: CALL(3); break;                         \
    case 4: CALL(4); break;                         \
    case 7: CALL(7); break;                         \
    default: CALL(nf);                              \
    }

#ifndef VBYTES
#define VBYTES 32 /* explicit vectors: 8 floats / 4 doubles (AVX2, two NEON registers) */
#endif
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define HAVE_SHUFFLEVECTOR 1
#else
#define HAVE_SHUFFLEVECTOR 0
#endif

#define T float
#define IT int32_t
#define LANES (VBYTES / 4)
#define SUF f32
#define EXP exp_f32
#define EXP2NEG exp2neg_f32
#ifdef HAVE_AVX512_F32 /* the float-only paths above replace these generic loops */
#define SIMAM_ROWS simam_rows_f32
#define SCALE_ROW_STREAM scale_row_stream_f32
#define SIGMOID_INPLACE sigmoid_inplace_avx512
#endif
#define SQRT sqrtf
#include "kernels.def" /* the declarations the definitions below must match */
#include "gates_impl.h"
#include "fused_impl.h"
#undef CB
#undef vec
#undef ivec
#undef VL
#undef MAXV
#undef T
#undef SQRT
#undef EXP2NEG
#undef SIMAM_ROWS
#undef SCALE_ROW_STREAM
#undef SIGMOID_INPLACE
#undef IT
#undef LANES
#undef SUF
#undef EXP

#define T double
#define IT int64_t
#define LANES (VBYTES / 8)
#define SUF f64
#define EXP exp
#define EXP2NEG exp2
#define SQRT sqrt
#include "kernels.def" /* the declarations the definitions below must match */
#include "gates_impl.h"
#include "fused_impl.h"
#undef CB
#undef vec
#undef ivec
#undef VL
#undef MAXV
#undef T
#undef SQRT
#undef EXP2NEG
#undef SIMAM_ROWS
#undef SCALE_ROW_STREAM
#undef SIGMOID_INPLACE
#undef IT
#undef LANES
#undef SUF
#undef EXP

long long convattn_schunk(void) { return SCHUNK; }
