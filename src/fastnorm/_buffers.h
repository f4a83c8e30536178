/* Memory for the large arrays the kernels return (outputs and gradients), through NumPy's memory-handler
 * interface (NEP 49).
 *
 * A fresh multi-megabyte buffer from malloc is fresh pages from the kernel: the first write to each 4 KiB
 * page faults and the kernel zeroes it, which costs about as much as the normalization itself
 * (bench/NOTES.md, "Output cache").  Whether glibc hands back mapped or fresh pages depends on what the process did
 * before, so a training loop ran at one speed or the other by chance.  Freed buffers of at least
 * FASTNORM_CACHE_MIN bytes are kept here instead, up to a limit, and the next array of about that size
 * reuses one: a loop that allocates the same shapes every step writes to mapped pages.
 *
 * By default the limit follows the process: the cache keeps at most as many bytes as its cached-size
 * results took at their peak (all alive at once), and at most FASTNORM_CACHE_AUTO_MAX.  A training loop
 * keeps what its next step reuses; a worker that never holds large results holds nothing.  A fixed
 * limit replaces that rule (fastnorm_cache_set_limit).  An allocation that fails while the cache holds
 * blocks frees them all and tries again, so idle memory never makes an allocation of fastnorm fail.
 *
 * Every block starts with a header of FASTNORM_HEADER bytes that records its capacity: NumPy passes free
 * the size of the array, which is less than the block's when a block was reused for a smaller array, and
 * the cache counts what it really holds.  The handler is set only around fastnorm's own np.empty calls;
 * the arrays remember it and return their memory here.  The lock matters only without a GIL: NumPy
 * allocates and frees array data with it held. */
#ifndef FASTNORM_BUFFERS_H
#define FASTNORM_BUFFERS_H

#include <Python.h>
#include <pythread.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <numpy/ndarraytypes.h>
#ifdef __linux__
#include <sys/mman.h>
#endif
#ifdef _WIN32
#include <malloc.h>
#endif

#define FASTNORM_CACHE_MIN ((size_t)1 << 20)
#define FASTNORM_CACHE_SLOTS 32
#define FASTNORM_HUGE_MIN ((size_t)4 << 20) /* NumPy's own threshold for asking for huge pages */
#define FASTNORM_HEADER 64                  /* keeps the data on a cache line boundary */

/* Whether blocks of FASTNORM_HUGE_MIN bytes or more ask for transparent huge pages, as NumPy's own
 * allocator does unless told not to (set from NumPy's setting at import). */
static int fastnorm_madvise_huge = 1;

typedef struct {
    void *ptr;
    size_t size;
} fastnorm_block;

#define FASTNORM_CACHE_AUTO SIZE_MAX                /* the limit follows the peak of live results */
#define FASTNORM_CACHE_AUTO_MAX ((size_t)256 << 20) /* and is at most this */

static fastnorm_block fastnorm_cache[FASTNORM_CACHE_SLOTS]; /* oldest first */
static int fastnorm_cache_count = 0;
static size_t fastnorm_cache_bytes = 0;
static size_t fastnorm_cache_setting = FASTNORM_CACHE_AUTO; /* bytes, or FASTNORM_CACHE_AUTO */
static size_t fastnorm_live_bytes = 0;                      /* blocks of FASTNORM_CACHE_MIN or more held by arrays */
static size_t fastnorm_live_peak = 0;
static PyThread_type_lock fastnorm_cache_lock = NULL;

/* The most bytes the cache keeps now (lock held). */
static size_t fastnorm_cache_limit_now(void)
{
    if (fastnorm_cache_setting != FASTNORM_CACHE_AUTO)
        return fastnorm_cache_setting;
    return fastnorm_live_peak < FASTNORM_CACHE_AUTO_MAX ? fastnorm_live_peak : FASTNORM_CACHE_AUTO_MAX;
}

/* Takes block i out of the cache (lock held); returns it. */
static void *fastnorm_cache_take(int i)
{
    void *p = fastnorm_cache[i].ptr;
    fastnorm_cache_bytes -= fastnorm_cache[i].size;
    fastnorm_cache_count--;
    memmove(fastnorm_cache + i, fastnorm_cache + i + 1, (fastnorm_cache_count - i) * sizeof(fastnorm_block));
    return p;
}

static inline size_t *fastnorm_capacity(void *data)
{
    return (size_t *)((char *)data - FASTNORM_HEADER);
}

static void fastnorm_free_block(void *p)
{
#ifdef _WIN32
    _aligned_free((char *)p - FASTNORM_HEADER);
#else
    free((char *)p - FASTNORM_HEADER);
#endif
}

/* Drops the oldest blocks until `incoming` more bytes fit in the limit and a slot is free; returns how
 * many it moved to `out` (the caller frees them after releasing the lock). */
static int fastnorm_cache_trim(size_t incoming, void **out)
{
    int k = 0;
    size_t limit = fastnorm_cache_limit_now();
    while (fastnorm_cache_count > 0 &&
           (fastnorm_cache_count == FASTNORM_CACHE_SLOTS || fastnorm_cache_bytes + incoming > limit))
        out[k++] = fastnorm_cache_take(0);
    return k;
}

