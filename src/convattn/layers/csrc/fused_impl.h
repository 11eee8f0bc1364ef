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

static void NAME(gate_eval_sample)(const T *restrict xb, const gate_eval_args *a, T *restrict ob,
                                   T *restrict ws) {
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
                            gsb, cws);
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
    for (int64_t c = 0; c < C; c++)
        NAME(scale_row)(xb + c * S, gc ? gc[c] : (T)1, gs, S, (int)a->mode, ob + c * S);
}

/* returns 0, or 1 when a workspace could not be allocated (out is then incomplete) */
int NAME(gate_eval)(const T *restrict x, const gate_eval_args *a, T *restrict out, int nth) {
    int64_t B = a->B, C = a->C, S = a->S, per = C * S;
    int64_t nws = 3 * C + 3 * S + (a->sp_kind == GE_SP_CONV ? NAME(conv2d_ws)(a->H, a->W, a->k2) : 0);
    int64_t nfull = nth > 1 ? (B / nth) * nth : B;
    int failed = 0;
    if (nfull > 0) {
        #pragma omp parallel num_threads(nth) reduction(|:failed)
        {
            T *ws = (T *)malloc((size_t)nws * sizeof(T));
            if (!ws) failed = 1;
            #pragma omp for schedule(static)
            for (int64_t b = 0; b < nfull; b++)
                if (ws) NAME(gate_eval_sample)(x + b * per, a, out + b * per, ws);
            free(ws);
        }
    }
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
                                   (T)a->s_shift, gsb, nth);
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
