/* Kernel bodies for one element type; included by gates.c once per type with
 * T (the element type), EXP (its exp function) and NAME(f) (f + type suffix)
 * defined. See gates.c for the conventions. */

/* Explicit vectors of VL values (GCC/Clang vector extensions), used by the row
 * reductions below and by the short-row kernels (coord, triplet). */
#define VL ((int64_t)(VBYTES / sizeof(T)))
#define MAXV 16 /* rows up to MAXV * VL values take the vector path */
typedef T NAME(vec) __attribute__((vector_size(VBYTES)));
typedef IT NAME(ivec) __attribute__((vector_size(VBYTES)));
#define vec NAME(vec)
#define ivec NAME(ivec)

static inline vec NAME(vload)(const T *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void NAME(vstore)(T *p, vec v) { memcpy(p, &v, sizeof v); }
static inline T NAME(vsum)(vec v) { T s = 0; for (int64_t i = 0; i < VL; i++) s += v[i]; return s; }
/* {sum(r[0]), ..., sum(r[VL - 1])}: VL horizontal sums at once, by pairwise
 * interleaving (log2 VL levels of two shuffles and an add) instead of VL
 * reductions of one vector each (coord's row means: 28 rows of 28 values per plane). */
static inline vec NAME(vsum_rows)(const vec *r) {
#if HAVE_SHUFFLEVECTOR && LANES == 8
    vec t[4], u[2];
    for (int i = 0; i < 4; i++)
        t[i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14)
             + __builtin_shufflevector(r[2 * i], r[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int i = 0; i < 2; i++)
        u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13)
             + __builtin_shufflevector(t[2 * i], t[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return __builtin_shufflevector(u[0], u[1], 0, 1, 2, 3, 8, 9, 10, 11)
         + __builtin_shufflevector(u[0], u[1], 4, 5, 6, 7, 12, 13, 14, 15);
#elif HAVE_SHUFFLEVECTOR && LANES == 4
    vec t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 2, 6) + __builtin_shufflevector(r[0], r[1], 1, 5, 3, 7);
    vec t1 = __builtin_shufflevector(r[2], r[3], 0, 4, 2, 6) + __builtin_shufflevector(r[2], r[3], 1, 5, 3, 7);
    return __builtin_shufflevector(t0, t1, 0, 1, 4, 5) + __builtin_shufflevector(t0, t1, 2, 3, 6, 7);
#else
    vec s;
    for (int64_t i = 0; i < VL; i++) s[i] = NAME(vsum)(r[i]);
    return s;
#endif
}

/* lane-wise a > b ? a : b (b where either is NaN) */
static inline vec NAME(vmax)(vec a, vec b) { ivec gt = a > b; return (vec)(((ivec)a & gt) | ((ivec)b & ~gt)); }
/* lanes >= VL - tail kept, the others zeroed (bitwise: inf and NaN stay intact) */
static inline ivec NAME(tail_mask)(int64_t tail) {
    ivec m;
    for (int64_t i = 0; i < VL; i++) m[i] = i >= VL - tail ? (IT)-1 : 0;
    return m;
}

/* Row reductions with four vector accumulators (4 VL independent partial sums: a
 * single accumulator is bound by the add latency, not by memory), then single
 * vectors, then the last VL values loaded at n - VL with the lanes already counted
 * masked off: no scalar remainder unless n < VL (a 28 x 28 map has 784 = 24 x 32
 * + 16 values; its 16-value scalar tail took about as long as the 24 blocks). */
static inline T NAME(sum_impl)(const T *restrict p, int64_t n) {
    if (n < VL) { T s = 0; for (int64_t i = 0; i < n; i++) s += p[i]; return s; }
    vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int64_t i = 0;
    for (; i + 4 * VL <= n; i += 4 * VL) {
        a0 += NAME(vload)(p + i); a1 += NAME(vload)(p + i + VL);
        a2 += NAME(vload)(p + i + 2 * VL); a3 += NAME(vload)(p + i + 3 * VL);
    }
    for (; i + VL <= n; i += VL) a0 += NAME(vload)(p + i);
    if (i < n) a1 += (vec)((ivec)NAME(vload)(p + n - VL) & NAME(tail_mask)(n - i));
    return NAME(vsum)((a0 + a1) + (a2 + a3));
}

/* sum and max together (max ignores NaN: the callers check the sum). The max
 * takes the last VL values unmasked: values counted twice do not change it. */
static inline void NAME(sum_max_impl)(const T *restrict p, int64_t n, T *sum, T *max) {
    if (n < VL) {
        T s = 0, m = p[0];
        for (int64_t i = 0; i < n; i++) { s += p[i]; m = p[i] > m ? p[i] : m; }
        *sum = s; *max = m; return;
    }
    vec a0 = {0}, a1 = {0}, m0 = NAME(vload)(p), m1 = m0;
    int64_t i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        vec v0 = NAME(vload)(p + i), v1 = NAME(vload)(p + i + VL);
        a0 += v0; a1 += v1;
        m0 = NAME(vmax)(v0, m0); m1 = NAME(vmax)(v1, m1);
    }
    for (; i + VL <= n; i += VL) { vec v = NAME(vload)(p + i); a0 += v; m0 = NAME(vmax)(v, m0); }
    if (i < n) {
        vec v = NAME(vload)(p + n - VL);
        a1 += (vec)((ivec)v & NAME(tail_mask)(n - i));
        m1 = NAME(vmax)(v, m1);
    }
    m0 = NAME(vmax)(m1, m0);
    T m = m0[0];
    for (int64_t j = 1; j < VL; j++) m = m0[j] > m ? m0[j] : m;
    *sum = NAME(vsum)(a0 + a1); *max = m;
}

/* sum of (p - mu)^2 */
static inline T NAME(sqdev_impl)(const T *restrict p, int64_t n, T mu) {
    if (n < VL) { T s = 0; for (int64_t i = 0; i < n; i++) { T d = p[i] - mu; s += d * d; } return s; }
    vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, d;
    int64_t i = 0;
    for (; i + 4 * VL <= n; i += 4 * VL) {
        d = NAME(vload)(p + i) - mu; a0 += d * d;
        d = NAME(vload)(p + i + VL) - mu; a1 += d * d;
        d = NAME(vload)(p + i + 2 * VL) - mu; a2 += d * d;
        d = NAME(vload)(p + i + 3 * VL) - mu; a3 += d * d;
    }
    for (; i + VL <= n; i += VL) { d = NAME(vload)(p + i) - mu; a0 += d * d; }
    if (i < n) { d = NAME(vload)(p + n - VL) - mu; d = (vec)((ivec)d & NAME(tail_mask)(n - i)); a1 += d * d; }
    return NAME(vsum)((a0 + a1) + (a2 + a3));
}

/* max of n values, NaN ignored (the callers check for NaN through the sum). */
static inline T NAME(row_max_impl)(const T *p, int64_t n) {
    T m = p[0];
    #pragma omp simd reduction(max:m)
    for (int64_t i = 1; i < n; i++) m = p[i] > m ? p[i] : m;
    return m;
}
#define row_max NAME(row_max_impl)

/* mean (and, with mx, max: NaN if any value is NaN, as torch.amax) of one row */
static inline void NAME(pool_row)(const T *restrict p, int64_t S, T *mean, T *mx) {
    T s = 0, m = p[0];
    if (mx) NAME(sum_max_impl)(p, S, &s, &m);
    else s = NAME(sum_impl)(p, S);
    *mean = s / (T)S;
    if (!mx) return;
    if (s != s) { /* a NaN somewhere (or inf - inf): torch.amax gives NaN if any */
        for (int64_t i = 0; i < S; i++) if (p[i] != p[i]) { m = p[i]; break; }
    }
    *mx = m;
}

/* mean (and max, first argmax, tie count) of every row over its S values. */
void NAME(pool_spatial)(const T *restrict x, int64_t rows, int64_t S, T *restrict mean, T *restrict mx,
                        int64_t *restrict idx, int32_t *restrict cnt, int nth) {
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const T *p = x + r * S;
        NAME(pool_row)(p, S, mean + r, mx ? mx + r : NULL);
        if (!idx) continue;
        T m = mx[r];
        int64_t first = S, c = 0;
        if (m == m && S < ((int64_t)1 << (8 * sizeof(IT) - 2))) {
            /* branch-free in IT-sized lanes (vectorised): the first arg-max is the least
             * matching index. The branchy scan took 1.2 of CBAM's 3.6 ms train forward
             * at (8, 256, 28, 28). */
            IT f = (IT)S, t = 0;
            #pragma omp simd reduction(min:f) reduction(+:t)
            for (IT i = 0; i < (IT)S; i++) {
                IT eq = p[i] == m, at = eq ? i : (IT)S;
                t += eq;
                f = at < f ? at : f;
            }
            first = f; c = t;
        } else { /* a NaN max (the NaNs are the arg-maxes), or rows too long for IT: rare */
            for (int64_t i = 0; i < S; i++)
                if (m == m ? p[i] == m : p[i] != p[i]) { if (first == S) first = i; c++; }
        }
        idx[r] = first == S ? 0 : first; cnt[r] = (int32_t)c;
    }
}

