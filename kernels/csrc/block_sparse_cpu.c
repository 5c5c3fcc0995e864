/* Fused block-sparse attention with pair bias on the CPU: forward and backward, float32.
 *
 *   S = (scale Q) K^T + bias,   P = softmax_rows(S over the kept key blocks),   O = P V
 *
 * One work item is one query block row (forward, dQ) or one key block column (dK, dV, dBias) of one
 * (batch, head). An item walks only the tiles its layout row/column keeps (the compact index of
 * patterns.BlockLayout), reads each bias tile in place (rows of block_size contiguous floats, any
 * broadcast over batch and heads through zero strides) and keeps scores, probabilities and the
 * running softmax state in a per-thread scratch that stays in L1/L2: no logits, gathered keys or
 * gathered bias are ever written to memory.
 *
 * Forward: online softmax (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022, Alg. 1) per
 * query row; it also returns LSE = m + log(l) for the backward.
 * Backward (FlashAttention-2, Dao 2023, Alg. 2), with Delta = rowsum(dO * O) computed by the caller:
 *   P = exp(S - LSE), dV = P^T dO, dP = dO V^T, dS = P * (dP - Delta),
 *   dK = dS^T (scale Q), dQ = scale dS K, dBias = dS summed over the broadcast dimensions.
 * dK/dV/dBias are computed per key block column and dQ per query block row in a second pass (the
 * scores are recomputed), so every output element has exactly one writer: no atomics, and the
 * result is deterministic and independent of the number of threads.
 *
 * Threads: the caller runs the same entry point from several threads; they share an atomic work
 * counter over a caller-ordered item list (largest items first), so the load balances itself.
 *
 * Non-finite values follow kernels/reference.py: scores are plain IEEE arithmetic over the kept
 * pairs only (a NaN/+inf score makes its row NaN through exp and the row sum), a row whose kept
 * scores are all -inf gives zeros and zero gradients (l = 0, LSE = -inf), and a row or column
 * with no kept tile gives zeros whatever the scale.
 *
 * Portability: plain C11 with GCC/Clang vector extensions (8 x float32 = one AVX register; the
 * compiler splits or widens it for other ISAs); exp() is a Cephes-style polynomial with an exact
 * zero below -87.3 so masked scores (-inf) give a probability of exactly 0.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define VW 8
#define RC 16 /* query rows per chunk in the forward pass */
#define MAX_BS 128
#define MAX_D 64
#define ALWAYS_INLINE static inline __attribute__((always_inline))

typedef struct {
    int64_t B, H, L, Lp, D, BS, nb;
    const float *q, *k, *v, *kt, *vt;  /* q, k, v [B,H,L,D] through the strides below; kt, vt
                                          [B,H,nb,D,BS] (each block's K^T / V^T tile contiguous),
                                          zero past L */
    const float *bias;                  /* NULL or bias[b*sb_b + h*sb_h + i*sb_i + j] */
    int64_t sb_b, sb_h, sb_i;
    int64_t lh;                         /* layout heads: 1 (shared) or H */
    const int32_t *kv_cnt, *kv_idx;     /* [lh, nb], [lh, nb, nb] */
    const int32_t *q_cnt, *q_idx;       /* the transpose */
    double scale;
    float *o, *lse;                     /* o [B,H,L,D] through its strides; lse [B,H,Lp] */
    const float *dout, *delta;          /* [B,H,Lp,D], [B,H,Lp] (backward) */
    float *dq, *dk, *dv;                /* [B,H,Lp,D] */
    float *dbias;                       /* NULL or [gB, gH, L, L] contiguous */
    int64_t gB, gH;                     /* key-column item groups: gB in {1, B}, gH in {1, H} */
    const int64_t *items;
    int64_t n_items;
    int64_t *counter;
    /* element strides (batch, head, row; the head dim has stride 1) of q, k, v and o: the forward
     * reads q, k, v and writes o in place, in any layout (rows past L are never read or written) */
    int64_t sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l;
} Args;

