/* Whole-module eval kernels for one element type (included by gates.c after
 * gates_impl.h, with T, EXP and NAME defined).
 *
 * gate_eval runs a pooled-gate module (SE, ECA, CBAM and its halves, sSE, scSE)
 * in eval as one call: pool, small gate networks, pool, gate conv, scale. With
 * at least as many samples as threads, each thread takes whole samples and runs
 * every stage on one sample before the next: a sample (C x S values, 0.8 MB at
 * 256 x 28 x 28) stays in the core's L2 cache between its passes, so only the
 * first pass reads from L3 / memory. The samples left over (fewer than the
 * threads) run stage by stage, each stage split over the threads. */

/* A one-channel BatchNorm in eval after a conv with bias cb (nullable), as
 * bn(conv + cb) = scale conv + shift; weight and bias nullable (affine off). */
static void NAME(bn_fold)(const T *w, const T *b, const T *mean, const T *var, double eps, const T *cb,
                          double *scale, double *shift) {
    double a = (w ? (double)w[0] : 1.0) / sqrt((double)var[0] + eps);
    *scale = a;
    *shift = ((cb ? (double)cb[0] : 0.0) - (double)mean[0]) * a + (b ? (double)b[0] : 0.0);
}

/* xb and ob may be the same array (plans.run in place): each y is written after
 * every read of x (the pools), by scale_row's elementwise loop. stream: Y with
 * streaming stores where the type has them (see stream_min_bytes). */
static void NAME(gate_eval_sample)(const T *xb, const gate_eval_args *a, T *ob, T *restrict ws, int stream) {
    int64_t C = a->C, S = a->S;
    T *avg = ws, *mx = ws + C, *gcb = ws + 2 * C, *pm = ws + 3 * C, *px = pm + S, *gsb = px + S;
    T *cws = gsb + S;
    const T *gc = NULL, *gs = NULL;
    if (a->ch_kind) {
        int want_max = a->ch_kind == GE_MLP_MAX;
        for (int64_t c = 0; c < C; c++) NAME(pool_row)(xb + c * S, S, avg + c, want_max ? mx + c : NULL);
        if (a->ch_kind == GE_CONV1D)
            NAME(conv1d_sigmoid)(avg, 1, C, a->k1, a->k1 / 2, (const T *)a->cw1, NULL, gcb);
        else
            NAME(mlp2_sigmoid)(avg, want_max ? mx : NULL, 1, C, a->hidden, (const T *)a->w1, (const T *)a->b1,
                               (const T *)a->w2, (const T *)a->b2, gcb);
        gc = gcb;
    }
    if (a->sp_kind == GE_SP_CONV) {
        const T *g = a->sequential ? gc : NULL;
        for (int64_t s0 = 0; s0 < S; s0 += SCHUNK)
            NAME(pool_channel_task)(xb, g, C, S, s0, imin64(SCHUNK, S - s0), pm + s0, px + s0, NULL, NULL);
        const T *first = a->max_first ? px : pm, *second = a->max_first ? pm : px;
        NAME(conv2d_sample)(first, second, a->H, a->W, (const T *)a->cw2, a->k2, (T)a->s_scale, (T)a->s_shift,
                            1, gsb, cws);
        gs = gsb;
    } else if (a->sp_kind == GE_SP_LINEAR) {
        /* logits w . x over channels: the mean of x * w times C */
        for (int64_t s0 = 0; s0 < S; s0 += SCHUNK)
            NAME(pool_channel_task)(xb, (const T *)a->lw, C, S, s0, imin64(SCHUNK, S - s0), pm + s0, NULL, NULL,
                                    NULL);
        T shift = (T)a->s_shift;
        for (int64_t s = 0; s < S; s++) gsb[s] = (T)1 / ((T)1 + EXP(-(pm[s] * (T)C + shift)));
        gs = gsb;
    }
    for (int64_t c = 0; c < C; c++) {
        const T *p = xb + c * S; T g = gc ? gc[c] : (T)1; T *o = ob + c * S;
#ifdef SCALE_ROW_STREAM
        if (stream && SCALE_ROW_STREAM(p, g, gs, S, (int)a->mode, o)) continue;
#endif
        NAME(scale_row)(p, g, gs, S, (int)a->mode, o);
    }
#ifdef SCALE_ROW_STREAM
    if (stream) _mm_sfence(); /* the streamed Y before anyone reads it */
#else
    (void)stream;
#endif
}