/* mean and max over channels of u = x * g[c] (g nullable: u = x) for the n <= SCHUNK
 * positions s0 .. s0 + n of one sample xb (C rows of S values); mx, idx, cnt nullable.
 * Output pointers point at position s0. */
static void NAME(pool_channel_task)(const T *restrict xb, const T *restrict gb, int64_t C, int64_t S, int64_t s0,
                                    int64_t n, T *restrict mb, T *restrict xo, int64_t *restrict ib,
                                    int32_t *restrict cb) {
    T acc[SCHUNK], m[SCHUNK];
    xb += s0;
    T g0 = gb ? gb[0] : (T)1;
    for (int64_t i = 0; i < n; i++) { T u = xb[i] * g0; acc[i] = u; m[i] = u; }
    int64_t c = 1;
    for (; c + 4 <= C; c += 4) { /* four channels per sweep: fewer accumulator loads/stores */
        const T *p0 = xb + c * S, *p1 = p0 + S, *p2 = p1 + S, *p3 = p2 + S;
        T g0 = gb ? gb[c] : (T)1, g1 = gb ? gb[c + 1] : (T)1;
        T g2 = gb ? gb[c + 2] : (T)1, g3 = gb ? gb[c + 3] : (T)1;
        for (int64_t i = 0; i < n; i++) {
            T u0 = p0[i] * g0, u1 = p1[i] * g1, u2 = p2[i] * g2, u3 = p3[i] * g3;
            T a = u0 > u1 ? u0 : u1, b2 = u2 > u3 ? u2 : u3, mm = a > b2 ? a : b2;
            acc[i] += (u0 + u1) + (u2 + u3);
            m[i] = mm > m[i] ? mm : m[i];
        }
    }
    for (; c < C; c++) {
        const T *p = xb + c * S; T gc = gb ? gb[c] : (T)1;
        for (int64_t i = 0; i < n; i++) {
            T u = p[i] * gc; acc[i] += u; m[i] = u > m[i] ? u : m[i];
        }
    }
    for (int64_t i = 0; i < n; i++) mb[i] = acc[i] / (T)C;
    if (!xo) return;
    for (int64_t i = 0; i < n; i++) {
        if (acc[i] != acc[i]) { /* NaN somewhere in this column */
            for (int64_t c = 0; c < C; c++) {
                T u = xb[c * S + i] * (gb ? gb[c] : (T)1);
                if (u != u) { m[i] = u; break; }
            }
        }
        xo[i] = m[i];
    }
    if (!ib) return;
    /* first arg-max and ties per position, branch-free in IT-sized lanes (vectorised;
     * the branchy loop took 0.58 ms at (8, 256, 28, 28), the max pass itself 0.09) */
    IT first[SCHUNK], ties[SCHUNK];
    for (int64_t i = 0; i < n; i++) { first[i] = (IT)C; ties[i] = 0; }
    for (int64_t c = 0; c < C; c++) {
        const T *p = xb + c * S; T gc = gb ? gb[c] : (T)1;
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            T u = p[i] * gc;
            IT eq = (u == m[i]) | ((m[i] != m[i]) & (u != u));
            ties[i] += eq;
            first[i] = eq && (IT)c < first[i] ? (IT)c : first[i];
        }
    }
    for (int64_t i = 0; i < n; i++) { ib[i] = first[i] == (IT)C ? 0 : first[i]; cb[i] = (int32_t)ties[i]; }
}

/* mean and max over channels of u = x * g[b, c] (g nullable: u = x), per (b, s).   */
void NAME(pool_channel)(const T *restrict x, const T *restrict g, int64_t B, int64_t C, int64_t S,
                        T *restrict mean, T *restrict mx, int64_t *restrict idx, int32_t *restrict cnt, int nth) {
    int64_t nch = (S + SCHUNK - 1) / SCHUNK;
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t t = 0; t < B * nch; t++) {
        int64_t b = t / nch, s0 = (t % nch) * SCHUNK, n = imin64(SCHUNK, S - s0), o = b * S + s0;
        NAME(pool_channel_task)(x + b * C * S, g ? g + b * C : NULL, C, S, s0, n, mean + o, mx ? mx + o : NULL,
                                idx ? idx + o : NULL, idx ? cnt + o : NULL);
    }
}

