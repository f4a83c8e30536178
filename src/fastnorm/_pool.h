/* The threads of fastnorm's kernels.
 *
 * The kernels' parallel loops are OpenMP (Cython's prange).  Built with gcc (FASTNORM_OWN_RUNTIME, set by
 * setup.py), they run on the pool below instead of GNU libgomp: it implements the part of libgomp's
 * documented ABI that gcc emits for them (GOMP_parallel, GOMP_barrier, omp_get_thread_num,
 * omp_get_num_threads, omp_get_max_threads), as hidden symbols of this extension, so nothing else in the
 * process runs on it.  Why not libgomp:
 *  - fork: libgomp's pool does not survive fork(); a child's first parallel region waits forever for the
 *    parent's workers.  This pool starts afresh in a child (pthread_atfork).
 *  - neighbours: libgomp's idle workers spin for up to milliseconds (GOMP_SPINCOUNT), and the BLAS
 *    threads of the matmul that runs next lose their cores to them.  These spin FASTNORM_SPIN_NS (100 us),
 *    enough to keep back-to-back calls fast, then sleep.
 *  - a late worker never holds a region up: a region's static blocks are claimed one at a time, and the
 *    caller runs those that no worker took in time (a block is the same whoever runs it, and so are the
 *    bits: the kernels' results never depend on how their loops are split).
 *  - a worker does not stay on the caller's CPU: when the other CPUs look busy (another library's threads
 *    spin on them after its own calls), Linux wakes a worker on the caller's, where the two only take
 *    turns; a worker that finds itself there as a region starts moves to another CPU it may use
 *    (bench/NOTES.md, "Pool placement").
 * Other compilers (clang, MSVC) run the loops on their own OpenMP runtime (LLVM's and Intel's survive
 * fork).  Either way the thread count is kept here: fastnorm_set_num_threads is what set_num_threads and
 * threadpoolctl call.
 */
#ifndef FASTNORM_POOL_H
#define FASTNORM_POOL_H

#include "_simd.h" /* fastnorm_store_fence */

#if defined(_WIN32)
#define FASTNORM_EXPORT __declspec(dllexport)
#else
#define FASTNORM_EXPORT __attribute__((visibility("default")))
#endif

/* The process's thread count, at most the cap (the CPUs the process may use, set from Python).  Each is
 * read and written whole: a call racing with a change sees the old count or the new one. */
static volatile int fastnorm_thread_count = 1;
static volatile int fastnorm_thread_cap = 1;

FASTNORM_EXPORT int fastnorm_get_num_threads(void)
{
    return fastnorm_thread_count;
}

FASTNORM_EXPORT void fastnorm_set_num_threads(int n)
{
    int cap = fastnorm_thread_cap;
    fastnorm_thread_count = n < 1 ? 1 : (n > cap ? cap : n);
}

static void fastnorm_set_thread_cap(int n)
{
    fastnorm_thread_cap = n < 1 ? 1 : n;
}

#ifndef FASTNORM_OWN_RUNTIME
static int fastnorm_own_runtime(void)
{
    return 0;
}
static void fastnorm_pool_init(void)
{
}
static void fastnorm_set_spin_ns(long ns)
{
    (void)ns;
}
#else
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long an idle worker waits for the next region before it sleeps.  Back-to-back calls come within
 * tens of microseconds of each other; a matmul between them takes milliseconds (bench/NOTES.md, "Pool
 * spin"). */
#define FASTNORM_SPIN_NS 100000
#define FASTNORM_MAX_WORKERS 1023
/* A region of n threads is cut into n * FASTNORM_BLOCKS_PER_THREAD thread numbers (static blocks), claimed
 * one at a time: when a thread loses its core to another process, the others take its share of the
 * blocks, and the region waits only for the block it is in. */
#define FASTNORM_BLOCKS_PER_THREAD 4

enum { FASTNORM_IDLE, FASTNORM_ASSIGNED, FASTNORM_RUNNING, FASTNORM_DONE };

typedef struct {
    atomic_int state; /* IDLE -> ASSIGNED (the caller) -> RUNNING (the worker) -> DONE -> IDLE */
    atomic_int sleeping;
    pthread_cond_t wake;
    pthread_t thread;
} fastnorm_worker;

static struct {
    pthread_mutex_t busy; /* held by the caller of the region the workers run */
    pthread_mutex_t sleep_lock;
    unsigned started; /* workers running (guarded by busy) */
    atomic_long spin_ns;
    void (*fn)(void *); /* the region: fn(data) once per thread number below team */
    void *data;
    unsigned team;
    atomic_uint next; /* the next thread number to claim */
    int caller_cpu;   /* where the caller of the region runs (-1: unknown) */
    fastnorm_worker *workers[FASTNORM_MAX_WORKERS];
} fastnorm_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, 0, FASTNORM_SPIN_NS};