struct NAME(ge_ctx) { const T *x; const gate_eval_args *a; T *out; int64_t per; int stream; };
static void NAME(gate_eval_task)(int64_t b, const void *p, void *ws) {
    const struct NAME(ge_ctx) *c = p;
    NAME(gate_eval_sample)(c->x + b * c->per, c->a, c->out + b * c->per, ws, c->stream);
}

/* returns 0, or 1 when a workspace could not be allocated (out is then incomplete);
 * out may be x itself */
int NAME(gate_eval)(const T *x, const gate_eval_args *args, T *out, int nth) {
    gate_eval_args folded = *args, *a = &folded;
    if (a->sp_kind == GE_SP_CONV)
        NAME(bn_fold)(a->s_bn_w, a->s_bn_b, a->s_bn_mean, a->s_bn_var, a->s_eps, a->s_cbias, &a->s_scale, &a->s_shift);
    if (a->sp_kind == GE_SP_LINEAR && a->lb) a->s_shift = (double)((const T *)a->lb)[0];
    int64_t B = a->B, C = a->C, S = a->S, per = C * S;
    int64_t nws = 3 * C + 3 * S + (a->sp_kind == GE_SP_CONV ? NAME(conv2d_ws)(a->H, a->W, a->k2) : 0);
    int64_t nfull = whole_samples(B, nth);
    /* X and a new Y beyond the last-level cache: stream Y (in place, Y's lines are X's, already cached) */
    int stream = out != x && B * per > stream_min_bytes / (int64_t)(2 * sizeof(T));
    struct NAME(ge_ctx) ctx = {x, a, out, per, stream};
    int failed = run_samples(nfull, (size_t)nws * sizeof(T), NAME(gate_eval_task), &ctx, nth);
    int64_t rest = B - nfull;
    if (rest == 0 || failed) return failed;
    /* the remaining samples stage by stage, each stage over all threads */
    const T *xr = x + nfull * per;
    T *orr = out + nfull * per;
    T *buf = (T *)malloc((size_t)(rest * (3 * C + 3 * S)) * sizeof(T));
    if (!buf) return 1;
    T *avg = buf, *mx = avg + rest * C, *gcb = mx + rest * C, *pm = gcb + rest * C, *px = pm + rest * S;
    T *gsb = px + rest * S;
    const T *gc = NULL, *gs = NULL;
    if (a->ch_kind) {
        int want_max = a->ch_kind == GE_MLP_MAX;
        NAME(pool_spatial)(xr, rest * C, S, avg, want_max ? mx : NULL, NULL, NULL, nth);
        if (a->ch_kind == GE_CONV1D)
            NAME(conv1d_sigmoid)(avg, rest, C, a->k1, a->k1 / 2, (const T *)a->cw1, NULL, gcb);
        else
            NAME(mlp2_sigmoid)(avg, want_max ? mx : NULL, rest, C, a->hidden, (const T *)a->w1, (const T *)a->b1,
                               (const T *)a->w2, (const T *)a->b2, gcb);
        gc = gcb;
    }
    if (a->sp_kind == GE_SP_CONV) {
        NAME(pool_channel)(xr, a->sequential ? gc : NULL, rest, C, S, pm, px, NULL, NULL, nth);
        const T *first = a->max_first ? px : pm, *second = a->max_first ? pm : px;
        failed = NAME(conv2d_gate)(first, second, rest, a->H, a->W, (const T *)a->cw2, a->k2, (T)a->s_scale,
                                   (T)a->s_shift, 1, gsb, nth);
        gs = gsb;
    } else if (a->sp_kind == GE_SP_LINEAR) {
        const T *lw = (const T *)a->lw;
        T *wrep = gcb; /* the linear weights per remaining sample (gcb is unused without a channel gate) */
        if (gc) { wrep = (T *)malloc((size_t)(rest * C) * sizeof(T)); if (!wrep) { free(buf); return 1; } }
        for (int64_t b = 0; b < rest; b++) memcpy(wrep + b * C, lw, (size_t)C * sizeof(T));
        NAME(pool_channel)(xr, wrep, rest, C, S, pm, NULL, NULL, NULL, nth);
        if (wrep != gcb) free(wrep);
        T shift = (T)a->s_shift;
        for (int64_t s = 0; s < rest * S; s++) gsb[s] = (T)1 / ((T)1 + EXP(-(pm[s] * (T)C + shift)));
        gs = gsb;
    }
    if (!failed) NAME(scale)(xr, gc, gs, rest, C, S, (int)a->mode, orr, nth);
    free(buf);
    return failed;
}

