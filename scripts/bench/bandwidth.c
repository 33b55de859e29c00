/* Memory read bandwidth: T threads (OpenMP) each sum their contiguous part of a
 * buffer much larger than the last-level cache, best of R passes.
 * Build: cc -O3 -march=native -fopenmp bandwidth.c -o bandwidth
 * Usage: bandwidth [MiB=2048] [passes=10] [threads=omp default]
 * Prints one line: "<GB/s> GB/s read (<MiB> MiB, <T> threads, best of <R>)", GB = 1e9 bytes. */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 2048;
    int passes = argc > 2 ? atoi(argv[2]) : 10;
    if (argc > 3) omp_set_num_threads(atoi(argv[3]));
    size_t n = mib * 1024 * 1024 / sizeof(uint64_t);
    uint64_t *buf = aligned_alloc(64, n * sizeof(uint64_t));
    if (!buf || passes < 1) {
        fprintf(stderr, "bandwidth: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    int threads = 1;
#pragma omp parallel
    {
#pragma omp single
        threads = omp_get_num_threads();
        /* first touch by the thread that reads the part later */
#pragma omp for schedule(static)
        for (size_t i = 0; i < n; i++) buf[i] = i;
    }
    double best = 1e30;
    uint64_t check = 0;
    for (int p = 0; p < passes; p++) {
        uint64_t sum = 0;
        double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static) reduction(+ : sum)
        for (size_t i = 0; i < n; i++) sum += buf[i];
        double dt = omp_get_wtime() - t0;
        if (dt < best) best = dt;
        check += sum;
    }
    printf("%.2f GB/s read (%zu MiB, %d threads, best of %d)\n", n * sizeof(uint64_t) / best / 1e9, mib,
           threads, passes);
    free(buf);
    return check == 42 ? 2 : 0; /* keeps the sums live */
}
