# Runtime facts and settings: the ISA level of the C loops, OpenMP and the thread pool, the cache
# sizes that decide streamed stores, and the bench's parallel copy.

cdef extern from *:
    """
    #ifdef _OPENMP
    static int fastnorm_openmp_enabled(void) { return 1; }
    #else
    static int fastnorm_openmp_enabled(void) { return 0; }
    #endif
    """
    int fastnorm_openmp_enabled() nogil

cdef extern from "_pool.h" nogil:
    int fastnorm_get_num_threads()
    void fastnorm_set_num_threads(int n)
    void fastnorm_set_thread_cap(int n)
    int fastnorm_own_runtime()
    void fastnorm_pool_init()

# A prange of n threads runs n * FASTNORM_BLOCKS_PER_THREAD thread numbers (_pool.h), several of them one
# after another on one thread: memory private to a thread is indexed by a loop's iteration (a share per
# iteration of a prange over nthreads), never by cython.parallel.threadid().
    void fastnorm_set_spin_ns(long ns)

fastnorm_pool_init()


def set_isa(int level=3):
    """Run the C loops at ISA level ``level`` or the CPU's highest below it (the default: the highest):
    0 the baseline, 1 AVX2 + FMA + F16C, 2 AVX-512 (F, BW, VL, DQ), 3 AVX-512 with BF16 (_simd.h).  Lower
    levels are for measurements and tests, not while a kernel runs.  Returns the level now in force."""
    return fastnorm_select_isa(level)


set_isa()


def get_isa():
    """The ISA level in force (see set_isa)."""
    return fastnorm_isa


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(fastnorm_openmp_enabled())


def get_num_threads():
    """The process's thread count (what set_num_threads and threadpoolctl set)."""
    return fastnorm_get_num_threads()


def set_num_threads(int n, int cap):
    """Set the thread count to ``n``, at most ``cap``, and keep ``cap`` for threadpoolctl's settings."""
    fastnorm_set_thread_cap(cap)
    fastnorm_set_num_threads(n)


def own_runtime():
    """True when the parallel loops run on fastnorm's own pool (_pool.h), not an OpenMP runtime."""
    return bool(fastnorm_own_runtime())


def set_spin(double seconds):
    """How long an idle worker of fastnorm's pool waits for the next region before it sleeps."""
    fastnorm_set_spin_ns(<long>(seconds * 1e9))


@cython.wraparound(True)  # text[-1]: plain Python indexing (the module's default is off)
def last_level_cache_bytes():
    """Size of the CPU's last-level cache as Linux reports it (sysfs), or 32 MiB where it does not."""
    import glob
    size = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
            size = max(size, int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]])
        except (OSError, ValueError, KeyError, IndexError):
            pass
    return size or 32 << 20


# Calls that touch at least this many bytes (inputs and output) write their output with non-temporal
# stores: it would not stay in the last-level cache anyway, and streaming it saves reading its lines
# before writing them.  Below, the output is left in the cache for whatever reads it next.  Three
# quarters of the last-level cache, glibc's threshold for non-temporal memcpy (bench/NOTES.md, "Streamed
# stores").
cdef Py_ssize_t stream_bytes = 3 * last_level_cache_bytes() // 4


# Streamed stores that land a little ahead of the loads that follow them, modulo 4 KiB, stall those loads: the
# CPU matches a load against the pending stores by the low 12 bits of the address, and a non-temporal store
# stays pending for long.  Two heap blocks can sit so (bench/NOTES.md, "4 KiB aliasing").  Such a sweep uses
# ordinary stores, which leave the store queue at once.  (Staging each block in cache and streaming it out
# helped within a run but not across runs: the end of one run's output still lands just ahead of the start of
# the next run's input.)
cdef size_t alias_window = 256


def set_alias_window(size_t nbytes):
    """Sweeps whose output lands less than ``nbytes`` ahead of an input modulo 4 KiB do not stream
    (0: any may; 4096: only level ones).  For measurements and tests; returns the previous value."""
    global alias_window
    previous = alias_window
    alias_window = nbytes
    return previous