/* Coordinate attention in eval, one call. Per sample: the strip means z (C, L = H + W),
 * f = h_swish(BN(W1 z + b1)) (m, L), g^h = sigmoid(Wh f[:, :H] + bh) (C, H),
 * g^w = sigmoid(Ww f[:, H:] + bw) (C, W), y = x g^h g^w. BN in eval from its running
 * statistics (bn_w, bn_b nullable: affine off); biases nullable.
 *
 * Layout: the strips are stored padded, z (C, Hp + Wp) with Hp, Wp = H, W rounded up
 * to CB = 8 and zeros in the pad columns, so that both small matrix products run on
 * whole blocks of CB columns with the block's accumulators in registers (the pad
 * columns compute values nobody reads). */
#define CB VL
static inline int64_t NAME(rup)(int64_t v) { return (v + CB - 1) / CB * CB; }

/* sigmoid of n values in place; compute-bound (one exp each): full vector width */
WIDE static void NAME(sigmoid_inplace)(T *restrict g, int64_t n) {
#ifdef SIGMOID_INPLACE
    SIGMOID_INPLACE(g, n);
#else
    for (int64_t i = 0; i < n; i++) g[i] = (T)1 / ((T)1 + EXP(-g[i]));
#endif
}

/* the same, exported (tests) */
void NAME(sigmoid)(T *restrict g, int64_t n) { NAME(sigmoid_inplace)(g, n); }

