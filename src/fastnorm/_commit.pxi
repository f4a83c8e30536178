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
        source)`` arrays, copied with casting."""
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
        cdef Py_ssize_t c, n, C, N
        cdef double* pm
        cdef double* pv
        cdef double am, av, nm, nv, f
        if self.target is not None:
            cnp.PyArray_CopyInto(<cnp.ndarray>self.target, <cnp.ndarray>result)
        if self.copies is not None:
            for destination, source in self.copies:
                cnp.PyArray_CopyInto(<cnp.ndarray>destination, <cnp.ndarray>source)
        if self.running_mean is not None and mean is not None:
            mean = np.ascontiguousarray(mean, dtype=np.float64)  # as they are, from the kernels
            var = np.ascontiguousarray(var, dtype=np.float64)
            C = cnp.PyArray_SIZE(<cnp.ndarray>self.running_mean)
            N = cnp.PyArray_SIZE(<cnp.ndarray>mean) // C if C > 0 else 0  # no channels: nothing to update
            pm = <double*>cnp.PyArray_DATA(<cnp.ndarray>mean)
            pv = <double*>cnp.PyArray_DATA(<cnp.ndarray>var)
            f = self.factor
            for c in range(C):
                am = pm[c]
                av = pv[c] * self.var_scale
                for n in range(1, N):  # NumPy's mean over the samples: in order, then one division
                    am = am + pm[n * C + c]
                    av = av + pv[n * C + c] * self.var_scale
                if N > 1:
                    am = am / N
                    av = av / N
                if self.plain:
                    if cnp.PyArray_TYPE(<cnp.ndarray>self.running_mean) == cnp.NPY_FLOAT:
                        nm = (1.0 - f) * (<float*>cnp.PyArray_DATA(<cnp.ndarray>self.running_mean))[c] + f * am
                        nv = (1.0 - f) * (<float*>cnp.PyArray_DATA(<cnp.ndarray>self.running_var))[c] + f * av
                        (<float*>cnp.PyArray_DATA(<cnp.ndarray>self.running_mean))[c] = <float>nm
                        (<float*>cnp.PyArray_DATA(<cnp.ndarray>self.running_var))[c] = <float>nv
                    else:
                        nm = (1.0 - f) * (<double*>cnp.PyArray_DATA(<cnp.ndarray>self.running_mean))[c] + f * am
                        nv = (1.0 - f) * (<double*>cnp.PyArray_DATA(<cnp.ndarray>self.running_var))[c] + f * av
                        (<double*>cnp.PyArray_DATA(<cnp.ndarray>self.running_mean))[c] = nm
                        (<double*>cnp.PyArray_DATA(<cnp.ndarray>self.running_var))[c] = nv
                else:
                    (<double*>cnp.PyArray_DATA(self.new_mean))[c] = (
                        (1.0 - f) * (<double*>cnp.PyArray_DATA(self.old_mean))[c] + f * am)
                    (<double*>cnp.PyArray_DATA(self.new_var))[c] = (
                        (1.0 - f) * (<double*>cnp.PyArray_DATA(self.old_var))[c] + f * av)
            if not self.plain:  # one after the other: where they overlap, the variance lands last
                cnp.PyArray_CopyInto(<cnp.ndarray>self.running_mean, self.new_mean)
                cnp.PyArray_CopyInto(<cnp.ndarray>self.running_var, self.new_var)
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

    def become(self, object owner, type cls):
        """Also set ``owner.__class__ = cls`` in the application, after the namespace's update (a lazy
        layer's first call: it becomes the non-lazy class with its first forward)."""
        self.owner = owner
        self.owner_class = cls


cdef inline int _apply(object commit, object result, object mean, object var, object rstd) except -1:
    if commit is not None:
        (<Commit>commit)._apply(result, mean, var, rstd)
    return 0
