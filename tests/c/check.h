/* The C test programs' check: counts passes and failures, and names each failure with its
 * condition and a printf-style message. Each program is one translation unit, so the counters
 * live here; they are atomic, so threads may CHECK at once. */
#ifndef MAZE_TEST_CHECK_H
#define MAZE_TEST_CHECK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

static atomic_int passed, failed;

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (cond) {                                                                          \
            passed++;                                                                        \
        } else {                                                                             \
            failed++;                                                                        \
            fprintf(stderr, "FAIL %s:%d: %s", __FILE__, __LINE__, #cond);                    \
            fprintf(stderr, " -- " __VA_ARGS__);                                             \
            fprintf(stderr, "\n");                                                           \
        }                                                                                    \
    } while (0)

/* Whether s[0..n) is whole UTF-8 characters (none cut at either end). */
static inline bool utf8_whole(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (k == 0 || i + k > n) return false;
        for (size_t j = 1; j < k; j++)
            if (((unsigned char)s[i + j] >> 6) != 2) return false;
        i += k;
    }
    return true;
}

#endif