static void NAME(coord_gates_sample)(const T *restrict z, int64_t C, int64_t Hp, int64_t Wp, int64_t m,
                                     const T *restrict w1t, const T *restrict fsc, const T *restrict fsh,
                                     const T *restrict wh, const T *restrict bh, const T *restrict ww,
                                     const T *restrict bw, T *restrict f, T *restrict gh, T *restrict gw) {
    int64_t Lp = Hp + Wp;
    vec zero = {0};
    /* f = W1 z: 8 hidden rows x one vector of columns per block, accumulators in
     * registers; w1t is W1^T (C, m) */
    for (int64_t l0 = 0; l0 < Lp; l0 += CB)
        for (int64_t j0 = 0; j0 < m; j0 += 8) {
            int64_t nj = imin64(8, m - j0);
            vec acc[8];
            for (int64_t jj = 0; jj < 8; jj++) acc[jj] = zero;
            if (nj == 8) {
                for (int64_t c = 0; c < C; c++) {
                    vec zv = NAME(vload)(z + c * Lp + l0);
                    const T *wc = w1t + c * m + j0;
                    for (int64_t jj = 0; jj < 8; jj++) acc[jj] += wc[jj] * zv;
                }
            } else {
                for (int64_t c = 0; c < C; c++) {
                    vec zv = NAME(vload)(z + c * Lp + l0);
                    const T *wc = w1t + c * m + j0;
                    for (int64_t jj = 0; jj < nj; jj++) acc[jj] += wc[jj] * zv;
                }
            }
            for (int64_t jj = 0; jj < nj; jj++) {
                T sc = fsc[j0 + jj], sh = fsh[j0 + jj];
                T *fo = f + (j0 + jj) * Lp + l0;
                for (int64_t l = 0; l < CB; l++) {
                    T v = acc[jj][l] * sc + sh, t = v + (T)3;
                    t = t < 0 ? (T)0 : t;
                    t = t > 6 ? (T)6 : t;
                    fo[l] = v * t / (T)6; /* h-swish; NaN stays NaN */
                }
            }
        }
    /* g^h = sigmoid(Wh f[:, :Hp] + bh), g^w likewise: 4 output channels x one vector per block */
    for (int part = 0; part < 2; part++) {
        const T *wm = part ? ww : wh, *bias = part ? bw : bh;
        int64_t n = part ? Wp : Hp, off = part ? Hp : 0;
        T *g = part ? gw : gh;
        for (int64_t c0 = 0; c0 < C; c0 += 4) {
            int64_t nc = imin64(4, C - c0);
            T wbuf[4 * 64];
            int64_t mm = m <= 64 ? m : 0; /* weights of the 4 channels, zero-padded */
            for (int64_t cc = 0; cc < 4; cc++)
                for (int64_t j = 0; j < mm; j++) wbuf[j * 4 + cc] = cc < nc ? wm[(c0 + cc) * m + j] : (T)0;
            for (int64_t l0 = 0; l0 < n; l0 += CB) {
                vec acc[4];
                for (int64_t cc = 0; cc < 4; cc++) {
                    T b0 = (bias && cc < nc) ? bias[c0 + cc] : (T)0;
                    for (int64_t l = 0; l < CB; l++) acc[cc][l] = b0;
                }
                for (int64_t j = 0; j < m; j++) {
                    vec fv = NAME(vload)(f + j * Lp + off + l0);
                    for (int64_t cc = 0; cc < 4; cc++)
                        acc[cc] += (mm ? wbuf[j * 4 + cc] : (cc < nc ? wm[(c0 + cc) * m + j] : (T)0)) * fv;
                }
                for (int64_t cc = 0; cc < nc; cc++) NAME(vstore)(g + (c0 + cc) * n + l0, acc[cc]);
            }
        }
        NAME(sigmoid_inplace)(g, C * n); /* pad columns included: one long vector loop */
    }
}

/* strips of one sample into the padded layout */
static void NAME(coord_strips_sample)(const T *restrict xb, int64_t C, int64_t H, int64_t W, int64_t Hp, int64_t Wp,
                                      T *restrict z) {
    int64_t Lp = Hp + Wp;
    for (int64_t c = 0; c < C; c++) {
        T *zc = z + c * Lp;
        NAME(coord_pool_row)(xb + c * H * W, H, W, zc, zc + Hp);
        for (int64_t i = H; i < Hp; i++) zc[i] = 0;
        for (int64_t i = Hp + W; i < Lp; i++) zc[i] = 0;
    }
}

static void NAME(coord_scale_sample)(const T *xb, const T *restrict gh, const T *restrict gw, int64_t C,
                                     int64_t H, int64_t W, int64_t Hp, int64_t Wp, T *ob) { /* ob may be xb */
    for (int64_t c = 0; c < C; c++) {
        const T *p = xb + c * H * W, *a = gh + c * Hp, *q = gw + c * Wp;
        T *o = ob + c * H * W;
        NAME(outer_scale_plane)(p, a, q, H, W, o);
    }
}

struct NAME(coord_ctx) {
    const T *x; T *out; int64_t C, H, W, Hp, Wp, m;
    const T *w1t, *fsc, *fsh, *wh, *bh, *ww, *bw;
};
static void NAME(coord_task)(int64_t b, const void *p, void *ws) {
    const struct NAME(coord_ctx) *c = p;
    int64_t C = c->C, Lp = c->Hp + c->Wp, per = C * c->H * c->W;
    T *z = ws, *f = z + C * Lp, *gh = f + c->m * Lp, *gw = gh + C * c->Hp;
    NAME(coord_strips_sample)(c->x + b * per, C, c->H, c->W, c->Hp, c->Wp, z);
    NAME(coord_gates_sample)(z, C, c->Hp, c->Wp, c->m, c->w1t, c->fsc, c->fsh, c->wh, c->bh, c->ww, c->bw, f, gh, gw);
    NAME(coord_scale_sample)(c->x + b * per, gh, gw, C, c->H, c->W, c->Hp, c->Wp, c->out + b * per);
}