/* out = x * gate, gate from gc (B, C) and gs (B, S), either nullable:              */
/* mode 0: gc * gs; mode 1: gc + gs; mode 2: max(x gc, x gs) / x (scSE max merge).  */
/* o may be p itself (in place): each o[i] from p[i] alone, no restrict on either    */
/* (GCC's run-time overlap check passes equal pointers to the vector loop: measured). */
static inline void NAME(scale_row)(const T *p, T a, const T *restrict q, int64_t S, int mode, T *o) {
    if (!q) { for (int64_t i = 0; i < S; i++) o[i] = p[i] * a; }
    else if (mode == GATE_PRODUCT) { for (int64_t i = 0; i < S; i++) o[i] = p[i] * a * q[i]; }
    else if (mode == GATE_SUM) { for (int64_t i = 0; i < S; i++) o[i] = p[i] * (a + q[i]); }
    else {
        for (int64_t i = 0; i < S; i++) {
            T u = p[i] * a, v = p[i] * q[i]; o[i] = (u >= v || u != u) ? u : v;
        }
    }
}

void NAME(scale)(const T *x, const T *restrict gc, const T *restrict gs, int64_t B, int64_t C,
                 int64_t S, int mode, T *out, int nth) {
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < B * C; r++)
        NAME(scale_row)(x + r * S, gc ? gc[r] : (T)1, gs ? gs + (r / C) * S : NULL, S, mode, out + r * S);
}

/* row[b, c] = sum_s a * b2 * w[b, s] (w nullable) and col[b, s] = sum_c a * b2 *   */
/* g[b, c] (g nullable), either output nullable. mode 2 (scSE max merge): the terms */
/* go to row where x gc >= x gs and to col otherwise (b2 = x, a = dy).              */
/* part: scratch of B * nchunks * C for the row partial sums.                       */
void NAME(dots)(const T *restrict a, const T *restrict b2, const T *restrict w, const T *restrict g, int64_t B, int64_t C,
                int64_t S, int mode, T *restrict row, T *restrict col, T *restrict part, int nth) {
    int64_t nch = (S + SCHUNK - 1) / SCHUNK;
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t t = 0; t < B * nch; t++) {
        int64_t bb = t / nch, s0 = (t % nch) * SCHUNK, n = imin64(SCHUNK, S - s0);
        T cacc[SCHUNK];
        for (int64_t i = 0; i < n; i++) cacc[i] = 0;
        const T *wb = w ? w + bb * S + s0 : NULL;
        T *pr = part + t * C;
        for (int64_t c = 0; c < C; c++) {
            const T *pa = a + (bb * C + c) * S + s0, *pb = b2 + (bb * C + c) * S + s0;
            T gcv = g ? g[bb * C + c] : (T)1, racc = 0;
            if (mode == GATE_MAX) {
                for (int64_t i = 0; i < n; i++) {
                    T xv = pb[i], d = pa[i] * xv, u = xv * gcv, v = xv * wb[i];
                    if (u >= v || u != u) racc += d; else cacc[i] += d;
                }
            } else if (wb) {
                for (int64_t i = 0; i < n; i++) {
                    T d = pa[i] * pb[i]; racc += d * wb[i]; cacc[i] += d * gcv;
                }
            } else {
                for (int64_t i = 0; i < n; i++) {
                    T d = pa[i] * pb[i]; racc += d; cacc[i] += d * gcv;
                }
            }
            pr[c] = racc;
        }
        if (col) { T *cb = col + bb * S + s0; for (int64_t i = 0; i < n; i++) cb[i] = cacc[i]; }
    }
    if (row) {
        #pragma omp parallel for num_threads(nth) schedule(static)
        for (int64_t r = 0; r < B * C; r++) {
            int64_t bb = r / C, c = r % C; T s = 0;
            for (int64_t k = 0; k < nch; k++) s += part[(bb * nch + k) * C + c];
            row[r] = s;
        }
    }
}

/* The input gradient of a gated output, one pass:                                 */
/* dx = dy * G + u[b,c] * v[b,s] + rc[b,c] + rs[b,s]                                */
/* G from gc, gs and mode as in scale_ (mode 2 needs x); u, v, rc, rs nullable     */
/* (u and v together).                                                              */
void NAME(grad_input)(const T *restrict dy, const T *restrict x, const T *restrict gc, const T *restrict gs, int64_t B,
                      int64_t C, int64_t S, int mode, const T *restrict u, const T *restrict v,
                      const T *restrict rc, const T *restrict rs, T *restrict dx, int nth) {
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < B * C; r++) {
        int64_t bb = r / C;
        const T *d = dy + r * S; T *o = dx + r * S;
        const T *q = gs ? gs + bb * S : NULL;
        const T *vv = v ? v + bb * S : NULL;
        const T *ss = rs ? rs + bb * S : NULL;
        T a = gc ? gc[r] : (T)1, uu = u ? u[r] : (T)0, cc = rc ? rc[r] : (T)0;
        if (mode == GATE_MAX) {
            const T *p = x + r * S;
            for (int64_t i = 0; i < S; i++) {
                T uu1 = p[i] * a, vv1 = p[i] * q[i];
                o[i] = d[i] * ((uu1 >= vv1 || uu1 != uu1) ? a : q[i]) + cc;
            }
        } else if (!q) { for (int64_t i = 0; i < S; i++) o[i] = d[i] * a + cc; }
        else if (mode == GATE_PRODUCT) { for (int64_t i = 0; i < S; i++) o[i] = d[i] * a * q[i] + cc; }
        else { for (int64_t i = 0; i < S; i++) o[i] = d[i] * (a + q[i]) + cc; }
        if (vv) for (int64_t i = 0; i < S; i++) o[i] += uu * vv[i];
        if (ss) for (int64_t i = 0; i < S; i++) o[i] += ss[i];
    }
}

/* SimAM, per row: mu = mean, v = sum (x - mu)^2 / (S - 1), a = 1 / (4 (v + lam)), */
/* y = x * sigmoid(a (x - mu)^2 + 0.5). Row-local: each row is read twice (the    */
/* second time from cache). SIMAM_ROWS, if defined, runs a block of rows.          */
WIDE void NAME(simam_fwd)(const T *x, int64_t rows, int64_t S, T lam, T *out, T *restrict aout,
                     int nth) { /* out may be x */
#ifdef SIMAM_ROWS
    /* one block of consecutive rows per thread, the split of schedule(static) */
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int t = 0; t < nth; t++) SIMAM_ROWS(x, rows * t / nth, rows * (t + 1) / nth, S, lam, out, aout);
#else
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const T *p = x + r * S; T *o = out + r * S;
        T mu = NAME(sum_impl)(p, S) / (T)S, q = NAME(sqdev_impl)(p, S, mu);
        T a = (T)1 / ((T)4 * (q / (T)(S - 1) + lam));
        /* exp(-e) = 2^(-e log2 e), e = a d^2 + 1/2 >= 1/2 */
        T al = a * (T)1.4426950408889634, bl = (T)0.5 * (T)1.4426950408889634;
        for (int64_t i = 0; i < S; i++) {
            T d = p[i] - mu; o[i] = p[i] / ((T)1 + EXP2NEG(-(al * d * d + bl)));
        }
        if (aout) aout[r] = a;
    }
#endif
}

