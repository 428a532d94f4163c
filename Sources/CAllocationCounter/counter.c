#include "allocation_counter.h"
#include <stdatomic.h>

#if defined(__linux__) && defined(__GLIBC__)
// glibc's own entry points, which the definitions below forward to. Defining malloc & co.
// in the executable interposes them for every library in the process (the Swift runtime
// included), so the count covers every allocation, on every thread.
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static atomic_long allocations;
static atomic_int counting;

static inline void count_one(void) {
    if (atomic_load_explicit(&counting, memory_order_relaxed)) atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
}

void *malloc(size_t n) { count_one(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { count_one(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { count_one(); return __libc_realloc(p, n); }
void *memalign(size_t alignment, size_t n) { count_one(); return __libc_memalign(alignment, n); }
void *aligned_alloc(size_t alignment, size_t n) { count_one(); return __libc_memalign(alignment, n); }
int posix_memalign(void **out, size_t alignment, size_t n) {
    count_one();
    void *p = __libc_memalign(alignment, n);
    if (!p) return 12;   // ENOMEM
    *out = p;
    return 0;
}

int bac_available(void) { return 1; }
void bac_start(void) { atomic_store(&allocations, 0); atomic_store(&counting, 1); }
long bac_stop(void) { atomic_store(&counting, 0); return atomic_load(&allocations); }
#else
int bac_available(void) { return 0; }
void bac_start(void) {}
long bac_stop(void) { return -1; }
#endif
