/* The forward sweeps, y = (x - mean_hi) * scale + shift, cached and streamed (included by _simd.h). */
/* y = (x - mean_hi) * scale + shift over n contiguous values (one channel's run). */
#define FASTNORM_SWEEP(NAME, T)                                                        \
    FASTNORM_PLAIN(NAME, (const T *x, T *y, ptrdiff_t n, T mean_hi, T scale, T shift), \
                   (x, y, n, mean_hi, scale, shift))                                   \
    {                                                                                  \
        for (ptrdiff_t i = 0; i < n; i++)                                              \
            y[i] = (x[i] - mean_hi) * scale + shift;                                   \
    }

/* The same per column of [rows, ncols] (channels last).  p holds mean_hi, scale and shift as three arrays of
 * plen >= ncols values each (the Cython side tiles the per-channel values so that a row can span several
 * rows of the tensor, and the per-row loop overhead is paid once per ~1000 values). */
#define FASTNORM_SWEEP_COLUMNS(NAME, T)                                                                   \
    FASTNORM_PLAIN(NAME, (const T *x, T *y, ptrdiff_t rows, ptrdiff_t ncols, const T *p, ptrdiff_t plen), \
                   (x, y, rows, ncols, p, plen))                                                          \
    {                                                                                                     \
        const T *restrict mean_hi = p, *restrict scale = p + plen, *restrict shift = p + 2 * plen;        \
        for (ptrdiff_t r = 0; r < rows; r++) {                                                            \
            const T *xr = x + r * ncols;                                                                  \
            T *yr = y + r * ncols;                                                                        \
            for (ptrdiff_t c = 0; c < ncols; c++)                                                         \
                yr[c] = (xr[c] - mean_hi[c]) * scale[c] + shift[c];                                       \
        }                                                                                                 \
    }

/* Elementwise affine after the normalization (LayerNorm, RMSNorm):
 * y = ((x - mean_hi) * scale + shift) * w[i] (+ b[i]). */
#define FASTNORM_SWEEP_AFFINE(NAME, T)                                                                                \
    FASTNORM_PLAIN(                                                                                                   \
        NAME, (const T *x, T *y, ptrdiff_t n, T mean_hi, T scale, T shift, const T *restrict w, const T *restrict b), \
        (x, y, n, mean_hi, scale, shift, w, b))                                                                       \
    {                                                                                                                 \
        if (b) {                                                                                                      \
            for (ptrdiff_t i = 0; i < n; i++)                                                                         \
                y[i] = ((x[i] - mean_hi) * scale + shift) * w[i] + b[i];                                              \
        } else {                                                                                                      \
            for (ptrdiff_t i = 0; i < n; i++)                                                                         \
                y[i] = ((x[i] - mean_hi) * scale + shift) * w[i];                                                     \
        }                                                                                                             \
    }
FASTNORM_SWEEP(fastnorm_sweep_f32, float)
FASTNORM_SWEEP(fastnorm_sweep_f64, double)
FASTNORM_SWEEP_COLUMNS(fastnorm_sweep_columns_f32, float)
FASTNORM_SWEEP_COLUMNS(fastnorm_sweep_columns_f64, double)
FASTNORM_SWEEP_AFFINE(fastnorm_sweep_affine_f32, float)
FASTNORM_SWEEP_AFFINE(fastnorm_sweep_affine_f64, double)

