/* convattn native CPU kernels for the gating attention modules.
 *
 * Plain C99 + OpenMP, compiled on first use by convattn.layers.native and called
 * through ctypes on contiguous (B, C, S) tensors (S = product of the spatial
 * sizes). Each kernel is one pass over the full-size activation; the small gate
 * networks (MLPs, 1-D / k x k convs on pooled maps, BN) stay in PyTorch.
 *
 * Every kernel exists for float (suffix _f32) and double (_f64). Threads: the
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

#define T float
#define SUF f32
#define EXP exp_f32
#include "gates_impl.h"
#undef T
#undef SUF
#undef EXP

#define T double
#define SUF f64
#define EXP exp
#include "gates_impl.h"
#undef T
#undef SUF
#undef EXP

int convattn_abi_version(void) { return 1; }
long long convattn_schunk(void) { return SCHUNK; }