/* SimAM backward, per row. With d = x - mu, e = a d^2 + 1/2, g = sigmoid(e),      */
/* y = x g: dL/de = dy x g (1 - g) = t; e depends on x through d and a:            */
/* dx = dy g + 2 a t d - 2 a mean(t d)... written out in the Python docstring.     */
WIDE void NAME(simam_bwd)(const T *restrict dy, const T *restrict x, int64_t rows, int64_t S, T lam,
                     const T *restrict ain, T *restrict dx, int nth) {
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const T *p = x + r * S, *d = dy + r * S; T *o = dx + r * S;
        T s = 0; for (int64_t i = 0; i < S; i++) s += p[i];
        T mu = s / (T)S, a = ain[r];
        T al = a * (T)1.4426950408889634, bl = (T)0.5 * (T)1.4426950408889634;
        T st = 0, std2 = 0;
        for (int64_t i = 0; i < S; i++) {
            T dd = p[i] - mu, g = (T)1 / ((T)1 + EXP2NEG(-(al * dd * dd + bl)));
            T t = d[i] * p[i] * g * ((T)1 - g);
            o[i] = t; st += t * dd; std2 += t * dd * dd;
        }
        /* da/dv = -4 a^2; dv/dx_i = 2 (x_i - mu) / (S - 1) */
        T kv = std2 * ((T)-4 * a * a) * (T)2 / (T)(S - 1);
        T mt = st / (T)S;
        for (int64_t i = 0; i < S; i++) {
            T dd = p[i] - mu, g = (T)1 / ((T)1 + EXP2NEG(-(al * dd * dd + bl)));
            T t = o[i];
            o[i] = d[i] * g + (T)2 * a * (t * dd - mt) + kv * dd;
        }
    }
}

/* Eval-only gate networks on pooled (B, C) vectors.
 * mlp2: out = sigmoid(MLP(za) [+ MLP(zm)]), MLP(z) = W2 relu(W1 z + b1) + b2. */
void NAME(mlp2_sigmoid)(const T *restrict za, const T *restrict zm, int64_t B, int64_t C, int64_t H,
                        const T *restrict w1, const T *restrict b1, const T *restrict w2, const T *restrict b2, T *restrict out) {
    T hbuf[256];
    for (int64_t bb = 0; bb < B; bb++) {
        T *o = out + bb * C;
        for (int64_t c = 0; c < C; c++) o[c] = 0;
        for (int pass = 0; pass < (zm ? 2 : 1); pass++) {
            const T *z = (pass ? zm : za) + bb * C;
            for (int64_t h0 = 0; h0 < H; h0 += 256) {
                int64_t nh = imin64(256, H - h0);
                for (int64_t h = 0; h < nh; h++) {
                    const T *wr = w1 + (h0 + h) * C; T s = 0;
                    for (int64_t c = 0; c < C; c++) s += wr[c] * z[c];
                    s += b1 ? b1[h0 + h] : (T)0;
                    hbuf[h] = s < 0 ? (T)0 : s; /* NaN passes, as torch.relu */
                }
                for (int64_t c = 0; c < C; c++) {
                    const T *wr = w2 + c * H + h0; T s = 0;
                    for (int64_t h = 0; h < nh; h++) s += wr[h] * hbuf[h];
                    o[c] += s;
                }
            }
            if (b2) for (int64_t c = 0; c < C; c++) o[c] += b2[c];
        }
        for (int64_t c = 0; c < C; c++) o[c] = (T)1 / ((T)1 + EXP(-o[c]));
    }
}

/* conv1d over channels (ECA): out = sigmoid(sum_j w[j] z[c + j - pad] + bias),
 * zero padding, one input and one output channel. */
void NAME(conv1d_sigmoid)(const T *restrict z, int64_t B, int64_t C, int64_t k, int64_t pad,
                          const T *restrict w, const T *restrict bias, T *restrict out) {
    for (int64_t bb = 0; bb < B; bb++) {
        const T *zb = z + bb * C; T *o = out + bb * C;
        for (int64_t c = 0; c < C; c++) {
            T s = 0;
            for (int64_t j = 0; j < k; j++) {
                int64_t i = c + j - pad;
                if (i >= 0 && i < C) s += w[j] * zb[i];
            }
            s += bias ? bias[0] : (T)0;
            o[c] = (T)1 / ((T)1 + EXP(-s));
        }
    }
}

static inline T NAME(dot_row)(const T *restrict p, const T *restrict q, int64_t S) {
    T s = 0;
    #pragma omp simd reduction(+:s)
    for (int64_t i = 0; i < S; i++) s += p[i] * q[i];
    return s;
}

/* A k x k conv gate in eval, 2-D: out = sigmoid(scale * conv(P) + shift), P the
 * I = 1 or 2 planes p0, p1 (each (B, H, W), p1 nullable), one output channel,
 * kernel w (I, k, k), stride 1, zero padding k / 2 (k odd). BN in eval and a
 * conv bias fold into scale and shift. (CBAM's and triplet attention's gates.)
 *
 * Each sample's I planes are copied into zero-padded planes of width
 * Wp = W + 2 pad; every kernel row (i, dy) is then one long contiguous pass over
 * the flattened H x Wp output, all k taps of the row per output value (k
 * multiply-adds per accumulator load and store); the pad columns compute values
 * that are thrown away. Vectorises well even for small W. */
static int64_t NAME(conv2d_ws)(int64_t H, int64_t W, int64_t k) { /* workspace values per sample */
    int64_t pad = k / 2, Wp = W + 2 * pad, Hp = H + 2 * pad;
    return 2 * Hp * Wp + 2 * pad + H * Wp;
}

static void NAME(conv2d_sample)(const T *restrict p0, const T *restrict p1, int64_t H, int64_t W,
                                const T *restrict w, int64_t k, T scale, T shift, int act, T *restrict o,
                                T *restrict ws) {
    int64_t I = p1 ? 2 : 1;
    int64_t pad = k / 2, Wp = W + 2 * pad, Hp = H + 2 * pad;
    T *restrict pin = ws, *restrict acc = ws + 2 * Hp * Wp + 2 * pad;
    memset(pin, 0, (size_t)(I * Hp * Wp + 2 * pad) * sizeof(T));
    for (int64_t i = 0; i < I; i++)
        for (int64_t y = 0; y < H; y++)
            memcpy(pin + (i * Hp + y + pad) * Wp + pad, (i ? p1 : p0) + y * W, (size_t)W * sizeof(T));
    /* blocks of output rows so that the accumulator block stays in L1 */
    int64_t rows_per = 2048 / Wp > 0 ? 2048 / Wp : 1;
    for (int64_t y0 = 0; y0 < H; y0 += rows_per) {
        int64_t j0 = y0 * Wp, j1 = (y0 + rows_per < H ? y0 + rows_per : H) * Wp;
        for (int64_t j = j0; j < j1; j++) acc[j] = 0;
        for (int64_t i = 0; i < I; i++)
            for (int64_t dy = 0; dy < k; dy++) {
                const T *wr = w + (i * k + dy) * k;
                const T *src = pin + (i * Hp + dy) * Wp;
                if (k == 7) {
                    T w0 = wr[0], w1 = wr[1], w2 = wr[2], w3 = wr[3], w4 = wr[4], w5 = wr[5], w6 = wr[6];
                    for (int64_t j = j0; j < j1; j++)
                        acc[j] += ((w0 * src[j] + w1 * src[j + 1]) + (w2 * src[j + 2] + w3 * src[j + 3])) +
                                  ((w4 * src[j + 4] + w5 * src[j + 5]) + w6 * src[j + 6]);
                } else if (k == 3) {
                    T w0 = wr[0], w1 = wr[1], w2 = wr[2];
                    for (int64_t j = j0; j < j1; j++) acc[j] += (w0 * src[j] + w1 * src[j + 1]) + w2 * src[j + 2];
                } else {
                    for (int64_t dx = 0; dx < k; dx++) {
                        T wv = wr[dx];
                        for (int64_t j = j0; j < j1; j++) acc[j] += wv * src[j + dx];
                    }
                }
            }
    }
    if (act)
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++)
                o[y * W + x] = (T)1 / ((T)1 + EXP(-(scale * acc[y * Wp + x] + shift)));
    else
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++) o[y * W + x] = scale * acc[y * Wp + x] + shift;
}