/* returns 0, or 1 when a workspace could not be allocated (out is then incomplete);
 * out may be x itself (each y written after the strips of its sample are taken) */
int NAME(coord_eval)(const T *x, int64_t B, int64_t C, int64_t H, int64_t W, int64_t m,
                     const T *restrict w1, const T *restrict b1, const T *restrict bn_w, const T *restrict bn_b,
                     const T *restrict bn_mean, const T *restrict bn_var, T eps, const T *restrict wh,
                     const T *restrict bh, const T *restrict ww, const T *restrict bw, T *out, int nth) {
    int64_t Hp = NAME(rup)(H), Wp = NAME(rup)(W), Lp = Hp + Wp, per = C * H * W;
    /* W1^T and BN (with the conv bias) folded into a per-row scale and shift */
    T *w1t = (T *)malloc((size_t)(C * m + 2 * m) * sizeof(T));
    if (!w1t) return 1;
    T *fsc = w1t + C * m, *fsh = fsc + m;
    for (int64_t j = 0; j < m; j++) {
        for (int64_t c = 0; c < C; c++) w1t[c * m + j] = w1[j * C + c];
        fsc[j] = (bn_w ? bn_w[j] : (T)1) / SQRT(bn_var[j] + eps);
        fsh[j] = ((b1 ? b1[j] : (T)0) - bn_mean[j]) * fsc[j] + (bn_b ? bn_b[j] : (T)0);
    }
    int64_t nws = C * Lp + m * Lp + C * Lp;
    int64_t nfull = whole_samples(B, nth);
    struct NAME(coord_ctx) ctx = {x, out, C, H, W, Hp, Wp, m, w1t, fsc, fsh, wh, bh, ww, bw};
    int failed = run_samples(nfull, (size_t)nws * sizeof(T), NAME(coord_task), &ctx, nth);
    int64_t rest = B - nfull;
    if (rest > 0 && !failed) {
        /* the samples left over (fewer than the threads): strips and products split over
         * the threads by channel blocks, the small gate network on one thread */
        T *z = (T *)malloc((size_t)nws * sizeof(T));
        if (!z) failed = 1;
        for (int64_t b = nfull; b < B && z; b++) {
            T *f = z + C * Lp, *gh = f + m * Lp, *gw = gh + C * Hp;
            const T *xb = x + b * per;
            int64_t nblk = (C + 15) / 16;
            #pragma omp parallel for num_threads(nth) schedule(static)
            for (int64_t k = 0; k < nblk; k++) {
                int64_t c0 = k * 16, nc = imin64(16, C - c0);
                NAME(coord_strips_sample)(xb + c0 * H * W, nc, H, W, Hp, Wp, z + c0 * Lp);
            }
            NAME(coord_gates_sample)(z, C, Hp, Wp, m, w1t, fsc, fsh, wh, bh, ww, bw, f, gh, gw);
            #pragma omp parallel for num_threads(nth) schedule(static)
            for (int64_t k = 0; k < nblk; k++) {
                int64_t c0 = k * 16, nc = imin64(16, C - c0);
                NAME(coord_scale_sample)(xb + c0 * H * W, gh + c0 * Hp, gw + c0 * Wp, nc, H, W, Hp, Wp,
                                         out + b * per + c0 * H * W);
            }
        }
        free(z);
    }
    free(w1t);
    return failed;
}

