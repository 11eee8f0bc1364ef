/* The kernel library's shared types: the merge modes and gate_eval's arguments.
 *
 * Included once by gates.c; the Python binding (convattn/fast/native.py) reads
 * the enums and the struct from this file to build its mirror of them, so the two
 * cannot fall out of step. Keep to the forms used here: one enum per line, struct
 * fields as "type name[, name...];" with types int64_t, double or a pointer. */
#ifndef CONVATTN_GATES_H
#define CONVATTN_GATES_H
#include <stdint.h>

/* How a product merges a channel gate gc and a spatial gate gs: Y = X gc gs,
 * Y = X (gc + gs), or Y = max(X gc, X gs) (scSE) */
enum gate_merge { GATE_PRODUCT = 0, GATE_SUM = 1, GATE_MAX = 2 };

/* gate_eval's description of a module (see fused_impl.h); every field 8 bytes.
 * Pointers are to the element type. */
enum gate_channel { GE_NONE = 0, GE_MLP = 1, GE_MLP_MAX = 2, GE_CONV1D = 3 };  /* ch_kind */
enum gate_spatial { GE_SP_NONE = 0, GE_SP_CONV = 1, GE_SP_LINEAR = 2 };       /* sp_kind */
typedef struct {
    int64_t B, C, S, H, W;
    int64_t ch_kind;        /* channel gate: none, MLP(avg), MLP(avg) + MLP(max), conv1d(avg) */
    int64_t hidden;         /* MLP: W1 (hidden, C), b1 (hidden), W2 (C, hidden), b2 (C); biases nullable */
    const void *w1, *b1, *w2, *b2;
    int64_t k1;             /* conv1d: k taps (odd), zero padding k / 2, no bias */
    const void *cw1;
    int64_t sp_kind;        /* spatial gate: none, k x k conv on two channel pools, linear (1x1 conv C -> 1) */
    int64_t sequential;     /* conv: pool over x * gc instead of x */
    int64_t max_first;      /* conv: input planes (max, mean) if 1, (mean, max) if 0 */
    int64_t k2;             /* conv: (2, k, k) kernel, odd k, needs H * W == S */
    const void *cw2;
    const void *lw;         /* linear: (C,) weights */
    double s_scale, s_shift; /* set by gate_eval: conv: sigmoid(scale conv + shift); linear: shift = bias */
    int64_t mode;           /* merge of the gates: an enum gate_merge */
    /* conv: the one-channel BN in eval after it (weight, bias nullable; mean, var
     * required) and the conv's bias (nullable); linear: its bias (nullable: none).
     * Read and folded at each call, so values changed in place count. */
    const void *s_bn_w, *s_bn_b, *s_bn_mean, *s_bn_var, *s_cbias;
    double s_eps;
    const void *lb;
} gate_eval_args;

#endif