/* act = 1: the gate above; act = 0: scale * conv + shift, no sigmoid (the raw conv
 * for autograd). Returns 0, or 1 when a workspace could not be allocated. */
int NAME(conv2d_gate)(const T *restrict p0, const T *restrict p1, int64_t B, int64_t H, int64_t W,
                      const T *restrict w, int64_t k, T scale, T shift, int act, T *restrict out, int nth) {
    int64_t nws = NAME(conv2d_ws)(H, W, k);
    int failed = 0;
    #pragma omp parallel num_threads(nth) reduction(|:failed)
    {
        T *ws = (T *)thread_scratch((size_t)nws * sizeof(T));
        if (!ws) failed = 1;
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++)
            if (ws) NAME(conv2d_sample)(p0 + b * H * W, p1 ? p1 + b * H * W : NULL, H, W, w, k, scale, shift, act,
                                        out + b * H * W, ws);
    }
    return failed;
}

/* The backward of the raw conv (act = 0, scale 1, shift 0) given dL/dout = go (B, H, W):
 * dz_i = the same-padding correlation of go with w_i rotated by 180 degrees (dz0, dz1
 * nullable), dw[i, dy, dx] = sum_{b, p, q} go[b, p, q] z_i[b, p + dy - pad, q + dx - pad]
 * (dw nullable), as dot products over the padded flattened layout of conv2d_sample.
 * Returns 0, or 1 when a workspace could not be allocated. */
int NAME(conv2d_bwd)(const T *restrict go, const T *restrict p0, const T *restrict p1, int64_t B, int64_t H, int64_t W,
                     const T *restrict w, int64_t k, T *restrict dz0, T *restrict dz1, T *restrict dw, int nth) {
    int64_t I = p1 ? 2 : 1, pad = k / 2, Wp = W + 2 * pad, Hp = H + 2 * pad, n = H * Wp, kk = k * k;
    T *wf = (T *)malloc((size_t)(I * kk) * sizeof(T));
    if (!wf) return 1;
    for (int64_t i = 0; i < I; i++)
        for (int64_t t = 0; t < kk; t++) wf[i * kk + t] = w[i * kk + (kk - 1 - t)];
    if (dw) for (int64_t t = 0; t < I * kk; t++) dw[t] = 0;
    int64_t nws = NAME(conv2d_ws)(H, W, k) + I * Hp * Wp + 2 * pad + n + I * kk;
    int failed = 0;
    #pragma omp parallel num_threads(nth) reduction(|:failed)
    {
        T *ws = (T *)thread_scratch((size_t)nws * sizeof(T));
        if (!ws) failed = 1;
        T *zp = ws ? ws + NAME(conv2d_ws)(H, W, k) : NULL;
        T *gop = ws ? zp + I * Hp * Wp + 2 * pad : NULL, *dwp = ws ? gop + n : NULL;
        if (ws) for (int64_t t = 0; t < I * kk; t++) dwp[t] = 0;
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            if (!ws) continue;
            const T *g = go + b * H * W;
            if (dz0) NAME(conv2d_sample)(g, NULL, H, W, wf, k, (T)1, (T)0, 0, dz0 + b * H * W, ws);
            if (dz1) NAME(conv2d_sample)(g, NULL, H, W, wf + kk, k, (T)1, (T)0, 0, dz1 + b * H * W, ws);
            if (!dw) continue;
            memset(zp, 0, (size_t)(I * Hp * Wp + 2 * pad) * sizeof(T));
            for (int64_t i = 0; i < I; i++)
                for (int64_t y = 0; y < H; y++)
                    memcpy(zp + (i * Hp + y + pad) * Wp + pad, (i ? p1 : p0) + (b * H + y) * W, (size_t)W * sizeof(T));
            for (int64_t y = 0; y < H; y++) {
                memcpy(gop + y * Wp, g + y * W, (size_t)W * sizeof(T));
                for (int64_t q = W; q < Wp; q++) gop[y * Wp + q] = 0;
            }
            for (int64_t i = 0; i < I; i++)
                for (int64_t dy = 0; dy < k; dy++)
                    for (int64_t dx = 0; dx < k; dx++)
                        dwp[(i * k + dy) * k + dx] += NAME(dot_row)(zp + (i * Hp + dy) * Wp + dx, gop, n);
        }
        if (ws && dw) {
            #pragma omp critical
            for (int64_t t = 0; t < I * kk; t++) dw[t] += dwp[t];
        }
    }
    free(wf);
    return failed;
}

/* Coordinate attention, per row (b, c) of H x W values:
 * coord_pool:  zh[h] = mean_w x[h, w], zw[w] = mean_h x[h, w];
 * coord_scale: y = x * gh[h] * gw[w];
 * coord_dots:  dgh[h] = sum_w dy x gw[w], dgw[w] = sum_h dy x gh[h];
 * coord_grad:  dx = dy gh[h] gw[w] + rh[h] + rw[w]. */
/* Short rows (W = 7 .. 56 values: row and column sums of a small plane) in
 * explicit vectors of VL values (GCC/Clang vector extensions): a row is
 * W / VL full vectors plus, when W is not a multiple of VL, one vector loaded at
 * W - VL with its already-counted lanes masked off (no scalar remainder loop).
 * The column sums of the full vectors and of the masked tail stay in registers for
 * the widths coord_pool_row specialises (1-4 and 7 vectors per row). */

/* The vector path of coord_pool_row for nf = W / VL full vectors per row (a
 * constant after inlining, see below). Four rows per sweep (the column sums updated
 * once per four rows) and VL rows per group, so that the row vectors kept for
 * vsum_rows have fixed indices; rows left over (H % VL, or all rows when VL % 4 != 0)
 * go one at a time. */
