# Declarations shared by the parts of fastnorm._kernels (the .pxi files that _kernels.pyx includes):
# the C loops (_simd*.h), the fused type and the structs the parts pass to each other.  The thread pool
# (_pool.h) is declared in _runtime.pxi and the output cache (_buffers.h) in _memory.pxi, their only users.
# Cython reads this file as _kernels.pyx's own declarations.

cdef extern from "_simd.h" nogil:
    int fastnorm_select_isa(int level)
    int fastnorm_isa
    void fastnorm_store_fence()
    void fastnorm_copy_stream(char* dst, const char* src, size_t n)
    void fastnorm_shifted_sums_f32(const float* x, Py_ssize_t n, double shift, double* s1, double* s2)
    void fastnorm_shifted_sums_f64(const double* x, Py_ssize_t n, double shift, double* s1, double* s2)
    void fastnorm_row_moments_f32(const float* x, Py_ssize_t rows, Py_ssize_t n, double* mean, double* var)
    void fastnorm_chan_merge(double* ma, double* va, double mb, double vb, double wa, double wb)
    void fastnorm_chan_merge_columns(double* mean, double* var, const double* bmean, const double* bvar,
                                     Py_ssize_t n, double wa, double wb)
    void fastnorm_shifted_moments(double shift, double s1, double s2, double n, double* mean, double* var)
    void fastnorm_shifted_moments_f32(const float* shift, Py_ssize_t stride, double n, Py_ssize_t count, double* s1,
                                      double* s2)
    void fastnorm_column_sums_f32(const float* x, Py_ssize_t rows, Py_ssize_t ncols, Py_ssize_t ld,
                                  const float* base, double* s1, double* s2)
    void fastnorm_column_sums_f64(const double* x, Py_ssize_t rows, Py_ssize_t ncols, Py_ssize_t ld,
                                  const double* base, double* s1, double* s2)
    Py_ssize_t fastnorm_first_modified(const double* xhat_sums, Py_ssize_t G, double inv, const double* mean,
                                       const double* rstd, double tol, double per_mean, double top, double eps,
                                       const double* eps_r2, int rms)
    void fastnorm_add_f32(const float* x, const float* r, float* t, float* h, Py_ssize_t n)
    void fastnorm_add_f64(const double* x, const double* r, double* t, double* h, Py_ssize_t n)
    void fastnorm_add_stream_f32(const float* x, const float* r, float* t, float* h, Py_ssize_t n, Py_ssize_t ahead)
    void fastnorm_add_stream_f64(const double* x, const double* r, double* t, double* h, Py_ssize_t n,
                                 Py_ssize_t ahead)
    void fastnorm_sweep_f32(const float* x, float* y, Py_ssize_t n, float mean_hi, float scale, float shift)
    void fastnorm_sweep_f64(const double* x, double* y, Py_ssize_t n, double mean_hi, double scale, double shift)
    void fastnorm_sweep_columns_f32(const float* x, float* y, Py_ssize_t rows, Py_ssize_t ncols,
                                    const float* p, Py_ssize_t plen)
    void fastnorm_sweep_columns_f64(const double* x, double* y, Py_ssize_t rows, Py_ssize_t ncols,
                                    const double* p, Py_ssize_t plen)
    void fastnorm_sweep_affine_f32(const float* x, float* y, Py_ssize_t n, float mean_hi, float scale,
                                   float shift, const float* w, const float* b)
    void fastnorm_sweep_affine_f64(const double* x, double* y, Py_ssize_t n, double mean_hi, double scale,
                                   double shift, const double* w, const double* b)
    void fastnorm_backward_reduce_run_f32(const float* x, const float* dy, Py_ssize_t n, double mean, double rstd,
                                          double* sum_dy, double* sum_dy_xc, double* sum_xhat, double* sum_xhat2)
    void fastnorm_backward_reduce_run_f64(const double* x, const double* dy, Py_ssize_t n, double mean, double rstd,
                                          double* sum_dy, double* sum_dy_xc, double* sum_xhat, double* sum_xhat2)
    void fastnorm_backward_reduce_per_element_f32(const float* x, const float* dy, Py_ssize_t n, double mean,
                                                  double rstd, const float* w, double* sum_w_dy, double* sum_w_dy_xc,
                                                  double* sum_xhat,
                                                  double* sum_xhat2, double* col_dy, double* col_dy_xhat)
    void fastnorm_backward_reduce_per_element_f64(const double* x, const double* dy, Py_ssize_t n, double mean,
                                                  double rstd, const double* w, double* sum_w_dy, double* sum_w_dy_xc,
                                                  double* sum_xhat, double* sum_xhat2, double* col_dy,
                                                  double* col_dy_xhat)
    void fastnorm_backward_elemt_f32(const float* x, const float* dy, float* dx, Py_ssize_t n, float mean_hi,
                                     float c1, float c2, float c3)
    void fastnorm_backward_elemt_f64(const double* x, const double* dy, double* dx, Py_ssize_t n, double mean_hi,
                                     double c1, double c2, double c3)
    void fastnorm_backward_reduce_runs_f32(const float* x, const float* dy, Py_ssize_t rows, Py_ssize_t K,
                                           Py_ssize_t length, const double* mean, const double* rstd, double* sum_dy,
                                           double* sum_dy_xhat, double* xhat_sums)
    void fastnorm_backward_reduce_runs_f64(const double* x, const double* dy, Py_ssize_t rows, Py_ssize_t K,
                                           Py_ssize_t length, const double* mean, const double* rstd, double* sum_dy,
                                           double* sum_dy_xhat, double* xhat_sums)
    void fastnorm_backward_elemt_runs_f32(const float* x, const float* dy, float* dx, Py_ssize_t rows,
                                          Py_ssize_t K, Py_ssize_t length, const float* mean_hi, const float* c1,
                                          const float* c2, const float* c3)
    void fastnorm_backward_elemt_runs_f64(const double* x, const double* dy, double* dx, Py_ssize_t rows,
                                          Py_ssize_t K, Py_ssize_t length, const double* mean_hi, const double* c1,
                                          const double* c2, const double* c3)
    void fastnorm_backward_elemt_per_element_f32(const float* x, const float* dy, float* dx, Py_ssize_t n,
                                                 float mean_hi, float c1, float c2, float c3, const float* w)
    void fastnorm_backward_elemt_per_element_f64(const double* x, const double* dy, double* dx, Py_ssize_t n,
                                                 double mean_hi, double c1, double c2, double c3, const double* w)
    void fastnorm_backward_reduce_columns_f32(const float* x, const float* dy, Py_ssize_t rows, Py_ssize_t ncols,
                                              Py_ssize_t ld, const double* mean, const double* rstd, double* sum_dy,
                                              double* sum_dy_xc, double* sum_xhat, double* sum_xhat2)
    void fastnorm_backward_reduce_columns_f64(const double* x, const double* dy, Py_ssize_t rows,
                                              Py_ssize_t ncols, Py_ssize_t ld, const double* mean, const double* rstd,
                                              double* sum_dy, double* sum_dy_xc, double* sum_xhat, double* sum_xhat2)
    void fastnorm_backward_elemt_columns_f32(const float* x, const float* dy, float* dx, Py_ssize_t rows,
                                             Py_ssize_t ncols, Py_ssize_t ld, const float* p, Py_ssize_t plen)
    void fastnorm_backward_elemt_columns_f64(const double* x, const double* dy, double* dx, Py_ssize_t rows,
                                             Py_ssize_t ncols, Py_ssize_t ld, const double* p, Py_ssize_t plen)
    void fastnorm_backward_elemt_stream_f32(const float* x, const float* dy, float* dx, Py_ssize_t n, float mean_hi,
                                            float c1, float c2, float c3, const float* w)
    void fastnorm_backward_elemt_stream_f64(const double* x, const double* dy, double* dx, Py_ssize_t n,
                                            double mean_hi, double c1, double c2, double c3, const double* w)
    void fastnorm_sweep_affine_stream_f32(const float* x, float* y, Py_ssize_t n, float mean_hi, float scale,
                                          float shift, const float* w, const float* b)
    void fastnorm_sweep_affine_stream_f64(const double* x, double* y, Py_ssize_t n, double mean_hi, double scale,
                                          double shift, const double* w, const double* b)
    void fastnorm_activate_f32(float* v, const float* add, Py_ssize_t n, int act)
    void fastnorm_activate_f64(double* v, const double* add, Py_ssize_t n, int act)
    void fastnorm_sweep_clamp_f32(const float* x, float* y, Py_ssize_t n, float mean_hi, float scale, float shift,
                                  const float* add, float hi)
    void fastnorm_sweep_clamp_f64(const double* x, double* y, Py_ssize_t n, double mean_hi, double scale,
                                  double shift, const double* add, double hi)
    void fastnorm_activation_grad_f32(float* z, const float* dy, Py_ssize_t n, int act)
    void fastnorm_activation_grad_f64(double* z, const double* dy, Py_ssize_t n, int act)
    void fastnorm_clamp_grad_f32(const float* x, const float* dy, float* dz, Py_ssize_t n, float mean_hi,
                                 float scale, float shift, const float* add, int relu6)
    void fastnorm_clamp_grad_f64(const double* x, const double* dy, double* dz, Py_ssize_t n, double mean_hi,
                                 double scale, double shift, const double* add, int relu6)
    void fastnorm_sweep_stream_f32(const float* x, float* y, Py_ssize_t n, const float* mean_hi,
                                   const float* scale, const float* shift, Py_ssize_t period)
    void fastnorm_sweep_stream_f64(const double* x, double* y, Py_ssize_t n, const double* mean_hi,
                                   const double* scale, const double* shift, Py_ssize_t period)

