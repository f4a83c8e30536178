# Commit: what a call changes besides its kernel's output (copies into out=, the running statistics, a
# layer's attributes), applied by the kernel call that writes the output.  The running-statistics update
# is written here once, for every layer and function.

@cython.auto_pickle(False)  # applied once, by the call it was made for
cdef class Commit:
    """What a call changes besides its kernel's output, applied by the kernel call itself once that
    output is written.

    Python runs signal handlers (KeyboardInterrupt) between bytecodes: anywhere in Python code, never
    inside a kernel call.  So a call prepares everything beforehand (checks, the memory of the new running
    values) and its kernel call, after its sweep, copies the result into ``out=`` where it could not write
    there directly, updates the running statistics, and sets a layer's attributes (its batch count, what
    backward keeps).  A call interrupted or failing before its kernel runs has changed nothing; once the
    kernel has run, all of it is applied.

    ``Commit(namespace, values)``: ``namespace.update(values)`` is part of the application (a layer's
    ``__dict__`` and its new attribute values).
    """
    cdef object target
    cdef tuple copies
    cdef object running_mean, running_var
    cdef cnp.ndarray old_mean, old_var, new_mean, new_var   # float64, for running buffers of other kinds
    cdef bint plain
    cdef double factor, var_scale
    cdef dict namespace, values
    cdef object stats_shape
    cdef bint rms
    cdef tuple kept                 # the statistics to keep: given, or (mean, rstd) of the call
    cdef object owner, owner_class  # become(): an object whose class the application sets
    cdef readonly bint applied

    @property
    def stats(self):
        """The statistics a layer keeps for backward: (mean, rstd), or (rstd,) for RMSNorm, of
        ``stats_shape``; None before it is applied."""
        if self.kept is None or self.stats_shape is None:
            return self.kept
        mean, rstd = self.kept
        rstd = rstd.reshape(self.stats_shape)
        return (rstd,) if self.rms else (mean.reshape(self.stats_shape), rstd)

    def __init__(self, dict namespace=None, dict values=None):
        self.namespace = namespace
        self.values = values

    def prepare(self, object target=None, tuple running=None, object stats_shape=None, bint rms=False,
                tuple stats=None, tuple copies=None):
        """``target``: ``out=`` in the kernel's layout, where the kernel writes elsewhere (copied with
        casting).  ``running``: ``(running_mean, running_var, factor, var_scale)``, updated in float64
        with ``(1 - factor) * running + factor * batch``, the batch's being its mean and ``var *
        var_scale`` (averaged over the samples when the statistics are per sample and channel).
        ``stats_shape``: keep the call's statistics (see ``stats``) in this shape; ``stats``: the
        statistics to keep where they are known beforehand (frozen ones).  ``copies``: ``(destination,
        source)`` arrays, copied with casting after the running statistics' update (so a source may be
        what it updated)."""
        self.target = target
        self.copies = copies
        self.stats_shape = stats_shape
        self.rms = rms
        if stats is not None:
            self.kept = stats
            self.stats_shape = None
        if running is None:
            return
        self.running_mean, self.running_var, self.factor, self.var_scale = running
        self.plain = _plain_running(self.running_mean, self.running_var)
        if not self.plain:  # read now, written with casting by NumPy's C copy at the end
            self.old_mean = np.array(self.running_mean, dtype=np.float64).reshape(-1)
            self.old_var = np.array(self.running_var, dtype=np.float64).reshape(-1)
            self.new_mean = np.empty_like(self.old_mean)
            self.new_var = np.empty_like(self.old_var)

    def apply(self, object result=None, object mean=None, object var=None, object rstd=None):
        """Apply it where no kernel runs (an empty input): ``result`` the output, mean, var and rstd the
        batch statistics (float64, per channel or per sample and channel)."""
        self._apply(result, mean, var, rstd)

    cdef int _apply(self, object result, object mean, object var, object rstd) except -1:
        cdef Py_ssize_t C
        if self.target is not None:
            cnp.PyArray_CopyInto(<cnp.ndarray>self.target, <cnp.ndarray>result)
        if self.running_mean is not None and mean is not None:
            if not _plain_doubles(mean):
                mean = np.ascontiguousarray(mean, dtype=np.float64)  # as they are, from the kernels
            if not _plain_doubles(var):
                var = np.ascontiguousarray(var, dtype=np.float64)
            C = cnp.PyArray_SIZE(<cnp.ndarray>self.running_mean)
            if C > 0:  # no channels: nothing to update
                self._update_running(<double*>cnp.PyArray_DATA(<cnp.ndarray>mean),
                                     <double*>cnp.PyArray_DATA(<cnp.ndarray>var), C,
                                     cnp.PyArray_SIZE(<cnp.ndarray>mean) // C)
            if not self.plain:  # one after the other: where they overlap, the variance lands last
                cnp.PyArray_CopyInto(<cnp.ndarray>self.running_mean, self.new_mean)
                cnp.PyArray_CopyInto(<cnp.ndarray>self.running_var, self.new_var)
        if self.copies is not None:  # after the update: a flat copy of a running statistic is written back
            for destination, source in self.copies:
                cnp.PyArray_CopyInto(<cnp.ndarray>destination, <cnp.ndarray>source)
        if self.stats_shape is not None and rstd is not None:
            self.kept = (mean, rstd)
        if self.namespace is not None:
            PyDict_Update(self.namespace, self.values)
            self.namespace = self.values = None  # the values may hold this commit (a layer's saved stats)
        if self.owner is not None:
            self.owner.__class__ = self.owner_class
            self.owner = self.owner_class = None
        self.applied = True
        return 0

    cdef void _update_running(self, const double* pm, const double* pv, Py_ssize_t C, Py_ssize_t N):
        """``running = (1 - f) * running + f * batch`` per channel, the batch's mean and variance (times
        var_scale) averaged over its N samples as NumPy's mean does (in order, then one division).  The
        running buffers' pointers and the factors are read once: through the stores to a float32 buffer
        the compiler would read them again for every channel."""
        cdef Py_ssize_t c, n
        cdef double am, av
        cdef double f = self.factor, keep = 1.0 - self.factor, scale = self.var_scale
        cdef bint f32 = self.plain and cnp.PyArray_TYPE(<cnp.ndarray>self.running_mean) == cnp.NPY_FLOAT
        cdef float* mean32 = NULL
        cdef float* var32 = NULL
        cdef double* old_mean
        cdef double* old_var
        cdef double* new_mean
        cdef double* new_var
        if f32:
            mean32 = <float*>cnp.PyArray_DATA(<cnp.ndarray>self.running_mean)
            var32 = <float*>cnp.PyArray_DATA(<cnp.ndarray>self.running_var)
        elif self.plain:
            old_mean = new_mean = <double*>cnp.PyArray_DATA(<cnp.ndarray>self.running_mean)
            old_var = new_var = <double*>cnp.PyArray_DATA(<cnp.ndarray>self.running_var)
        else:
            old_mean, old_var = <double*>cnp.PyArray_DATA(self.old_mean), <double*>cnp.PyArray_DATA(self.old_var)
            new_mean, new_var = <double*>cnp.PyArray_DATA(self.new_mean), <double*>cnp.PyArray_DATA(self.new_var)
        if N == 1 and f32:  # the common case, as a loop without branches (which vectorizes)
            for c in range(C):
                mean32[c] = <float>(keep * mean32[c] + f * pm[c])
                var32[c] = <float>(keep * var32[c] + f * (pv[c] * scale))
            return
        for c in range(C):
            am = pm[c]
            av = pv[c] * scale
            for n in range(1, N):
                am = am + pm[n * C + c]
                av = av + pv[n * C + c] * scale
            if N > 1:
                am = am / N
                av = av / N
            if f32:
                mean32[c] = <float>(keep * mean32[c] + f * am)
                var32[c] = <float>(keep * var32[c] + f * av)
            else:
                new_mean[c] = keep * old_mean[c] + f * am
                new_var[c] = keep * old_var[c] + f * av

    def become(self, object owner, type cls):
        """Also set ``owner.__class__ = cls`` in the application, after the namespace's update (a lazy
        layer's first call: it becomes the non-lazy class with its first forward)."""
        self.owner = owner
        self.owner_class = cls


cdef inline bint _plain_doubles(object a):
    """Whether ``a`` is a C-contiguous float64 ndarray (the kernels' statistics)."""
    return (type(a) is np.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_DOUBLE
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a))


cdef inline int _apply(object commit, object result, object mean, object var, object rstd) except -1:
    if commit is not None:
        (<Commit>commit)._apply(result, mean, var, rstd)
    return 0