#if FASTNORM_HAVE_STREAM
#define FASTNORM_SWEEP_STREAM(NAME, T, V, SET1, LOADU, SUB, MUL, ADD, STREAM, W)                                     \
    static void NAME(const T *x, T *y, ptrdiff_t n, const T *mean_hi, const T *scale, const T *shift,                \
                     ptrdiff_t period)                                                                               \
    {                                                                                                                \
        /* period 0: one channel (mean_hi[0], scale[0], shift[0]); otherwise x[i] is in column \
         * i % period of per-column values. */                     \
        ptrdiff_t i = 0;                                                                                             \
        if (period && period % W == 0 && n % period == 0 && !((uintptr_t)y & 15)) {                                  \
            /* whole aligned rows: the common channels-last case */                                                  \
            for (; i < n; i += period)                                                                               \
                for (ptrdiff_t c = 0; c < period; c += W)                                                            \
                    STREAM(y + i + c,                                                                                \
                           ADD(MUL(SUB(LOADU(x + i + c), LOADU(mean_hi + c)), LOADU(scale + c)), LOADU(shift + c))); \
            return;                                                                                                  \
        }                                                                                                            \
        for (; i < n && ((uintptr_t)(y + i) & 15); i++) {                                                            \
            ptrdiff_t c = period ? i % period : 0;                                                                   \
            FASTNORM_STREAM1(T, y + i, (x[i] - mean_hi[c]) * scale[c] + shift[c]);                                   \
        }                                                                                                            \
        if (!period) {                                                                                               \
            V h = SET1(mean_hi[0]), s = SET1(scale[0]), t = SET1(shift[0]);                                          \
            for (; i + W <= n; i += W)                                                                               \
                STREAM(y + i, ADD(MUL(SUB(LOADU(x + i), h), s), t));                                                 \
        } else {                                                                                                     \
            ptrdiff_t c = i % period;                                                                                \
            for (; i + W <= n; i += W) {                                                                             \
                if (c + W <= period) {                                                                               \
                    STREAM(y + i,                                                                                    \
                           ADD(MUL(SUB(LOADU(x + i), LOADU(mean_hi + c)), LOADU(scale + c)), LOADU(shift + c)));     \
                    c += W;                                                                                          \
                    if (c == period)                                                                                 \
                        c = 0;                                                                                       \
                } else { /* the values wrap around the period inside this vector */                                  \
                    for (int k = 0; k < W; k++) {                                                                    \
                        FASTNORM_STREAM1(T, y + i + k, (x[i + k] - mean_hi[c]) * scale[c] + shift[c]);               \
                        if (++c == period)                                                                           \
                            c = 0;                                                                                   \
                    }                                                                                                \
                }                                                                                                    \
            }                                                                                                        \
        }                                                                                                            \
        for (; i < n; i++) {                                                                                         \
            ptrdiff_t c = period ? i % period : 0;                                                                   \
            FASTNORM_STREAM1(T, y + i, (x[i] - mean_hi[c]) * scale[c] + shift[c]);                                   \
        }                                                                                                            \
    }
/* y = ((x - mean_hi) * scale + shift) * w[i] (+ b[i]) with non-temporal stores (b NULL: no bias); the
 * operations of FASTNORM_SWEEP_AFFINE in the same order. */
#define FASTNORM_SWEEP_AFFINE_STREAM(NAME, T, V, SET1, LOADU, SUB, MUL, ADD, STREAM, W)                    \
    static void NAME(const T *x, T *y, ptrdiff_t n, T mean_hi, T scale, T shift, const T *w, const T *b)   \
    {                                                                                                      \
        ptrdiff_t i = 0;                                                                                   \
        for (; i < n && ((uintptr_t)(y + i) & 15); i++)                                                    \
            FASTNORM_STREAM1(T, y + i,                                                                     \
                             b ? ((x[i] - mean_hi) * scale + shift) * w[i] + b[i]                          \
                               : ((x[i] - mean_hi) * scale + shift) * w[i]);                               \
        V h = SET1(mean_hi), s = SET1(scale), t = SET1(shift);                                             \
        if (b) {                                                                                           \
            for (; i + W <= n; i += W)                                                                     \
                STREAM(y + i, ADD(MUL(ADD(MUL(SUB(LOADU(x + i), h), s), t), LOADU(w + i)), LOADU(b + i))); \
        } else {                                                                                           \
            for (; i + W <= n; i += W)                                                                     \
                STREAM(y + i, MUL(ADD(MUL(SUB(LOADU(x + i), h), s), t), LOADU(w + i)));                    \
        }                                                                                                  \
        for (; i < n; i++)                                                                                 \
            FASTNORM_STREAM1(T, y + i,                                                                     \
                             b ? ((x[i] - mean_hi) * scale + shift) * w[i] + b[i]                          \
                               : ((x[i] - mean_hi) * scale + shift) * w[i]);                               \
    }
FASTNORM_SWEEP_AFFINE_STREAM(fastnorm_sweep_affine_stream_f32, float, __m128, _mm_set1_ps, _mm_loadu_ps, _mm_sub_ps,
                             _mm_mul_ps, _mm_add_ps, _mm_stream_ps, 4)
FASTNORM_SWEEP_AFFINE_STREAM(fastnorm_sweep_affine_stream_f64, double, __m128d, _mm_set1_pd, _mm_loadu_pd, _mm_sub_pd,
                             _mm_mul_pd, _mm_add_pd, _mm_stream_pd, 2)
FASTNORM_SWEEP_STREAM(fastnorm_sweep_stream_f32, float, __m128, _mm_set1_ps, _mm_loadu_ps, _mm_sub_ps, _mm_mul_ps,
                      _mm_add_ps, _mm_stream_ps, 4)