/* Triplet attention in eval, one call. Per sample: the Z-pools (max and mean) over H
 * (planes (C, W)), over W (planes (C, H)) and over C (planes (H, W)), each branch's
 * k x k conv with its BN in eval (folded into aff: scale, shift per branch) and sigmoid, and
 * y = x (a_cw[c, w] + a_hc[c, h] + a_hw[h, w]) * kk. w_hc is the (C, H)-plane kernel
 * (the transposed (H, C) kernel); w_hw nullable (no spatial branch). */
static int64_t NAME(triplet_ws)(int64_t C, int64_t H, int64_t W, int64_t k) {
    int64_t cv = NAME(conv2d_ws)(C, W, k), ch = NAME(conv2d_ws)(C, H, k), hw = NAME(conv2d_ws)(H, W, k);
    int64_t conv = cv > ch ? cv : ch;
    conv = conv > hw ? conv : hw;
    return 3 * C * W + 3 * C * H + 3 * H * W + conv;
}

static void NAME(triplet_sample)(const T *xb, int64_t C, int64_t H, int64_t W, int64_t k,
                                 const T *restrict w_cw, const T *restrict w_hc, const T *restrict w_hw,
                                 const double *aff, T kk, T *ob, T *restrict ws) { /* ob may be xb */
    T *mh = ws, *ah = mh + C * W, *acw = ah + C * W;
    T *mw = acw + C * W, *aw = mw + C * H, *ahc = aw + C * H;
    T *pm = ahc + C * H, *px = pm + H * W, *ahw = px + H * W, *cws = ahw + H * W;
    int64_t S = H * W;
    for (int64_t c = 0; c < C; c++)
        NAME(triplet_pool_row)(xb + c * S, H, W, mh + c * W, ah + c * W, mw + c * H, aw + c * H, NULL, NULL, NULL,
                               NULL);
    NAME(conv2d_sample)(mh, ah, C, W, w_cw, k, (T)aff[0], (T)aff[1], 1, acw, cws);
    NAME(conv2d_sample)(mw, aw, C, H, w_hc, k, (T)aff[2], (T)aff[3], 1, ahc, cws);
    if (w_hw) {
        for (int64_t s0 = 0; s0 < S; s0 += SCHUNK)
            NAME(pool_channel_task)(xb, NULL, C, S, s0, imin64(SCHUNK, S - s0), pm + s0, px + s0, NULL, NULL);
        NAME(conv2d_sample)(px, pm, H, W, w_hw, k, (T)aff[4], (T)aff[5], 1, ahw, cws);
    }
    for (int64_t c = 0; c < C; c++)
        NAME(triplet_scale_row)(xb + c * S, acw + c * W, ahc + c * H, w_hw ? ahw : NULL, H, W, kk, ob + c * S);
}

struct NAME(triplet_ctx) {
    const T *x; T *out; int64_t C, H, W, k;
    const T *w_cw, *w_hc, *w_hw; const double *aff; T kk;
};
static void NAME(triplet_task)(int64_t b, const void *p, void *ws) {
    const struct NAME(triplet_ctx) *c = p;
    int64_t per = c->C * c->H * c->W;
    NAME(triplet_sample)(c->x + b * per, c->C, c->H, c->W, c->k, c->w_cw, c->w_hc, c->w_hw, c->aff, c->kk,
                         c->out + b * per, ws);
}

static int NAME(triplet_run)(const T *x, int64_t B, int64_t C, int64_t H, int64_t W, int64_t k,
                             const T *restrict w_cw, const T *restrict w_hc, const T *restrict w_hw,
                             const double *aff, T kk, T *out, int nth);

