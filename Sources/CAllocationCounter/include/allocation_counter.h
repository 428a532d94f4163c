#pragma once
#include <stddef.h>

/// Test support: counts heap allocations (malloc, calloc, realloc, posix_memalign,
/// aligned_alloc, memalign) made by any thread between bac_start and bac_stop, by
/// interposing the allocator in the process that links this target (Linux/glibc only).
/// 1 when counting works on this platform.
int bac_available(void);
void bac_start(void);
/// Allocations since bac_start; stops counting.
long bac_stop(void);