FASTNORM_SWEEP_STREAM(fastnorm_sweep_stream_f64, double, __m128d, _mm_set1_pd, _mm_loadu_pd, _mm_sub_pd, _mm_mul_pd,
                      _mm_add_pd, _mm_stream_pd, 2)
#else
#define FASTNORM_SWEEP_PLAIN(NAME, T)                                                                 \
    static void NAME(const T *x, T *y, ptrdiff_t n, const T *mean_hi, const T *scale, const T *shift, \
                     ptrdiff_t period)                                                                \
    {                                                                                                 \
        for (ptrdiff_t i = 0; i < n; i++) {                                                           \
            ptrdiff_t c = period ? i % period : 0;                                                    \
            y[i] = (x[i] - mean_hi[c]) * scale[c] + shift[c];                                         \
        }                                                                                             \
    }
FASTNORM_SWEEP_PLAIN(fastnorm_sweep_stream_f32, float)
FASTNORM_SWEEP_PLAIN(fastnorm_sweep_stream_f64, double)
#define fastnorm_sweep_affine_stream_f32 fastnorm_sweep_affine_f32
#define fastnorm_sweep_affine_stream_f64 fastnorm_sweep_affine_f64
#endif

/* t = x + r over n values into t (a buffer in cache), and also into h (the residual stream's output)
 * unless h is NULL; streamed: h with non-temporal stores, read by nothing in this call.  The sum is the
 * same IEEE addition either way. */
#define FASTNORM_ADD(NAME, T)                                                                                   \
    FASTNORM_PLAIN(NAME, (const T *restrict x, const T *restrict r, T *restrict t, T *restrict h, ptrdiff_t n), \
                   (x, r, t, h, n))                                                                             \
    {                                                                                                           \
        for (ptrdiff_t i = 0; i < n; i++)                                                                       \
            t[i] = x[i] + r[i];                                                                                 \
        if (h)                                                                                                  \
            memcpy(h, t, n * sizeof(T));                                                                        \
    }
FASTNORM_ADD(fastnorm_add_f32, float)
FASTNORM_ADD(fastnorm_add_f64, double)
#if FASTNORM_HAVE_STREAM
/* The same with h streamed, and the lines of x and r ``ahead`` values on requested (the next rows, which
 * then arrive while these are normalized: without it each step waits for memory in its first loop). */
#define FASTNORM_ADD_STREAM(NAME, T, LOADU, ADD, STORE, STREAM, W)                                        \
    static void NAME(const T *restrict x, const T *restrict r, T *restrict t, T *restrict h, ptrdiff_t n, \
                     ptrdiff_t ahead)                                                                     \
    {                                                                                                     \
        ptrdiff_t i = 0;                                                                                  \
        for (; i < n && ((uintptr_t)(h + i) & 15); i++) {                                                 \
            t[i] = x[i] + r[i];                                                                           \
            FASTNORM_STREAM1(T, h + i, t[i]);                                                             \
        }                                                                                                 \
        for (; i + 64 / (ptrdiff_t)sizeof(T) <= n; i += 64 / (ptrdiff_t)sizeof(T)) {                      \
            _mm_prefetch((const char *)(x + i + ahead), _MM_HINT_T0);                                     \
            _mm_prefetch((const char *)(r + i + ahead), _MM_HINT_T0);                                     \
            for (ptrdiff_t k = i; k < i + 64 / (ptrdiff_t)sizeof(T); k += W) {                            \
                STORE(t + k, ADD(LOADU(x + k), LOADU(r + k)));                                            \
                STREAM(h + k, LOADU(t + k));                                                              \
            }                                                                                             \
        }                                                                                                 \
        for (; i < n; i++) {                                                                              \
            t[i] = x[i] + r[i];                                                                           \
            FASTNORM_STREAM1(T, h + i, t[i]);                                                             \
        }                                                                                                 \
    }
FASTNORM_ADD_STREAM(fastnorm_add_stream_f32, float, _mm_loadu_ps, _mm_add_ps, _mm_storeu_ps, _mm_stream_ps, 4)
FASTNORM_ADD_STREAM(fastnorm_add_stream_f64, double, _mm_loadu_pd, _mm_add_pd, _mm_storeu_pd, _mm_stream_pd, 2)
#else
#define fastnorm_add_stream_f32(x, r, t, h, n, ahead) fastnorm_add_f32(x, r, t, h, n)
#define fastnorm_add_stream_f64(x, r, t, h, n, ahead) fastnorm_add_f64(x, r, t, h, n)
#endif