static inline __attribute__((always_inline)) void NAME(pool_plane)(const T *restrict p, int64_t H, int64_t W,
                                                                  int64_t nf, T *restrict a, T *restrict bw) {
    int64_t tail = W - nf * VL;
    vec cacc[MAXV], ctail = {0}, zero = {0};
    ivec mask = NAME(tail_mask)(tail);
    for (int64_t k = 0; k < nf; k++) cacc[k] = zero;
    int64_t h = 0;
    for (; VL % 4 == 0 && h + VL <= H; h += VL) {
        vec rows[VL];
        for (int64_t g = 0; g < VL; g += 4) {
            const T *q = p + (h + g) * W;
            vec r0 = zero, r1 = zero, r2 = zero, r3 = zero;
            for (int64_t k = 0; k < nf; k++) {
                vec v0 = NAME(vload)(q + k * VL), v1 = NAME(vload)(q + W + k * VL);
                vec v2 = NAME(vload)(q + 2 * W + k * VL), v3 = NAME(vload)(q + 3 * W + k * VL);
                r0 += v0; r1 += v1; r2 += v2; r3 += v3;
                cacc[k] += (v0 + v1) + (v2 + v3);
            }
            if (tail) {
                vec v0 = (vec)((ivec)NAME(vload)(q + W - VL) & mask), v1 = (vec)((ivec)NAME(vload)(q + 2 * W - VL) & mask);
                vec v2 = (vec)((ivec)NAME(vload)(q + 3 * W - VL) & mask), v3 = (vec)((ivec)NAME(vload)(q + 4 * W - VL) & mask);
                r0 += v0; r1 += v1; r2 += v2; r3 += v3;
                ctail += (v0 + v1) + (v2 + v3);
            }
            rows[g] = r0; rows[g + 1] = r1; rows[g + 2] = r2; rows[g + 3] = r3;
        }
        NAME(vstore)(a + h, NAME(vsum_rows)(rows));
    }
    for (; h < H; h++) { /* sums straight to a[h]: rows[] stays in registers above */
        const T *q = p + h * W;
        vec acc = zero;
        for (int64_t k = 0; k < nf; k++) { vec v = NAME(vload)(q + k * VL); acc += v; cacc[k] += v; }
        if (tail) { vec v = (vec)((ivec)NAME(vload)(q + W - VL) & mask); acc += v; ctail += v; }
        a[h] = NAME(vsum)(acc);
    }
    for (h = 0; h < H; h++) a[h] /= (T)W;
    for (int64_t k = 0; k < nf; k++) NAME(vstore)(bw + k * VL, cacc[k]);
    if (tail) for (int64_t w = W - tail; w < W; w++) bw[w] = ctail[w - (W - VL)];
    for (int64_t w = 0; w < W; w++) bw[w] /= (T)H;
}

static inline void NAME(coord_pool_row)(const T *restrict p, int64_t H, int64_t W, T *restrict a,
                                        T *restrict bw) {
    int64_t nf = W / VL;
    if (nf == 0 || nf > MAXV) { /* very short or long rows: plain loops */
        for (int64_t w = 0; w < W; w++) bw[w] = 0;
        for (int64_t h = 0; h < H; h++) {
            const T *q = p + h * W; T s = 0;
            #pragma omp simd reduction(+:s)
            for (int64_t w = 0; w < W; w++) { s += q[w]; bw[w] += q[w]; }
            a[h] = s / (T)W;
        }
        for (int64_t w = 0; w < W; w++) bw[w] /= (T)H;
        return;
    }
    /* a constant nf for the common widths: the column sums and row vectors then stay
     * in registers (with nf a variable they went through the stack every sweep).
     * 28 x 28 planes, Zen 4: 1 thread in L2, 100-107 -> 83-84 ns per plane; the
     * whole (8, 256, 28, 28) pool on 2 threads 96 -> 74 us (torch's mean: 49) */
#define POOL_PLANE(n) NAME(pool_plane)(p, H, W, n, a, bw)
    WITH_CONST_NF(nf, POOL_PLANE);
#undef POOL_PLANE
}

/* o[h, w] = p[h, w] * a[h] * q[w] for one H x W plane. Rows of at least VL values in
 * explicit vectors; a row's last vector is stored at W - VL, rewriting lanes of the
 * previous vector with the same values (no scalar remainder). o may be p itself: the
 * last vector's input is loaded before the row's other stores. */
static inline __attribute__((always_inline)) void NAME(scale_plane)(const T *p, const T *restrict a,
                                                                   const T *restrict q, int64_t H, int64_t W,
                                                                   int64_t nf, T *o) {
    vec qv[MAXV + 1];
    for (int64_t k = 0; k < nf; k++) qv[k] = NAME(vload)(q + k * VL);
    qv[nf] = NAME(vload)(q + W - VL);
    int has_tail = W != nf * VL;
    for (int64_t h = 0; h < H; h++) {
        T ah = a[h];
        const T *ph = p + h * W; T *oh = o + h * W;
        vec tail = has_tail ? NAME(vload)(ph + W - VL) : qv[nf];
        for (int64_t k = 0; k < nf; k++) NAME(vstore)(oh + k * VL, NAME(vload)(ph + k * VL) * ah * qv[k]);
        if (has_tail) NAME(vstore)(oh + W - VL, tail * ah * qv[nf]);
    }
}

static inline void NAME(outer_scale_plane)(const T *p, const T *restrict a, const T *restrict q, int64_t H,
                                           int64_t W, T *o) { /* o may be p */
    int64_t nf = W / VL;
    if (nf == 0 || nf > MAXV) {
        for (int64_t h = 0; h < H; h++) {
            T ah = a[h];
            for (int64_t w = 0; w < W; w++) o[h * W + w] = p[h * W + w] * ah * q[w];
        }
        return;
    }
#define SCALE_PLANE(n) NAME(scale_plane)(p, a, q, H, W, n, o)
    WITH_CONST_NF(nf, SCALE_PLANE); /* as coord_pool_row */
#undef SCALE_PLANE
}

void NAME(coord_pool)(const T *restrict x, int64_t rows, int64_t H, int64_t W, T *restrict z, int nth) {
    /* z: (rows, H + W), the H means then the W means of each row */
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        NAME(coord_pool_row)(x + r * H * W, H, W, z + r * (H + W), z + r * (H + W) + H);
}

void NAME(coord_scale)(const T *restrict x, const T *restrict gh, const T *restrict gw, int64_t rows, int64_t H, int64_t W,
                       T *restrict out, int nth) {
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        NAME(outer_scale_plane)(x + r * H * W, gh + r * H, gw + r * W, H, W, out + r * H * W);
    }
}