ctypedef fused floating:
    float
    double

# Values per moments block.  Small enough to sit in L1 while the block is summed, large enough that the
# Chan merge that follows each block (a few divisions) is negligible.
cdef enum:
    BLOCK = 2048

cdef struct Moments:
    double count
    double mean
    double var      # biased variance: the sum of squared deviations (M2) itself overflows first, e.g.
                    # 2e308 for the two values +-1e154, whose variance 1e308 is a double

# A per-channel parameter vector: float32 or float64, contiguous, or absent (NULL).
cdef struct ParamVector:
    const void* data
    bint is_f64


# What a fused sweep applies to the values it writes: y = act(y + add) (act 0: none; add NULL: none).
# ``add`` is contiguous in the layout of the output, which starts at ``y0``: the value added to y[i] is
# add[&y[i] - y0].  Passed as NULL where there is nothing to apply, so the plain sweeps run unchanged.
cdef struct Epilogue:
    int act
    const void* add
    const void* y0


cdef struct Tiles:
    # The tiles of a channels-last pass over [M, C]: row blocks of ``rb`` rows (fixed by the shape: the
    # bits depend on them), each split into ``ncb`` column blocks of ``cw`` columns (for the threads).
    Py_ssize_t M, C, rb, nblocks, ncb, cw


# A row r of an [N, R, S] buffer is N runs of S values (x[n, r, :]).  BatchNorm channels first: a row is
# a channel (R = C).  LayerNorm, InstanceNorm, GroupNorm, RMSNorm: N = 1 and a row is one contiguous
# normalization group.  Only the affine that follows differs:

cdef struct RowAffine:
    ParamVector weight
    ParamVector bias
    Py_ssize_t sub          # per-channel mode: values per sub-run sharing one channel's scale and shift;
    Py_ssize_t groups       # sub-run j of row r belongs to channel (r % groups) * (S // sub) + j
    bint per_element        # weight/bias indexed by the position in the run (LayerNorm, RMSNorm); they
                            # then have the data's dtype
    bint rms                # scale by the root mean square, without centering (RMSNorm)
    const Epilogue* ep      # the activation and add applied as the rows are written, or NULL