cdef inline bint _lands_ahead(const void* y, const void* p) noexcept nogil:
    """Whether stores to ``y`` land just ahead of loads from ``p`` modulo 4 KiB."""
    cdef size_t d = (<size_t>y - <size_t>p) & 4095
    return p != NULL and 0 < d < alias_window


# Short channels-first runs (BatchNorm1d on (N, C, L) with small L, BatchNorm2d on small maps) go by the
# columns of [N, C * S]: a kernel call per run of a few values costs more than the values themselves.
# The columns cost a little per column for their statistics, so training and backward take them for
# runs shorter than ``short_run`` when there are at least as many rows as values in a run (N >= S); the
# sweep alone (eval) for runs shorter than SHORT_SWEEP (bench/NOTES.md, "Short runs by columns").
cdef enum:
    SHORT_SWEEP = 16

cdef Py_ssize_t short_run = 64


def set_short_run(Py_ssize_t n):
    """Set the run length below which channels-first training and backward go by columns (for
    measurements); returns the previous one."""
    global short_run
    previous = short_run
    short_run = n
    return previous


def get_short_run():
    return short_run


def set_stream_bytes(Py_ssize_t nbytes):
    """Set the size from which outputs are streamed (for measurements); returns the previous one."""
    global stream_bytes
    previous = stream_bytes
    stream_bytes = nbytes
    return previous


cdef inline bint _streams(Py_ssize_t nbytes) noexcept nogil:
    """Whether a call touching ``nbytes`` in all streams its output."""
    return nbytes >= stream_bytes


cdef void _fence_streams(bint stream, int nthreads) noexcept nogil:
    """Make a kernel's streamed stores visible: they are weakly ordered, so every thread that made them fences
    once before the kernel returns.  Once per kernel, not per sweep: a fence per 4 KiB run (GroupNorm, a
    channel at a time) cost a large part of the call's time (bench/NOTES.md, "Streamed stores").  A static
    schedule of ``nthreads`` iterations gives one to each thread of the team that did the work."""
    cdef int t
    if not stream:
        return
    fastnorm_store_fence()
    if nthreads > 1:
        for t in prange(nthreads, schedule="static", chunksize=1, num_threads=nthreads):
            fastnorm_store_fence()


def parallel_copy(cnp.ndarray src, cnp.ndarray dst, int nthreads):
    """``dst[...] = src`` (C-contiguous, same size) by ``nthreads`` threads, each copying one slice: the
    bench's floor for a call that moves as many bytes.  It stores as the kernels store an output: with
    non-temporal stores when the copy touches (reads plus writes) as many bytes as make a kernel stream
    its output, with memcpy below."""
    cdef char* ps = <char*>cnp.PyArray_DATA(src)
    cdef char* pd = <char*>cnp.PyArray_DATA(dst)
    cdef Py_ssize_t n = cnp.PyArray_NBYTES(src), part, t
    if n != cnp.PyArray_NBYTES(dst) or not (cnp.PyArray_IS_C_CONTIGUOUS(src) and cnp.PyArray_IS_C_CONTIGUOUS(dst)):
        raise ValueError("parallel_copy: expected C-contiguous arrays of the same size")
    cdef bint stream = _streams(2 * n)
    nthreads = max(1, nthreads)
    part = ((n + nthreads - 1) // nthreads + 63) & ~63  # whole cache lines per thread
    with nogil:
        if nthreads == 1:
            _copy(pd, ps, n, stream)
        else:
            for t in prange(nthreads, schedule="static", chunksize=1, num_threads=nthreads):
                if t * part < n:
                    _copy(pd + t * part, ps + t * part, min(part, n - t * part), stream)


cdef void _copy(char* dst, const char* src, Py_ssize_t n, bint stream) noexcept nogil:
    if stream:
        fastnorm_copy_stream(dst, src, n)
        fastnorm_store_fence()  # once per thread that streamed, as the kernels do
    else:
        memcpy(dst, src, n)
