/* The C test programs' check: counts passes and failures, and names each failure with its
 * condition and a printf-style message. Each program is one translation unit, so the counters
 * live here. */
#ifndef MAZE_TEST_CHECK_H
#define MAZE_TEST_CHECK_H

#include <stdio.h>

static int passed, failed;

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

#endif