/* ---- small vector helpers ------------------------------------------------------------------- */
ALWAYS_INLINE v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }
ALWAYS_INLINE v8 loadu(const float *p) { return *(const v8u *)p; }
ALWAYS_INLINE void storeu(float *p, v8 x) { *(v8u *)p = x; }
ALWAYS_INLINE v8 vselect(v8i m, v8 a, v8 b) { return (v8)((m & (v8i)a) | (~m & (v8i)b)); }
ALWAYS_INLINE v8 vmax(v8 a, v8 b) { return vselect(a > b, a, b); }
/* Lane shuffles of two vectors (indices 0..15 over the concatenation a:b). */
#if defined(__clang__)
#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUF(a, b, ...) __builtin_shuffle(a, b, (v8i){__VA_ARGS__})
#endif

/* out[i] = reduction of the 8 lanes of r[i], for 8 vectors at once (a 3-level transpose-reduce). */
#define REDUCE8(NAME, OP)                                                                        \
    ALWAYS_INLINE v8 NAME(const v8 *r) {                                                         \
        v8 t[4], u[2];                                                                           \
        for (int p = 0; p < 4; p++)                                                              \
            t[p] = OP(SHUF(r[2 * p], r[2 * p + 1], 0, 1, 2, 3, 8, 9, 10, 11),                    \
                      SHUF(r[2 * p], r[2 * p + 1], 4, 5, 6, 7, 12, 13, 14, 15));                 \
        for (int p = 0; p < 2; p++)                                                              \
            u[p] = OP(SHUF(t[2 * p], t[2 * p + 1], 0, 1, 4, 5, 8, 9, 12, 13),                    \
                      SHUF(t[2 * p], t[2 * p + 1], 2, 3, 6, 7, 10, 11, 14, 15));                 \
        return OP(SHUF(u[0], u[1], 0, 2, 4, 6, 8, 10, 12, 14), SHUF(u[0], u[1], 1, 3, 5, 7, 9, 11, 13, 15)); \
    }