/* Frees every block the cache holds; returns whether there were any.  Called when an allocation fails:
 * the idle blocks may be what stands in its way (an address-space or overcommit limit). */
static int fastnorm_cache_release(void)
{
    void *dropped[FASTNORM_CACHE_SLOTS];
    int n = 0;
    PyThread_acquire_lock(fastnorm_cache_lock, WAIT_LOCK);
    while (fastnorm_cache_count > 0)
        dropped[n++] = fastnorm_cache_take(0);
    PyThread_release_lock(fastnorm_cache_lock);
    for (int k = 0; k < n; k++)
        fastnorm_free_block(dropped[k]);
    return n > 0;
}

/* malloc for the kernels' scratch: if it fails while the cache holds blocks, once more without them. */
static void *fastnorm_malloc(size_t size)
{
    void *p = malloc(size);
    if (!p && fastnorm_cache_release())
        p = malloc(size);
    return p;
}

/* Counts a block of `size` bytes handed to (+1) or returned by (-1) an array (lock held). */
static void fastnorm_count_live(size_t size, int sign)
{
    if (size < FASTNORM_CACHE_MIN)
        return;
    if (sign > 0) {
        fastnorm_live_bytes += size;
        if (fastnorm_live_bytes > fastnorm_live_peak)
            fastnorm_live_peak = fastnorm_live_bytes;
    } else {
        fastnorm_live_bytes -= size;
    }
}

static void *fastnorm_aligned_malloc(size_t size)
{
#ifdef _WIN32
    return _aligned_malloc(size, FASTNORM_HEADER);
#else
    void *raw = NULL;
    return posix_memalign(&raw, FASTNORM_HEADER, size) ? NULL : raw;
#endif
}

/* A new block of `size` usable bytes (its data pointer), not from the cache. */
static void *fastnorm_new_block(size_t size)
{
    void *raw;
    if (size > SIZE_MAX - FASTNORM_HEADER)
        return NULL;
    raw = fastnorm_aligned_malloc(size + FASTNORM_HEADER);
    if (!raw && fastnorm_cache_release())
        raw = fastnorm_aligned_malloc(size + FASTNORM_HEADER);
    if (!raw)
        return NULL;
    void *p = (char *)raw + FASTNORM_HEADER;
    *fastnorm_capacity(p) = size;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (fastnorm_madvise_huge && size >= FASTNORM_HUGE_MIN) {
        uintptr_t start = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
        madvise((void *)start, size - (start - (uintptr_t)p), MADV_HUGEPAGE);
    }
#endif
    return p;
}

static void *fastnorm_buffer_malloc(void *ctx, size_t size)
{
    (void)ctx;
    void *p = NULL;
    if (size < FASTNORM_CACHE_MIN)
        return fastnorm_new_block(size);
    PyThread_acquire_lock(fastnorm_cache_lock, WAIT_LOCK);
    /* the smallest block that holds `size` and wastes at most an eighth of it */
    int best = -1;
    for (int i = 0; i < fastnorm_cache_count; i++) {
        size_t s = fastnorm_cache[i].size;
        if (s >= size && s - size <= size / 8 && (best < 0 || s < fastnorm_cache[best].size))
            best = i;
    }
    if (best >= 0)
        p = fastnorm_cache_take(best);
    PyThread_release_lock(fastnorm_cache_lock);
    if (!p && !(p = fastnorm_new_block(size)))
        return NULL;
    PyThread_acquire_lock(fastnorm_cache_lock, WAIT_LOCK);
    fastnorm_count_live(*fastnorm_capacity(p), +1);
    PyThread_release_lock(fastnorm_cache_lock);
    return p;
}

static void *fastnorm_buffer_calloc(void *ctx, size_t nelem, size_t elsize)
{
    if (elsize && nelem > SIZE_MAX / elsize)
        return NULL;
    void *p = fastnorm_buffer_malloc(ctx, nelem * elsize);
    if (p)
        memset(p, 0, nelem * elsize);
    return p;
}

/* A new block with the old one's data (realloc would not keep the header's alignment). */
static void *fastnorm_buffer_realloc(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    void *p = fastnorm_new_block(size);
    if (!p)
        return NULL;
    size_t old = ptr ? *fastnorm_capacity(ptr) : 0;
    if (ptr) {
        memcpy(p, ptr, old < size ? old : size);
        fastnorm_free_block(ptr);
    }
    PyThread_acquire_lock(fastnorm_cache_lock, WAIT_LOCK);
    fastnorm_count_live(old, -1);
    fastnorm_count_live(size, +1);
    PyThread_release_lock(fastnorm_cache_lock);
    return p;
}