void NAME(coord_dots)(const T *restrict dy, const T *restrict x, const T *restrict gh, const T *restrict gw, int64_t rows, int64_t H,
                      int64_t W, T *restrict dgh, T *restrict dgw, int nth) {
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const T *d = dy + r * H * W, *p = x + r * H * W, *a = gh + r * H, *bw = gw + r * W;
        T *oh = dgh + r * H, *ow = dgw + r * W;
        for (int64_t w = 0; w < W; w++) ow[w] = 0;
        for (int64_t h = 0; h < H; h++) {
            T s = 0, ah = a[h];
            for (int64_t w = 0; w < W; w++) {
                T t = d[h * W + w] * p[h * W + w];
                s += t * bw[w];
                ow[w] += t * ah;
            }
            oh[h] = s;
        }
    }
}

void NAME(coord_grad)(const T *restrict dy, const T *restrict gh, const T *restrict gw, const T *restrict rh, const T *restrict rw,
                      int64_t rows, int64_t H, int64_t W, T *restrict dx, int nth) {
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const T *d = dy + r * H * W, *a = gh + r * H, *bw = gw + r * W;
        const T *ah_ = rh + r * H, *aw_ = rw + r * W;
        T *o = dx + r * H * W;
        for (int64_t h = 0; h < H; h++) {
            T ah = a[h], ch = ah_[h];
            for (int64_t w = 0; w < W; w++) o[h * W + w] = d[h * W + w] * ah * bw[w] + ch + aw_[w];
        }
    }
}

/* Triplet attention, per row (b, c) of H x W values:
 * triplet_pool:  mh[w] = max_h x, ah[w] = mean_h x, mw[h] = max_w x, aw[h] = mean_w x,
 *                optionally the first arg-max and tie count of each (ih, ch, iw, cw);
 * triplet_scale: y = x * (acw[c, w] + ahc[c, h] + ahw[b, h, w]) * k   (ahw nullable);
 * triplet_dots:  scw[c, w] = sum_h dy x, shc[c, h] = sum_w dy x, shw[b, h, w] = sum_c dy x;
 * triplet_grad:  dx = dy (acw + ahc + ahw) + rw[c, w] + rh[c, h] + rs[b, h, w]. */
static inline void NAME(triplet_pool_row)(const T *restrict p, int64_t H, int64_t W, T *restrict mh_,
                                          T *restrict ah_, T *restrict mw_, T *restrict aw_,
                                          int64_t *restrict ih_, int32_t *restrict ch_,
                                          int64_t *restrict iw_, int32_t *restrict cw_) {
    int64_t nf = W / VL, tail = W - nf * VL;
    if (nf > 0 && nf <= MAXV) {
        /* vector path: row sums/maxes in registers, column sums/maxes in small arrays */
        vec csum[MAXV], cmax[MAXV], zero = {0}, ninf, tsum = {0}, tmax;
        for (int64_t i = 0; i < VL; i++) ninf[i] = -(T)INFINITY;
        tmax = ninf;
        ivec mask = NAME(tail_mask)(tail);
        for (int64_t k = 0; k < nf; k++) { csum[k] = zero; cmax[k] = ninf; }
        for (int64_t h = 0; h < H; h++) {
            const T *q = p + h * W;
            vec acc = zero, mx = ninf;
            for (int64_t k = 0; k < nf; k++) {
                vec v = NAME(vload)(q + k * VL);
                acc += v; csum[k] += v;
                ivec gt = v > mx; mx = (vec)(((ivec)v & gt) | ((ivec)mx & ~gt));
                gt = v > cmax[k]; cmax[k] = (vec)(((ivec)v & gt) | ((ivec)cmax[k] & ~gt));
            }
            if (tail) {
                vec raw = NAME(vload)(q + W - VL);
                vec v = (vec)((ivec)raw & mask), vm = (vec)(((ivec)raw & mask) | ((ivec)ninf & ~mask));
                acc += v; tsum += v;
                ivec gt = vm > mx; mx = (vec)(((ivec)vm & gt) | ((ivec)mx & ~gt));
                gt = vm > tmax; tmax = (vec)(((ivec)vm & gt) | ((ivec)tmax & ~gt));
            }
            T s = NAME(vsum)(acc), m = mx[0];
            for (int64_t i = 1; i < VL; i++) m = mx[i] > m ? mx[i] : m;
            if (s != s) for (int64_t w = 0; w < W; w++) if (q[w] != q[w]) { m = q[w]; break; }
            aw_[h] = s; mw_[h] = m;
        }
        for (int64_t h = 0; h < H; h++) aw_[h] /= (T)W; /* one vector loop */
        for (int64_t k = 0; k < nf; k++) { NAME(vstore)(ah_ + k * VL, csum[k]); NAME(vstore)(mh_ + k * VL, cmax[k]); }
        if (tail) for (int64_t w = W - tail; w < W; w++) { ah_[w] = tsum[w - (W - VL)]; mh_[w] = tmax[w - (W - VL)]; }
        goto columns;
    }

    for (int64_t w = 0; w < W; w++) { mh_[w] = p[w]; ah_[w] = 0; }
    int64_t h = 0;
    for (; h + 4 <= H; h += 4) { /* four rows per sweep: short W loops amortised */
        const T *q0 = p + h * W, *q1 = q0 + W, *q2 = q1 + W, *q3 = q2 + W;
        T s0 = 0, s1 = 0, s2 = 0, s3 = 0, m0 = q0[0], m1 = q1[0], m2 = q2[0], m3 = q3[0];
        #pragma omp simd reduction(+:s0, s1, s2, s3) reduction(max:m0, m1, m2, m3)
        for (int64_t w = 0; w < W; w++) {
            T v0 = q0[w], v1 = q1[w], v2 = q2[w], v3 = q3[w];
            s0 += v0; s1 += v1; s2 += v2; s3 += v3;
            m0 = v0 > m0 ? v0 : m0; m1 = v1 > m1 ? v1 : m1;
            m2 = v2 > m2 ? v2 : m2; m3 = v3 > m3 ? v3 : m3;
            T a = v0 > v1 ? v0 : v1, b = v2 > v3 ? v2 : v3, c = a > b ? a : b;
            ah_[w] += (v0 + v1) + (v2 + v3);
            mh_[w] = c > mh_[w] ? c : mh_[w];
        }
        T ss[4] = {s0, s1, s2, s3}, mm[4] = {m0, m1, m2, m3};
        for (int j = 0; j < 4; j++) {
            const T *q = q0 + j * W;
            if (ss[j] != ss[j]) for (int64_t w = 0; w < W; w++) if (q[w] != q[w]) { mm[j] = q[w]; break; }
            aw_[h + j] = ss[j] / (T)W; mw_[h + j] = mm[j];
        }
    }
    for (; h < H; h++) {
        const T *q = p + h * W;
        T s = 0, m = q[0];
        #pragma omp simd reduction(+:s) reduction(max:m)
        for (int64_t w = 0; w < W; w++) { s += q[w]; m = q[w] > m ? q[w] : m; }
        for (int64_t w = 0; w < W; w++) { ah_[w] += q[w]; mh_[w] = q[w] > mh_[w] ? q[w] : mh_[w]; }
        if (s != s) for (int64_t w = 0; w < W; w++) if (q[w] != q[w]) { m = q[w]; break; }
        aw_[h] = s / (T)W; mw_[h] = m;
    }
columns:
    for (int64_t w = 0; w < W; w++) {
        if (ah_[w] != ah_[w]) for (int64_t h = 0; h < H; h++) if (p[h * W + w] != p[h * W + w]) { mh_[w] = p[h * W + w]; break; }
        ah_[w] /= (T)H;
    }
    if (!ih_) return;
    for (int64_t w = 0; w < W; w++) { ih_[w] = -1; ch_[w] = 0; }
    for (int64_t h = 0; h < H; h++) {
        const T *q = p + h * W;
        int64_t first = -1; int32_t c = 0; T m = mw_[h];
        for (int64_t w = 0; w < W; w++) {
            T v = q[w];
            if (v == m || (m != m && v != v)) { if (first < 0) first = w; c++; }
            if (v == mh_[w] || (mh_[w] != mh_[w] && v != v)) { if (ih_[w] < 0) ih_[w] = h; ch_[w]++; }
        }
        iw_[h] = first < 0 ? 0 : first; cw_[h] = c;
    }
    for (int64_t w = 0; w < W; w++) if (ih_[w] < 0) ih_[w] = 0;
}