/* dst[c][r] = src[r][c] for an 8 x 8 block (row strides ls, ld): three shuffle stages. */
ALWAYS_INLINE void transpose8(const float *src, int64_t ls, float *dst, int64_t ld) {
    v8 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) r[i] = loadu(src + i * ls);
    for (int p = 0; p < 4; p++) {
        t[2 * p] = SHUF(r[2 * p], r[2 * p + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[2 * p + 1] = SHUF(r[2 * p], r[2 * p + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int base = 0; base < 8; base += 4) {
        u[base] = SHUF(t[base], t[base + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[base + 1] = SHUF(t[base], t[base + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        u[base + 2] = SHUF(t[base + 1], t[base + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        u[base + 3] = SHUF(t[base + 1], t[base + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int i = 0; i < 4; i++) {
        storeu(dst + i * ld, SHUF(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11));
        storeu(dst + (i + 4) * ld, SHUF(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15));
    }
}

ALWAYS_INLINE void transpose(const float *X, float *Xt, int BS) {
    for (int i = 0; i < BS; i += VW)
        for (int j = 0; j < BS; j += VW) transpose8(X + (int64_t)i * BS + j, BS, Xt + (int64_t)j * BS + i, BS);
}

ALWAYS_INLINE v8 vadd(v8 a, v8 b) { return a + b; }
REDUCE8(reduce8_max, vmax)
REDUCE8(reduce8_sum, vadd)

/* exp(x) for x <= ~88: 2^n * p(r), x = n ln2 + r, |r| <= ln2/2 (Cephes expf coefficients,
 * relative error ~2e-7); exactly 0 for x < -87.3 (including -inf); NaN for NaN (and for +inf,
 * which the callers never pass: their arguments are s - max(s)). NaN must propagate: it is how a
 * NaN score (NaN in q, k, the bias or the scale; +inf in the bias gives inf - inf) reaches the
 * row sum l, the output and the backward's P. */
ALWAYS_INLINE v8 vexp(v8 x) {
    const v8 lo = splat(-87.3f), magic = splat(12582912.0f);
    const v8i drop = x < lo;  /* false for NaN */
    v8 xc = vmax(x, lo);
    xc = vselect(xc < splat(88.0f), xc, splat(88.0f));
    v8 t = xc * splat(1.44269504088896341f) + magic;
    v8 n = t - magic;
    v8i ni = (v8i)t - (v8i)magic;
    v8 r = xc - n * splat(0.693359375f);
    r = r - n * splat(-2.12194440e-4f);
    v8 p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * (r * r) + r + splat(1.0f);
    /* x - x is 0 for finite x and NaN for NaN: the polynomial ran on the clamped value, so the
     * NaN is put back here (one add; -inf gives NaN too but is dropped by the select below) */
    v8 y = (v8)((v8i)p + (ni << 23)) + (x - x);
    return (v8)(~drop & (v8i)y);
}

/* Register budget: 32 vector registers with AVX-512VL (also for its 256-bit forms), 16 otherwise.
 * The micro-kernels below size their accumulator blocks to it. */
#if defined(__AVX512VL__)
#define ACC_REGS 16
#else
#define ACC_REGS 8
#endif
#define MM_ROWS (ACC_REGS / 2) /* rows per step of mm_abt: MM_ROWS x 16 columns of C */

/* C[i][j] = sum_d A[i][d] * Bt[d][j] for i < rows (multiple of MM_ROWS), j < BS (multiple of 16).
 * A is [rows][D] with row stride lda; Bt is [D][BS] with row stride ldb; C is [rows][BS].
 * Each step keeps an MM_ROWS x 16 block of C in registers: per d, 2 loads of Bt and MM_ROWS
 * broadcasts of A feed 2*MM_ROWS FMAs. */
ALWAYS_INLINE void mm_abt(const float *A, int64_t lda, const float *Bt, int64_t ldb, float *C,
                          int rows, int BS, const int D) {
    for (int i = 0; i < rows; i += MM_ROWS) {
        const float *a = A + (int64_t)i * lda;
        for (int j = 0; j < BS; j += 16) {
            v8 c[MM_ROWS][2];
#pragma GCC unroll 16
            for (int r = 0; r < MM_ROWS; r++) c[r][0] = c[r][1] = splat(0);
#pragma GCC unroll 4
            for (int d = 0; d < D; d++) {
                const v8 b0 = loadu(Bt + d * ldb + j), b1 = loadu(Bt + d * ldb + j + 8);
#pragma GCC unroll 16
                for (int r = 0; r < MM_ROWS; r++) {
                    const v8 x = splat(a[r * lda + d]);
                    c[r][0] += x * b0;
                    c[r][1] += x * b1;
                }
            }
            float *o = C + (int64_t)i * BS + j;
#pragma GCC unroll 16
            for (int r = 0; r < MM_ROWS; r++) {
                storeu(o + r * BS, c[r][0]);
                storeu(o + r * BS + 8, c[r][1]);
            }
        }
    }
}

/* O[i][:] = alpha[i] * O[i][:] + sum_{j < nc} P[i][j] * M[j][:]  for i < rows (alpha NULL: 1).
 * P is [rows][BS]; M is [nc][D] with row stride ldm; O is [rows][D]. A step keeps R rows x D columns of O
 * in registers (R * D/8 <= ACC_REGS): per j, D/8 loads of M and R broadcasts of P feed R*D/8 FMAs. */
ALWAYS_INLINE void mm_pm(const float *P, const float *M, int64_t ldm, float *O, const float *alpha, int rows,
                         int BS, int nc, const int D) {
    enum { DVMAX = MAX_D / VW, RMAX = 8 };
    const int DV = D / VW;
    const int R = ACC_REGS / DV > RMAX ? RMAX : ACC_REGS / DV;
    for (int i = 0; i < rows; i += R) {
        v8 acc[RMAX][DVMAX];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
#pragma GCC unroll 8
            for (int e = 0; e < DV; e++) acc[r][e] = splat(0);
#pragma GCC unroll 2
        for (int j = 0; j < nc; j++) {
            v8 m[DVMAX];
#pragma GCC unroll 8
            for (int e = 0; e < DV; e++) m[e] = loadu(M + (int64_t)j * ldm + e * VW);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const v8 p = splat(P[(int64_t)(i + r) * BS + j]);
#pragma GCC unroll 8
                for (int e = 0; e < DV; e++) acc[r][e] += p * m[e];
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float *o = O + (int64_t)(i + r) * D;
            const v8 a = splat(alpha ? alpha[i + r] : 1.0f);
#pragma GCC unroll 8
            for (int e = 0; e < DV; e++) storeu(o + e * VW, loadu(o + e * VW) * a + acc[r][e]);
        }
    }
}



/* S[i][:] += bias tile (rows i < nr, columns j < nc); columns nc..BS-1 of rows < rows := -inf. */
ALWAYS_INLINE void add_bias_and_mask(const Args *a, int64_t b, int64_t h, int64_t r0, int nr,
                                     int64_t c0, int nc, float *S, int rows, int BS) {
    if (a->bias) {
        const float *brow = a->bias + b * a->sb_b + h * a->sb_h + r0 * a->sb_i + c0;
        for (int i = 0; i < nr; i++, brow += a->sb_i) {
            float *s = S + (int64_t)i * BS;
            if (nc == BS) {
                for (int j = 0; j < BS; j += VW) storeu(s + j, loadu(s + j) + loadu(brow + j));
            } else {
                for (int j = 0; j < nc; j++) s[j] += brow[j];
            }
        }
    }
    if (nc < BS)
        for (int i = 0; i < rows; i++)
            for (int j = nc; j < BS; j++) S[(int64_t)i * BS + j] = -INFINITY;
}

/* Ask for the bias rows r0..r0+nr-1, columns c0..c0+BS-1 to be brought into cache: the rows of a
 * tile are a full bias row apart, a pattern the hardware prefetchers do not follow. */
ALWAYS_INLINE void prefetch_bias(const Args *a, int64_t b, int64_t h, int64_t r0, int nr, int64_t c0,
                                 int BS) {
    if (!a->bias) return;
    const char *row = (const char *)(a->bias + b * a->sb_b + h * a->sb_h + r0 * a->sb_i + c0);
    const int64_t n = (int64_t)BS * (int64_t)sizeof(float);
    for (int i = 0; i < nr; i++, row += a->sb_i * (int64_t)sizeof(float))
        for (int64_t x = 0; x < n; x += 64) __builtin_prefetch(row + x, 0, 2);
}

/* One online-softmax step for 8 query rows of a score tile S [8][BS] (FlashAttention Alg. 1):
 * optionally S += bias rows (rows < nbias only: rows past L have none), then per row
 * m' = max(m, max_j S), P = exp(S - m') (stored in S), alpha = exp(m - m'), l' = alpha l + sum_j P.
 * Row reductions are done for the 8 rows at once (shuffle networks), so m, l, alpha stay vectors.
 * A row whose scores are all -inf so far keeps m = -inf, P = 0. A NaN score (or +inf: s - m is
 * inf - inf) gives P = NaN, so l turns NaN and stays NaN (later alpha = exp(NaN - m') = NaN), and
 * so does the row's output: NaN propagates as in softmax(S) V, whatever the max reduction did. */
ALWAYS_INLINE void softmax8(float *S, int BS, const float *bias, int64_t sb_i, int nbias, float *m,
                            float *l, float *alpha) {
    v8 red[VW];
    for (int r = 0; r < VW; r++) {
        float *s = S + (int64_t)r * BS;
        v8 mx = splat(-INFINITY);
        if (bias && r < nbias) {
            const float *br = bias + r * sb_i;
            for (int j = 0; j < BS; j += VW) {
                v8 x = loadu(s + j) + loadu(br + j);
                storeu(s + j, x);
                mx = vmax(mx, x);
            }
        } else {
            for (int j = 0; j < BS; j += VW) mx = vmax(mx, loadu(s + j));
        }
        red[r] = mx;
    }
    const v8 mold = loadu(m), ninf = splat(-INFINITY);
    const v8 mnew = vmax(mold, reduce8_max(red));
    const v8 msub = vselect(mnew == ninf, splat(0), mnew);
    const v8 al = vexp(mold - msub);
    for (int r = 0; r < VW; r++) {
        float *s = S + (int64_t)r * BS;
        const v8 mr = splat(msub[r]);
        v8 sum = splat(0);
        for (int j = 0; j < BS; j += VW) {
            v8 p = vexp(loadu(s + j) - mr);
            storeu(s + j, p);
            sum += p;
        }
        red[r] = sum;
    }
    storeu(l, loadu(l) * al + reduce8_sum(red));
    storeu(m, mnew);
    storeu(alpha, al);
}

/* Per-thread scratch. */
typedef struct {
    float *qs, *acc, *acc2, *s, *p, *t, *m, *l, *alpha;
} Scratch;

static int scratch_new(Scratch *w) {
    size_t tile = (size_t)MAX_BS * MAX_BS, rows = (size_t)MAX_BS * MAX_D;
    float *base = NULL;
    if (posix_memalign((void **)&base, 64, sizeof(float) * (3 * rows + 3 * tile + 3 * MAX_BS)))
        return 0;
    w->qs = base;
    w->acc = w->qs + rows;
    w->acc2 = w->acc + rows;
    w->s = w->acc2 + rows;
    w->p = w->s + tile;
    w->t = w->p + tile;
    w->m = w->t + tile;
    w->l = w->m + MAX_BS;
    w->alpha = w->l + MAX_BS;
    return 1;
}

ALWAYS_INLINE int64_t next_item(const Args *a) {
    int64_t n = __atomic_fetch_add(a->counter, 1, __ATOMIC_RELAXED);
    return n < a->n_items ? a->items[n] : -1;
}

/* Load the query tile times scale into qs [BS][D] (rows past L: zero). */
ALWAYS_INLINE void load_q(const Args *a, int64_t bh, int64_t r0, float *qs, int BS, const int D) {
    const int64_t b = bh / a->H, h = bh % a->H;
    const int nr = (int)(a->L - r0 < BS ? a->L - r0 : BS);
    const float *src = a->q + b * a->sq_b + h * a->sq_h + r0 * a->sq_l;
    v8 sc = splat((float)a->scale);
    for (int i = 0; i < nr; i++)
        for (int e = 0; e < D; e += VW) storeu(qs + (int64_t)i * D + e, loadu(src + i * a->sq_l + e) * sc);
    if (nr < BS) memset(qs + (int64_t)nr * D, 0, sizeof(float) * (BS - nr) * D);
}

/* ---- forward ------------------------------------------------------------------------------- */
ALWAYS_INLINE void fwd_item(const Args *a, Scratch *w, int64_t item, const int D) {
    const int BS = (int)a->BS;
    const int64_t nb = a->nb, H = a->H, Lp = a->Lp;
    const int64_t qb = item % nb, bh = item / nb, h = bh % H, b = bh / H;
    const int64_t lrow = (a->lh == 1 ? 0 : h) * nb + qb;
    const int cnt = a->kv_cnt[lrow];
    const int32_t *idx = a->kv_idx + lrow * nb;
    const int64_t r0 = qb * BS;
    const int nr = (int)(a->L - r0 < BS ? a->L - r0 : BS);
    float *out = a->o + b * a->so_b + h * a->so_h + r0 * a->so_l, *lse = a->lse + bh * Lp + r0;
    if (cnt == 0) {
        for (int i = 0; i < nr; i++) memset(out + i * a->so_l, 0, sizeof(float) * D);
        for (int i = 0; i < BS; i++) lse[i] = -INFINITY;
        return;
    }
    float *qs = w->qs, *O = w->acc, *S = w->s, *m = w->m, *l = w->l, *alpha = w->alpha;
    load_q(a, bh, r0, qs, BS, D);
    memset(O, 0, sizeof(float) * BS * D);
    for (int i = 0; i < BS; i++) { m[i] = -INFINITY; l[i] = 0.0f; alpha[i] = 1.0f; }
    for (int t = 0; t < cnt; t++) {
        const int64_t c0 = (int64_t)idx[t] * BS;
        const int nc = (int)(a->L - c0 < BS ? a->L - c0 : BS);
        const float *kt = a->kt + (bh * nb + c0 / BS) * D * BS;
        const float *vb = a->v + b * a->sv_b + h * a->sv_h + c0 * a->sv_l;
        /* chunks of RC query rows: the chunk's scores, the K^T and V tiles stay in L1 */
        for (int rc = 0; rc < nr; rc += RC) {
            const int nrc = nr - rc < RC ? nr - rc : RC;
            /* the same rows of the next tile; in the first tile also the next chunk's rows */
            if (t + 1 < cnt) prefetch_bias(a, b, h, r0 + rc, nrc, (int64_t)idx[t + 1] * BS, BS);
            if (t == 0 && rc + RC < nr)
                prefetch_bias(a, b, h, r0 + rc + RC, nr - rc - RC < RC ? nr - rc - RC : RC, c0, BS);
            mm_abt(qs + rc * D, D, kt, BS, S, RC, BS, D);
            /* the bias is added in the max pass when the tile is whole; else beforehand */
            const int fuse = a->bias != NULL && nc == BS;
            if (!fuse) add_bias_and_mask(a, b, h, r0 + rc, nrc, c0, nc, S, RC, BS);
            const float *brow = fuse ? a->bias + b * a->sb_b + h * a->sb_h + (r0 + rc) * a->sb_i + c0 : NULL;
            for (int g0 = 0; g0 < RC; g0 += VW)
                softmax8(S + (int64_t)g0 * BS, BS, brow ? brow + g0 * a->sb_i : NULL, a->sb_i, nrc - g0,
                         m + rc + g0, l + rc + g0, alpha + rc + g0);
            mm_pm(S, vb, a->sv_l, O + rc * D, alpha + rc, RC, BS, nc, D);
        }
    }
    /* l = 0 exactly iff every score of the row is -inf (a finite maximum contributes exp(0) = 1):
     * the row attends to nothing and gives zeros. A NaN score made l NaN: the row stays NaN. */
    for (int i = 0; i < nr; i++) {
        float *o = out + (int64_t)i * a->so_l;
        if (l[i] != 0.0f) {
            v8 inv = splat(1.0f / l[i]);
            for (int e = 0; e < D; e += VW) storeu(o + e, loadu(O + (int64_t)i * D + e) * inv);
            lse[i] = m[i] + logf(l[i]);
        } else {
            memset(o, 0, sizeof(float) * D);
            lse[i] = -INFINITY;
        }
    }
    for (int i = nr; i < BS; i++) lse[i] = -INFINITY;
}

/* ---- backward ------------------------------------------------------------------------------ */
/* P = exp(S - lse) and dS = P * (dP - delta) for one tile; S holds the scores on entry and P on
 * exit, T holds dP on entry and dS on exit. Rows with lse = -inf (no key, padding) give 0. */
ALWAYS_INLINE void tile_ds(float *S, float *T, const float *lse, const float *delta, int BS) {
    for (int i = 0; i < BS; i++) {
        float *s = S + (int64_t)i * BS, *t = T + (int64_t)i * BS;
        if (lse[i] == -INFINITY) {
            memset(s, 0, sizeof(float) * BS);
            memset(t, 0, sizeof(float) * BS);
            continue;
        }
        v8 lv = splat(lse[i]), dv = splat(delta[i]);
        for (int j = 0; j < BS; j += VW) {
            v8 p = vexp(loadu(s + j) - lv);
            storeu(s + j, p);
            storeu(t + j, p * (loadu(t + j) - dv));
        }
    }
}

/* dK, dV (and dBias) of key block kb for every (b, h) in the item's group. */
ALWAYS_INLINE void bwd_kv_item(const Args *a, Scratch *w, int64_t item, const int D) {
    const int BS = (int)a->BS;
    const int64_t nb = a->nb, H = a->H, B = a->B, Lp = a->Lp, L = a->L;
    const int64_t kb = item % nb, g = item / nb, hg = g % a->gH, bg = g / a->gH;
    const int64_t b0 = a->gB == B ? bg : 0, b1 = a->gB == B ? bg + 1 : B;
    const int64_t h0 = a->gH == H ? hg : 0, h1 = a->gH == H ? hg + 1 : H;
    const int64_t c0 = kb * BS;
    const int nc = (int)(L - c0 < BS ? L - c0 : BS);
    float *qs = w->qs, *S = w->s, *T = w->p, *X = w->t;
    float *dK = w->acc, *dV = w->acc2;
    float *dbias = a->dbias ? a->dbias + (bg * a->gH + hg) * L * L : NULL;
    for (int64_t b = b0; b < b1; b++) {
        for (int64_t h = h0; h < h1; h++) {
            const int64_t bh = b * H + h;
            const int64_t lcol = (a->lh == 1 ? 0 : h) * nb + kb;
            const int cnt = a->q_cnt[lcol];
            const int32_t *idx = a->q_idx + lcol * nb;
            memset(dK, 0, sizeof(float) * BS * D);
            memset(dV, 0, sizeof(float) * BS * D);
            const float *kt = a->kt + (bh * nb + kb) * D * BS, *vt = a->vt + (bh * nb + kb) * D * BS;
            for (int t = 0; t < cnt; t++) {
                const int64_t r0 = (int64_t)idx[t] * BS;
                const int nr = (int)(L - r0 < BS ? L - r0 : BS);
                const float *dO = a->dout + (bh * Lp + r0) * D;
                load_q(a, bh, r0, qs, BS, D);
                mm_abt(qs, D, kt, BS, S, BS, BS, D);
                add_bias_and_mask(a, b, h, r0, nr, c0, nc, S, BS, BS);
                mm_abt(dO, D, vt, BS, T, BS, BS, D);
                tile_ds(S, T, a->lse + bh * Lp + r0, a->delta + bh * Lp + r0, BS);
                if (dbias) {
                    float *db = dbias + r0 * L + c0;
                    for (int i = 0; i < nr; i++)
                        for (int j = 0; j < nc; j++) db[(int64_t)i * L + j] += T[(int64_t)i * BS + j];
                }
                transpose(S, X, BS);                    /* P^T */
                mm_pm(X, dO, D, dV, NULL, BS, BS, BS, D);      /* dV += P^T dO */
                transpose(T, X, BS);                    /* dS^T */
                mm_pm(X, qs, D, dK, NULL, BS, BS, BS, D);      /* dK += dS^T (scale Q) */
            }
            memcpy(a->dk + (bh * Lp + c0) * D, dK, sizeof(float) * BS * D);
            memcpy(a->dv + (bh * Lp + c0) * D, dV, sizeof(float) * BS * D);
        }
    }
}

/* dQ of query block qb of one (b, h). */
ALWAYS_INLINE void bwd_q_item(const Args *a, Scratch *w, int64_t item, const int D) {
    const int BS = (int)a->BS;
    const int64_t nb = a->nb, H = a->H, Lp = a->Lp, L = a->L;
    const int64_t qb = item % nb, bh = item / nb, h = bh % H, b = bh / H;
    const int64_t lrow = (a->lh == 1 ? 0 : h) * nb + qb;
    const int cnt = a->kv_cnt[lrow];
    const int32_t *idx = a->kv_idx + lrow * nb;
    const int64_t r0 = qb * BS;
    const int nr = (int)(L - r0 < BS ? L - r0 : BS);
    float *qs = w->qs, *dQ = w->acc, *S = w->s, *T = w->p;
    const float *dO = a->dout + (bh * Lp + r0) * D;
    memset(dQ, 0, sizeof(float) * BS * D);
    load_q(a, bh, r0, qs, BS, D);
    for (int t = 0; t < cnt; t++) {
        const int64_t c0 = (int64_t)idx[t] * BS;
        const int nc = (int)(L - c0 < BS ? L - c0 : BS);
        mm_abt(qs, D, a->kt + (bh * nb + c0 / BS) * D * BS, BS, S, BS, BS, D);
        add_bias_and_mask(a, b, h, r0, nr, c0, nc, S, BS, BS);
        mm_abt(dO, D, a->vt + (bh * nb + c0 / BS) * D * BS, BS, T, BS, BS, D);
        tile_ds(S, T, a->lse + bh * Lp + r0, a->delta + bh * Lp + r0, BS);
        mm_pm(T, a->k + b * a->sk_b + h * a->sk_h + c0 * a->sk_l, a->sk_l, dQ, NULL, BS, BS, nc, D);  /* dQ += dS K */
    }
    float *out = a->dq + (bh * Lp + r0) * D;
    if (cnt == 0) { /* no kept key: zero gradient, even for a NaN scale */
        memset(out, 0, sizeof(float) * BS * D);
        return;
    }
    v8 sc = splat((float)a->scale);
    for (int64_t x = 0; x < (int64_t)BS * D; x += VW) storeu(out + x, loadu(dQ + x) * sc);
}

/* ---- entry points: one per pass, specialised per head dim ---------------------------------- */
#define SUPPORTED_D(D) ((D) == 8 || (D) == 16 || (D) == 32 || (D) == 64)
#define ENTRY(NAME, FN)                                                     \
    static void NAME##_8(const Args *a, Scratch *w) { for (int64_t it = next_item(a); it >= 0; it = next_item(a)) FN(a, w, it, 8); } \
    static void NAME##_16(const Args *a, Scratch *w) { for (int64_t it = next_item(a); it >= 0; it = next_item(a)) FN(a, w, it, 16); } \
    static void NAME##_32(const Args *a, Scratch *w) { for (int64_t it = next_item(a); it >= 0; it = next_item(a)) FN(a, w, it, 32); } \
    static void NAME##_64(const Args *a, Scratch *w) { for (int64_t it = next_item(a); it >= 0; it = next_item(a)) FN(a, w, it, 64); } \
    int NAME(const Args *a) {                                               \
        Scratch w;                                                          \
        if (a->BS > MAX_BS || a->BS % 16 || !SUPPORTED_D(a->D)) return -2; \
        if (!scratch_new(&w)) return -1;                                    \
        switch (a->D) {                                                     \
        case 8: NAME##_8(a, &w); break;                                     \
        case 16: NAME##_16(a, &w); break;                                   \
        case 32: NAME##_32(a, &w); break;                                   \
        case 64: NAME##_64(a, &w); break;                                   \
        }                                                                   \
        free(w.qs);                                                         \
        return 0;                                                           \
    }

/* Pack one key block of k ([B,H,L,D] through its strides) into its transposed tile of kt
 * ([B,H,nb,D,BS]); the rows of a ragged last block past L are zero. */
ALWAYS_INLINE void pack_item(const Args *a, Scratch *w, int64_t item, const int D) {
    const int BS = (int)a->BS;
    const int64_t kb = item % a->nb, bh = item / a->nb, b = bh / a->H, h = bh % a->H, c0 = kb * BS;
    const int nr = (int)(a->L - c0 < BS ? a->L - c0 : BS);
    const float *src = a->k + b * a->sk_b + h * a->sk_h + c0 * a->sk_l;
    int64_t ls = a->sk_l;
    if (nr < BS) { /* copy the rows into a zero-padded tile first */
        float *tmp = w->qs;
        for (int i = 0; i < nr; i++) memcpy(tmp + (int64_t)i * D, src + i * a->sk_l, sizeof(float) * D);
        memset(tmp + (int64_t)nr * D, 0, sizeof(float) * (BS - nr) * D);
        src = tmp;
        ls = D;
    }
    float *dst = (float *)a->kt + item * BS * D;
    for (int j = 0; j < BS; j += VW)
        for (int d = 0; d < D; d += VW) transpose8(src + j * ls + d, ls, dst + d * BS + j, BS);
}

ENTRY(bsa_pack_t, pack_item)
ENTRY(bsa_forward, fwd_item)
ENTRY(bsa_backward_kv, bwd_kv_item)
ENTRY(bsa_backward_q, bwd_q_item)

/* Version of the Args layout, checked by the caller. */
int bsa_abi_version(void) { return 2; }