static __thread unsigned fastnorm_thread_num = 0, fastnorm_team_size = 1;

static int fastnorm_own_runtime(void)
{
    return 1;
}
static void fastnorm_set_spin_ns(long ns)
{
    atomic_store(&fastnorm_pool.spin_ns, ns < 0 ? 0 : ns);
}

static inline void fastnorm_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline long long fastnorm_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Run the thread numbers of the current region that nobody has claimed yet. */
static void fastnorm_run_claimed(void (*fn)(void *), void *data, unsigned team)
{
    unsigned id;
    while ((id = atomic_fetch_add(&fastnorm_pool.next, 1)) < team) {
        fastnorm_thread_num = id;
        fastnorm_team_size = team;
        fn(data);
    }
    fastnorm_thread_num = 0;
    fastnorm_team_size = 1;
}

static int fastnorm_spin_until_assigned(fastnorm_worker *w)
{
    long long deadline = fastnorm_now_ns() + atomic_load_explicit(&fastnorm_pool.spin_ns, memory_order_relaxed);
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (atomic_load_explicit(&w->state, memory_order_relaxed) == FASTNORM_ASSIGNED)
                return 1;
            fastnorm_relax();
        }
        if (fastnorm_now_ns() >= deadline)
            return 0;
    }
}

/* Move the calling worker off ``cpu`` when it runs there: allowed every CPU of its mask but that one,
 * then the whole mask again (the scheduler leaves it on the CPU it moved to until it has a reason). */
static void fastnorm_leave_cpu(int cpu)
{
#if defined(__linux__) && defined(CPU_SET)
    cpu_set_t allowed, others;
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getcpu() != cpu || sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return;
    others = allowed;
    CPU_CLR(cpu, &others);
    if (CPU_COUNT(&others) > 0 && sched_setaffinity(0, sizeof others, &others) == 0)
        sched_setaffinity(0, sizeof allowed, &allowed);
#else
    (void)cpu;
#endif
}

static int fastnorm_current_cpu(void)
{
#if defined(__linux__) && defined(CPU_SET)
    return sched_getcpu();
#else
    return -1;
#endif
}

static void *fastnorm_worker_main(void *arg)
{
    fastnorm_worker *w = (fastnorm_worker *)arg;
    for (;;) {
        if (!fastnorm_spin_until_assigned(w)) {
            /* seq_cst on both sides (sleeping here, state in the caller): one of the two sees the other */
            pthread_mutex_lock(&fastnorm_pool.sleep_lock);
            atomic_store(&w->sleeping, 1);
            while (atomic_load(&w->state) != FASTNORM_ASSIGNED)
                pthread_cond_wait(&w->wake, &fastnorm_pool.sleep_lock);
            atomic_store(&w->sleeping, 0);
            pthread_mutex_unlock(&fastnorm_pool.sleep_lock);
        }
        int expected = FASTNORM_ASSIGNED;
        if (atomic_compare_exchange_strong(&w->state, &expected, FASTNORM_RUNNING)) {
            fastnorm_leave_cpu(fastnorm_pool.caller_cpu);
            fastnorm_run_claimed(fastnorm_pool.fn, fastnorm_pool.data, fastnorm_pool.team);
            fastnorm_store_fence(); /* its streamed stores, before the caller goes on */
            atomic_store_explicit(&w->state, FASTNORM_DONE, memory_order_release);
        }
    }
    return NULL;
}

/* Start workers until ``want`` run (busy held); returns how many do (fewer if the system refuses). */
static unsigned fastnorm_start_workers(unsigned want)
{
    if (want > FASTNORM_MAX_WORKERS)
        want = FASTNORM_MAX_WORKERS;
    while (fastnorm_pool.started < want) {
        fastnorm_worker *w = fastnorm_pool.workers[fastnorm_pool.started];
        if (w == NULL) {
            /* a cache line or more of its own: the caller writes a worker's state while others spin on theirs */
            w = (fastnorm_worker *)aligned_alloc(64, (sizeof(fastnorm_worker) + 63) / 64 * 64);
            if (w == NULL)
                break;
            memset(w, 0, sizeof(fastnorm_worker));
            if (pthread_cond_init(&w->wake, NULL) != 0) {
                free(w);
                break;
            }
            fastnorm_pool.workers[fastnorm_pool.started] = w;
        }
        /* Workers take no signals: they belong to the thread that runs Python's handlers. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int err = pthread_create(&w->thread, NULL, fastnorm_worker_main, w);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (err != 0)
            break;
#if defined(__linux__)
        pthread_setname_np(w->thread, "fastnorm"); /* what top -H and /proc/<pid>/task/<tid>/comm show */
#endif
        pthread_detach(w->thread);
        fastnorm_pool.started++;
    }
    return fastnorm_pool.started < want ? fastnorm_pool.started : want;
}