/* returns 0, or 1 when a workspace could not be allocated (out is then incomplete) */
int NAME(triplet_eval)(const T *x, int64_t B, int64_t C, int64_t H, int64_t W, int64_t k,
                       const T *restrict w_cw, const T *restrict w_hck, const T *restrict w_hw,
                       const T *const *bn, const double *eps, T kk, T *out, int nth) { /* out may be x */
    /* bn: (weight, bias, running mean, running var) of each branch's BN, weight and bias
     * nullable; folded here, at each call, into a scale and a shift per branch (aff) */
    double aff[6] = {0, 0, 0, 0, 0, 0};
    for (int i = 0; i < (w_hw ? 3 : 2); i++)
        NAME(bn_fold)(bn[4 * i], bn[4 * i + 1], bn[4 * i + 2], bn[4 * i + 3], eps[i], NULL, aff + 2 * i, aff + 2 * i + 1);
    /* w_hck is the paper's kernel over the (H, C) plane; the kernels run on (C, H) planes */
    T *w_hc = (T *)malloc((size_t)(2 * k * k) * sizeof(T));
    if (!w_hc) return 1;
    for (int64_t p = 0; p < 2; p++)
        for (int64_t i = 0; i < k; i++)
            for (int64_t j = 0; j < k; j++) w_hc[(p * k + i) * k + j] = w_hck[(p * k + j) * k + i];
    int failed = NAME(triplet_run)(x, B, C, H, W, k, w_cw, w_hc, w_hw, aff, kk, out, nth);
    free(w_hc);
    return failed;
}

static int NAME(triplet_run)(const T *x, int64_t B, int64_t C, int64_t H, int64_t W, int64_t k,
                             const T *restrict w_cw, const T *restrict w_hc, const T *restrict w_hw,
                             const double *aff, T kk, T *out, int nth) {
    int64_t per = C * H * W, nws = NAME(triplet_ws)(C, H, W, k);
    int64_t nfull = whole_samples(B, nth);
    struct NAME(triplet_ctx) ctx = {x, out, C, H, W, k, w_cw, w_hc, w_hw, aff, kk};
    int failed = run_samples(nfull, (size_t)nws * sizeof(T), NAME(triplet_task), &ctx, nth);
    int64_t rest = B - nfull;
    if (rest == 0 || failed) return failed;
    /* the samples left over (fewer than the threads): the pools and the product split
     * over the threads, the three convs on one thread each */
    const T *xr = x + nfull * per;
    T *buf = (T *)malloc((size_t)(rest * (3 * C * W + 3 * C * H + 3 * H * W)) * sizeof(T));
    if (!buf) return 1;
    T *mh = buf, *ah = mh + rest * C * W, *acw = ah + rest * C * W;
    T *mw = acw + rest * C * W, *aw = mw + rest * C * H, *ahc = aw + rest * C * H;
    T *pm = ahc + rest * C * H, *px = pm + rest * H * W, *ahw = px + rest * H * W;
    NAME(triplet_pool)(xr, rest * C, H, W, mh, ah, mw, aw, NULL, NULL, NULL, NULL, nth);
    if (w_hw) NAME(pool_channel)(xr, NULL, rest, C, H * W, pm, px, NULL, NULL, nth);
    int nconv = w_hw ? 3 : 2;
    #pragma omp parallel for num_threads(nth) schedule(static) reduction(|:failed)
    for (int64_t t = 0; t < rest * nconv; t++) {
        int64_t b = t / nconv, which = t % nconv;
        T *ws = (T *)thread_scratch((size_t)NAME(triplet_ws)(C, H, W, k) * sizeof(T));
        if (!ws) { failed = 1; continue; }
        if (which == 0)
            NAME(conv2d_sample)(mh + b * C * W, ah + b * C * W, C, W, w_cw, k, (T)aff[0], (T)aff[1], 1, acw + b * C * W, ws);
        else if (which == 1)
            NAME(conv2d_sample)(mw + b * C * H, aw + b * C * H, C, H, w_hc, k, (T)aff[2], (T)aff[3], 1, ahc + b * C * H, ws);
        else
            NAME(conv2d_sample)(px + b * H * W, pm + b * H * W, H, W, w_hw, k, (T)aff[4], (T)aff[5], 1, ahw + b * H * W, ws);
    }
    if (!failed) NAME(triplet_scale)(xr, acw, ahc, w_hw ? ahw : NULL, rest, C, H, W, kk, out + nfull * per, nth);
    free(buf);
    return failed;
}