static void fastnorm_buffer_free(void *ctx, void *ptr, size_t size_of_array)
{
    (void)ctx;
    (void)size_of_array;
    void *dropped[FASTNORM_CACHE_SLOTS];
    int n = 0;
    if (!ptr)
        return;
    size_t size = *fastnorm_capacity(ptr);
    if (size < FASTNORM_CACHE_MIN) {
        fastnorm_free_block(ptr);
        return;
    }
    PyThread_acquire_lock(fastnorm_cache_lock, WAIT_LOCK);
    fastnorm_count_live(size, -1);
    if (size <= fastnorm_cache_limit_now()) {
        n = fastnorm_cache_trim(size, dropped);
        fastnorm_cache[fastnorm_cache_count].ptr = ptr;
        fastnorm_cache[fastnorm_cache_count].size = size;
        fastnorm_cache_count++;
        fastnorm_cache_bytes += size;
        ptr = NULL;
    }
    PyThread_release_lock(fastnorm_cache_lock);
    for (int k = 0; k < n; k++)
        fastnorm_free_block(dropped[k]);
    if (ptr)
        fastnorm_free_block(ptr);
}

/* Sets the most bytes the cache keeps (0: none, and it frees what it holds; FASTNORM_CACHE_AUTO: the
 * peak of live results from now on, at most FASTNORM_CACHE_AUTO_MAX); returns the old setting. */
static size_t fastnorm_cache_set_limit(size_t limit)
{
    void *dropped[FASTNORM_CACHE_SLOTS];
    PyThread_acquire_lock(fastnorm_cache_lock, WAIT_LOCK);
    size_t previous = fastnorm_cache_setting;
    fastnorm_cache_setting = limit;
    if (limit == FASTNORM_CACHE_AUTO)
        fastnorm_live_peak = fastnorm_live_bytes;
    int n = fastnorm_cache_trim(0, dropped);
    PyThread_release_lock(fastnorm_cache_lock);
    for (int k = 0; k < n; k++)
        fastnorm_free_block(dropped[k]);
    return previous;
}

static size_t fastnorm_cache_held(void)
{
    PyThread_acquire_lock(fastnorm_cache_lock, WAIT_LOCK);
    size_t held = fastnorm_cache_bytes;
    PyThread_release_lock(fastnorm_cache_lock);
    return held;
}

static size_t fastnorm_cache_limit(void)
{
    PyThread_acquire_lock(fastnorm_cache_lock, WAIT_LOCK);
    size_t limit = fastnorm_cache_limit_now();
    PyThread_release_lock(fastnorm_cache_lock);
    return limit;
}

static PyDataMem_Handler fastnorm_buffer_handler = {
    "fastnorm_output_cache",
    1,
    {NULL, fastnorm_buffer_malloc, fastnorm_buffer_calloc, fastnorm_buffer_realloc, fastnorm_buffer_free},
};

/* The handler as the capsule NumPy expects, or NULL with an exception set. */
static PyObject *fastnorm_buffer_handler_capsule(void)
{
    if (!fastnorm_cache_lock && !(fastnorm_cache_lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return NULL;
    }
    return PyCapsule_New(&fastnorm_buffer_handler, "mem_handler", NULL);
}

/* NumPy's own allocator, wrapped so that an allocation that fails while the cache holds blocks frees them
 * and tries once more: otherwise NumPy's np.empty would fail for memory that fastnorm keeps idle.  The
 * same functions with the same context, so arrays get what NumPy would have given them. */
static PyDataMemAllocator fastnorm_numpy_allocator;

static void *fastnorm_retrying_malloc(void *ctx, size_t size)
{
    (void)ctx;
    void *p = fastnorm_numpy_allocator.malloc(fastnorm_numpy_allocator.ctx, size);
    if (!p && fastnorm_cache_release())
        p = fastnorm_numpy_allocator.malloc(fastnorm_numpy_allocator.ctx, size);
    return p;
}

static void *fastnorm_retrying_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    void *p = fastnorm_numpy_allocator.calloc(fastnorm_numpy_allocator.ctx, nelem, elsize);
    if (!p && fastnorm_cache_release())
        p = fastnorm_numpy_allocator.calloc(fastnorm_numpy_allocator.ctx, nelem, elsize);
    return p;
}

static void *fastnorm_retrying_realloc(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    void *p = fastnorm_numpy_allocator.realloc(fastnorm_numpy_allocator.ctx, ptr, size);
    if (!p && fastnorm_cache_release())
        p = fastnorm_numpy_allocator.realloc(fastnorm_numpy_allocator.ctx, ptr, size);
    return p;
}

static void fastnorm_retrying_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    fastnorm_numpy_allocator.free(fastnorm_numpy_allocator.ctx, ptr, size);
}

static PyDataMem_Handler fastnorm_retrying_handler = {
    "fastnorm_retrying_default_allocator",
    1,
    {NULL, fastnorm_retrying_malloc, fastnorm_retrying_calloc, fastnorm_retrying_realloc, fastnorm_retrying_free},
};

/* A handler that wraps `numpy_handler` (a capsule of NumPy's default handler) as above, as a capsule;
 * NULL with an exception set if it cannot. */
static PyObject *fastnorm_retrying_handler_capsule(PyObject *numpy_handler)
{
    PyDataMem_Handler *h = (PyDataMem_Handler *)PyCapsule_GetPointer(numpy_handler, "mem_handler");
    if (!h)
        return NULL;
    fastnorm_numpy_allocator = h->allocator;
    return PyCapsule_New(&fastnorm_retrying_handler, "mem_handler", NULL);
}

#endif