#pragma GCC visibility push(hidden)
int omp_get_thread_num(void)
{
    return (int)fastnorm_thread_num;
}
int omp_get_num_threads(void)
{
    return (int)fastnorm_team_size;
}
int omp_get_max_threads(void)
{
    return fastnorm_get_num_threads();
}

/* The barrier gcc emits in these regions follows the copy-in of a variable that is both firstprivate
 * and lastprivate (Cython's loop variables), whose first value the loop never reads.  Thread numbers may
 * run one after another on one thread, so it must not wait. */
void GOMP_barrier(void)
{
}

void GOMP_parallel(void (*fn)(void *), void *data, unsigned n, unsigned flags)
{
    (void)flags;
    if (n == 0)
        n = (unsigned)fastnorm_get_num_threads();
    if (n > 1 && pthread_mutex_trylock(&fastnorm_pool.busy) == 0) {
        unsigned k = fastnorm_start_workers(n - 1), j;
        int locked = 0;
        fastnorm_pool.fn = fn;
        fastnorm_pool.data = data;
        fastnorm_pool.team = n * FASTNORM_BLOCKS_PER_THREAD;
        fastnorm_pool.caller_cpu = fastnorm_current_cpu();
        atomic_store_explicit(&fastnorm_pool.next, 0, memory_order_relaxed);
        for (j = 0; j < k; j++)
            atomic_store(&fastnorm_pool.workers[j]->state, FASTNORM_ASSIGNED);
        for (j = 0; j < k; j++) {
            if (atomic_load(&fastnorm_pool.workers[j]->sleeping)) {
                if (!locked)
                    pthread_mutex_lock(&fastnorm_pool.sleep_lock);
                locked = 1;
                pthread_cond_signal(&fastnorm_pool.workers[j]->wake);
            }
        }
        if (locked)
            pthread_mutex_unlock(&fastnorm_pool.sleep_lock);
        fastnorm_run_claimed(fn, data, fastnorm_pool.team);
        /* A worker that has not started yet is told not to; one that has is waited for. */
        for (j = 0; j < k; j++) {
            fastnorm_worker *w = fastnorm_pool.workers[j];
            int expected = FASTNORM_ASSIGNED;
            if (!atomic_compare_exchange_strong(&w->state, &expected, FASTNORM_IDLE)) {
                for (unsigned spins = 0; atomic_load_explicit(&w->state, memory_order_acquire) != FASTNORM_DONE;
                     spins++) {
                    if (spins & 1023)
                        fastnorm_relax();
                    else
                        sched_yield(); /* the worker lost its core: let it have this one */
                }
                atomic_store(&w->state, FASTNORM_IDLE);
            }
        }
        pthread_mutex_unlock(&fastnorm_pool.busy);
        return;
    }
    /* One thread, or the pool is busy with another Python thread's region: the whole loop here. */
    fn(data);
}
#pragma GCC visibility pop

/* A child of fork() has none of the parent's workers: it starts its own at its first region.  The
 * parent forks between regions (prepare waits for the one running). */
static void fastnorm_before_fork(void)
{
    pthread_mutex_lock(&fastnorm_pool.busy);
    pthread_mutex_lock(&fastnorm_pool.sleep_lock);
}

static void fastnorm_after_fork_parent(void)
{
    pthread_mutex_unlock(&fastnorm_pool.sleep_lock);
    pthread_mutex_unlock(&fastnorm_pool.busy);
}

static void fastnorm_after_fork_child(void)
{
    pthread_mutex_init(&fastnorm_pool.busy, NULL);
    pthread_mutex_init(&fastnorm_pool.sleep_lock, NULL);
    for (unsigned j = 0; j < fastnorm_pool.started; j++) {
        fastnorm_worker *w = fastnorm_pool.workers[j];
        atomic_store(&w->state, FASTNORM_IDLE);
        atomic_store(&w->sleeping, 0);
        pthread_cond_init(&w->wake, NULL);
    }
    fastnorm_pool.started = 0;
}

static void fastnorm_pool_init(void)
{
    pthread_atfork(fastnorm_before_fork, fastnorm_after_fork_parent, fastnorm_after_fork_child);
}
#endif /* FASTNORM_OWN_RUNTIME */
#endif /* FASTNORM_POOL_H */