void NAME(triplet_pool)(const T *restrict x, int64_t rows, int64_t H, int64_t W, T *restrict mh, T *restrict ah, T *restrict mw, T *restrict aw,
                        int64_t *restrict ih, int32_t *restrict ch, int64_t *restrict iw, int32_t *restrict cw, int nth) {
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        NAME(triplet_pool_row)(x + r * H * W, H, W, mh + r * W, ah + r * W, mw + r * H, aw + r * H,
                               ih ? ih + r * W : NULL, ih ? ch + r * W : NULL,
                               ih ? iw + r * H : NULL, ih ? cw + r * H : NULL);
}

/* one (b, c) row of triplet_scale; restrict-qualified parameters survive inlining
 * (the OpenMP-outlined loop bodies lose them), so the short W loops need no
 * run-time alias checks. o may be p itself (not restrict): the last vector's input,
 * which overlaps the one before, is loaded before the row's stores. */
static inline void NAME(triplet_scale_row)(const T *p, const T *restrict a, const T *restrict bh,
                                           const T *restrict q, int64_t H, int64_t W, T k, T *o) {
    int64_t nf = W / VL;
    if (nf > 0 && nf <= MAXV) { /* explicit vectors, the last one at W - VL (as outer_scale_plane) */
        vec av[MAXV + 1];
        for (int64_t j = 0; j < nf; j++) av[j] = NAME(vload)(a + j * VL);
        av[nf] = NAME(vload)(a + W - VL);
        int64_t nv = nf + (W != nf * VL);
        for (int64_t h = 0; h < H; h++) {
            T c0 = bh[h];
            const T *ph = p + h * W, *qh = q ? q + h * W : NULL; T *oh = o + h * W;
            vec tail = nv > nf ? NAME(vload)(ph + W - VL) : av[nf];
            for (int64_t j = 0; j < nv; j++) {
                int64_t off = j < nf ? j * VL : W - VL;
                vec g = av[j] + c0;
                if (qh) g += NAME(vload)(qh + off);
                NAME(vstore)(oh + off, (j < nf ? NAME(vload)(ph + off) : tail) * (g * k));
            }
        }
        return;
    }
    for (int64_t h = 0; h < H; h++) {
        T c0 = bh[h];
        if (q) for (int64_t w = 0; w < W; w++) o[h * W + w] = p[h * W + w] * ((a[w] + c0 + q[h * W + w]) * k);
        else for (int64_t w = 0; w < W; w++) o[h * W + w] = p[h * W + w] * ((a[w] + c0) * k);
    }
}

void NAME(triplet_scale)(const T *x, const T *restrict acw, const T *restrict ahc, const T *restrict ahw, int64_t B, int64_t C,
                         int64_t H, int64_t W, T k, T *out, int nth) { /* out may be x */
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < B * C; r++)
        NAME(triplet_scale_row)(x + r * H * W, acw + r * W, ahc + r * H, ahw ? ahw + (r / C) * H * W : NULL,
                                H, W, k, out + r * H * W);
}

void NAME(triplet_dots)(const T *restrict dy, const T *restrict x, int64_t B, int64_t C, int64_t H, int64_t W,
                        T *restrict scw, T *restrict shc, T *restrict shw, int nth) {
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        T *sq = shw ? shw + b * H * W : NULL;
        if (sq) for (int64_t i = 0; i < H * W; i++) sq[i] = 0;
        for (int64_t c = 0; c < C; c++) {
            int64_t r = b * C + c;
            const T *d = dy + r * H * W, *p = x + r * H * W;
            T *a = scw + r * W, *bh = shc + r * H;
            for (int64_t w = 0; w < W; w++) a[w] = 0;
            for (int64_t h = 0; h < H; h++) {
                T s = 0;
                T *sqh = sq ? sq + h * W : NULL;
                for (int64_t w = 0; w < W; w++) {
                    T t = d[h * W + w] * p[h * W + w];
                    s += t; a[w] += t;
                    if (sqh) sqh[w] += t;
                }
                bh[h] = s;
            }
        }
    }
}

void NAME(triplet_grad)(const T *restrict dy, const T *restrict acw, const T *restrict ahc, const T *restrict ahw, const T *restrict rw,
                        const T *restrict rh, const T *restrict rs, int64_t B, int64_t C, int64_t H, int64_t W,
                        T *restrict dx, int nth) {
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < B * C; r++) {
        const T *d = dy + r * H * W, *a = acw + r * W, *bh = ahc + r * H;
        const T *ra = rw + r * W, *rb = rh + r * H;
        const T *q = ahw ? ahw + (r / C) * H * W : NULL, *qs = rs ? rs + (r / C) * H * W : NULL;
        T *o = dx + r * H * W;
        for (int64_t h = 0; h < H; h++) {
            T c0 = bh[h], c1 = rb[h];
            if (q) {
                const T *qh = q + h * W, *qsh = qs + h * W;
                for (int64_t w = 0; w < W; w++)
                    o[h * W + w] = d[h * W + w] * (a[w] + c0 + qh[w]) + ra[w] + c1 + qsh[w];
            } else {
                for (int64_t w = 0; w < W; w++) o[h * W + w] = d[h * W + w] * (a[w] + c0) + ra[w] + c1;
            }
        }
    }
}

/* out[b, c] = sum_s x[b, c, s] v[b, s]: a batched matrix-vector product
 * (torch.bmm with one column runs at a fraction of memory speed). */

void NAME(rowdot)(const T *restrict x, const T *restrict v, int64_t B, int64_t C, int64_t S,
                  T *restrict out, int nth) {
    #pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t r = 0; r < B * C; r++) out[r] = NAME(dot_row)(x + r * S, v + (r / C) * S, S);
}

#undef row_max
