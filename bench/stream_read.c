/* STREAM-style read bandwidth in C: the yardstick for numatp's Numba read kernel.
 *
 * Sums a buffer of uint64 words (integers, so the compiler may vectorize the reduction
 * without -ffast-math) with OpenMP, one contiguous chunk per thread, first-touched by the
 * thread that later reads it. Counts bytes like STREAM: one array read. The buffer asks
 * for transparent huge pages, as numatp's node-local buffers do, so that both sides pay
 * the same TLB costs.
 *
 * usage: stream_read [size_mb=1024] [repeats=10]   (threads: OMP_NUM_THREADS)
 * prints one JSON line: {"read_gbps": best, "median_gbps": ..., "threads": ..., "bytes": ...}
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t read_pass(const uint64_t *restrict w, size_t n) {
    uint64_t sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (size_t i = 0; i < n; i++)
        sum += w[i];
    return sum;
}

int main(int argc, char **argv) {
    size_t size_mb = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
    int repeats = argc > 2 ? atoi(argv[2]) : 10;
    if (size_mb == 0 || repeats < 1) {
        fprintf(stderr, "usage: %s [size_mb>0] [repeats>0]\n", argv[0]);
        return 2;
    }
    size_t n = size_mb * (size_t)(1 << 20) / sizeof(uint64_t);
    size_t nbytes = n * sizeof(uint64_t);
    uint64_t *w = mmap(NULL, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (w == MAP_FAILED) {
        fprintf(stderr, "cannot allocate %zu MB\n", size_mb);
        return 1;
    }
    madvise(w, nbytes, MADV_HUGEPAGE); /* a hint: ignored where THP is off */
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        w[i] = i;

    uint64_t check = read_pass(w, n); /* untimed: thread start, TLB warm-up */
    double *rates = malloc(repeats * sizeof(double));
    for (int r = 0; r < repeats; r++) {
        double t0 = omp_get_wtime();
        check += read_pass(w, n);
        rates[r] = nbytes / (omp_get_wtime() - t0) / 1e9;
    }
    qsort(rates, repeats, sizeof(double), cmp_double);
    /* The checksum is printed so the reads cannot be optimised away. */
    printf("{\"read_gbps\": %.3f, \"median_gbps\": %.3f, \"threads\": %d, \"bytes\": %zu, "
           "\"checksum\": %llu}\n",
           rates[repeats - 1], rates[repeats / 2], omp_get_max_threads(), nbytes,
           (unsigned long long)check);
    free(rates);
    munmap(w, nbytes);
    return 0;
}
