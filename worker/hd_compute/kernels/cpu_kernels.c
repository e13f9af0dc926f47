/*
 * hd_compute.kernels._cpu -- compiled CPU kernels for packed binary hypervectors and int8 bundling.
 *
 * Layout: a binary hypervector of D bits is packed LSB-first into W = ceil(D/64) uint64 words
 * (bit i -> word i/64, bit i%64); padding bits of the last word are zero.
 *
 * Every function takes raw pointers (Python ints from tensor.data_ptr()) and sizes, releases the
 * GIL and splits the work over `threads` OpenMP threads (threads <= 1: inline on the calling thread).
 * The module links libgomp.so.1, the soname of the OpenMP runtime that torch's wheel bundles and has
 * already loaded, so the dynamic linker hands us torch's runtime and its thread pool: our parallel
 * regions run on the threads torch's own operations just used, instead of competing for the cores with
 * a second pool whose threads spin-wait after each region (docs/benchmarks.md).
 *
 * The file is compiled WITHOUT -march: the fast paths are functions carrying
 * __attribute__((target(...))) and are chosen once at import time with __builtin_cpu_supports.
 *   level 4 "avx512-vpopcntdq": AVX-512F/BW + VPOPCNTDQ (all kernels vectorised)
 *   level 3 "avx512bw+popcnt" : AVX-512F/BW without VPOPCNTDQ (hamming uses scalar POPCNT)
 *   level 2 "avx2+popcnt"     : AVX2 (auto-vectorised int8 sums), scalar POPCNT
 *   level 1 "popcnt"          : scalar POPCNT
 *   level 0 "generic"         : portable C (SWAR popcount)
 * _set_level(k) lowers the level (never above what the CPU supports) so tests can cover every path.
 *
 * One file on purpose, though long: it is the whole extension in one translation unit, so the static
 * helpers inline into every kernel, and each kernel's code paths, which must give identical results, sit
 * side by side. Sections: the parallel-for, the four kernels (hamming_matrix, bit_counts, int8_column_sum,
 * pack_sign_bits_int8), then the Python bindings.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#define HDC_X86 1
#include <immintrin.h>
#else
#define HDC_X86 0
#endif

#define HDC_INLINE static inline __attribute__((always_inline))
#define TGT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")))
#define TGT_AVX512BW __attribute__((target("avx512f,avx512bw,avx512vl,popcnt")))
#define TGT_AVX2 __attribute__((target("avx2,popcnt")))
#define TGT_POPCNT __attribute__((target("popcnt")))

enum { LVL_GENERIC = 0, LVL_POPCNT = 1, LVL_AVX2 = 2, LVL_AVX512BW = 3, LVL_AVX512VPOPCNT = 4 };
static const char *const LEVEL_NAMES[] = {"generic", "popcnt", "avx2+popcnt", "avx512bw+popcnt",
                                          "avx512-vpopcntdq"};
static int g_max_level = LVL_GENERIC; /* what the CPU supports */
static int g_level = LVL_GENERIC;     /* what is used */

static int detect_level(void) {
#if HDC_X86
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("popcnt")) return LVL_GENERIC;
    int lvl = LVL_POPCNT;
    if (__builtin_cpu_supports("avx2")) lvl = LVL_AVX2;
    if (lvl == LVL_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
        lvl = LVL_AVX512BW;
        if (__builtin_cpu_supports("avx512vpopcntdq")) lvl = LVL_AVX512VPOPCNT;
    }
    return lvl;
#else
    return LVL_GENERIC;
#endif
}

static inline size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* ------------------------------------------------------------------------------------------ */
/* tiny parallel-for over [0, total) in chunks aligned to `grain`                              */
/* ------------------------------------------------------------------------------------------ */
typedef void (*range_fn)(void *ctx, size_t begin, size_t end);

typedef struct {
    range_fn fn;
    void *ctx;
    size_t begin, end;
} task_t;

static void *task_main(void *arg) {
    task_t *t = (task_t *)arg;
    t->fn(t->ctx, t->begin, t->end);
    return NULL;
}

#define HDC_MAX_THREADS 256

static void parallel_for(range_fn fn, void *ctx, size_t total, size_t grain, size_t threads) {
    if (total == 0) return;
    if (grain == 0) grain = 1;
    size_t units = (total + grain - 1) / grain;
    if (threads > units) threads = units;
    if (threads > HDC_MAX_THREADS) threads = HDC_MAX_THREADS;
    if (threads <= 1) {
        fn(ctx, 0, total);
        return;
    }
    task_t tasks[HDC_MAX_THREADS];
    pthread_t tids[HDC_MAX_THREADS];
    int started[HDC_MAX_THREADS];
    size_t per = units / threads, extra = units % threads, u = 0;
    for (size_t t = 0; t < threads; t++) {
        size_t cnt = per + (t < extra ? 1 : 0);
        tasks[t].fn = fn;
        tasks[t].ctx = ctx;
        tasks[t].begin = min_sz(u * grain, total);
        tasks[t].end = min_sz((u + cnt) * grain, total);
        u += cnt;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads((int)threads) schedule(static, 1)
    for (long t = 0; t < (long)threads; t++)
        task_main(&tasks[t]);
    (void)started;
    (void)tids;
    return;
#endif
    /* threads 1..T-1 on new pthreads, chunk 0 on the calling thread */
    for (size_t t = 1; t < threads; t++)
        started[t] = pthread_create(&tids[t], NULL, task_main, &tasks[t]) == 0;
    task_main(&tasks[0]);
    for (size_t t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(tids[t], NULL);
        else
            task_main(&tasks[t]); /* could not start a thread: do its share here */
    }
}

/* number of threads worth using for `work` elementary operations: each thread gets at least
   `min_work_per_thread`, so small calls do not pay for starting threads they cannot keep busy */
static size_t threads_for(size_t threads, double work, double min_work_per_thread) {
    if (threads <= 1) return 1;
    double t = work / min_work_per_thread;
    if (t < 1.0) return 1;
    if (t < (double)threads) return (size_t)t;
    return threads;
}

/* ------------------------------------------------------------------------------------------ */
/* popcount helpers                                                                            */
/* ------------------------------------------------------------------------------------------ */
HDC_INLINE uint64_t popc_swar(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (x * 0x0101010101010101ULL) >> 56;
}

/* ------------------------------------------------------------------------------------------ */
/* hamming_matrix                                                                              */
/* ------------------------------------------------------------------------------------------ */
typedef struct {
    const uint64_t *a, *b;
    size_t n_a, n_b, w;
    int32_t *out;
    int split_rows; /* 1: ranges are over rows of a, 0: over rows of b */
} hm_ctx;

/* scalar register-blocked kernel, MA x MB (compile-time constants after inlining) */
HDC_INLINE void hm_scalar_kernel(const uint64_t *A, const uint64_t *B, size_t W, int32_t *out,
                                 size_t ldo, int MA, int MB, int hw) {
    uint64_t acc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    for (size_t k = 0; k < W; k++) {
        uint64_t av[2], bv[4];
        for (int i = 0; i < MA; i++) av[i] = A[i * W + k];
        for (int j = 0; j < MB; j++) bv[j] = B[j * W + k];
        for (int i = 0; i < MA; i++)
            for (int j = 0; j < MB; j++) {
                uint64_t x = av[i] ^ bv[j];
                acc[i][j] += hw ? (uint64_t)__builtin_popcountll(x) : popc_swar(x);
            }
    }
    for (int i = 0; i < MA; i++)
        for (int j = 0; j < MB; j++) out[i * ldo + j] = (int32_t)acc[i][j];
}

HDC_INLINE void hm_scalar_range(const hm_ctx *c, size_t a0, size_t a1, size_t b0, size_t b1, int hw) {
    const size_t W = c->w, ldo = c->n_b;
    size_t tile = (size_t)(512 * 1024) / (W * 8 + 1);
    tile &= ~(size_t)3;
    if (tile < 4) tile = 4;
    for (size_t bt = b0; bt < b1; bt += tile) {
        size_t be = min_sz(bt + tile, b1);
        size_t i = a0;
        for (; i + 2 <= a1; i += 2) {
            size_t j = bt;
            for (; j + 4 <= be; j += 4) hm_scalar_kernel(c->a + i * W, c->b + j * W, W, c->out + i * ldo + j, ldo, 2, 4, hw);
            for (; j < be; j++) hm_scalar_kernel(c->a + i * W, c->b + j * W, W, c->out + i * ldo + j, ldo, 2, 1, hw);
        }
        for (; i < a1; i++) {
            size_t j = bt;
            for (; j + 4 <= be; j += 4) hm_scalar_kernel(c->a + i * W, c->b + j * W, W, c->out + i * ldo + j, ldo, 1, 4, hw);
            for (; j < be; j++) hm_scalar_kernel(c->a + i * W, c->b + j * W, W, c->out + i * ldo + j, ldo, 1, 1, hw);
        }
    }
}

static void hm_range_generic(const hm_ctx *c, size_t a0, size_t a1, size_t b0, size_t b1) {
    hm_scalar_range(c, a0, a1, b0, b1, 0);
}

#if HDC_X86
TGT_POPCNT static void hm_range_popcnt(const hm_ctx *c, size_t a0, size_t a1, size_t b0, size_t b1) {
    hm_scalar_range(c, a0, a1, b0, b1, 1);
}

/* AVX-512 VPOPCNTDQ kernel: MA x MB accumulators of 8 x u64, masked loads for the tail words */
TGT_AVX512 HDC_INLINE void hm512_kernel(const uint64_t *A, const uint64_t *B, size_t W, int32_t *out,
                                        size_t ldo, int MA, int MB) {
    __m512i acc[4][4];
    /* the partial (masked) chunk goes first so the main loop's results feed the reduction directly */
    const size_t full = W & ~(size_t)7;
    {
        __mmask8 m = (__mmask8)((1u << (W - full)) - 1u);
        __m512i av[4], bv[4];
        for (int i = 0; i < MA; i++) av[i] = _mm512_maskz_loadu_epi64(m, (const void *)(A + i * W + full));
        for (int j = 0; j < MB; j++) bv[j] = _mm512_maskz_loadu_epi64(m, (const void *)(B + j * W + full));
        for (int i = 0; i < MA; i++)
            for (int j = 0; j < MB; j++) acc[i][j] = _mm512_popcnt_epi64(_mm512_xor_si512(av[i], bv[j]));
    }
    for (size_t k = 0; k < full; k += 8) {
        __m512i av[4], bv[4];
        for (int i = 0; i < MA; i++) av[i] = _mm512_loadu_si512((const void *)(A + i * W + k));
        for (int j = 0; j < MB; j++) bv[j] = _mm512_loadu_si512((const void *)(B + j * W + k));
        for (int i = 0; i < MA; i++)
            for (int j = 0; j < MB; j++)
                acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(av[i], bv[j])));
    }
    if (MB == 4) {
        /* transpose-reduce 4 accumulators of a row into one 4-lane vector */
        for (int i = 0; i < MA; i++) {
            /* fold 512 -> 256 bits for each accumulator */
            __m256i r0 = _mm256_add_epi64(_mm512_castsi512_si256(acc[i][0]), _mm512_extracti64x4_epi64(acc[i][0], 1));
            __m256i r1 = _mm256_add_epi64(_mm512_castsi512_si256(acc[i][1]), _mm512_extracti64x4_epi64(acc[i][1], 1));
            __m256i r2 = _mm256_add_epi64(_mm512_castsi512_si256(acc[i][2]), _mm512_extracti64x4_epi64(acc[i][2], 1));
            __m256i r3 = _mm256_add_epi64(_mm512_castsi512_si256(acc[i][3]), _mm512_extracti64x4_epi64(acc[i][3], 1));
            /* pairwise: [r0.0+r0.1, r1.0+r1.1, r0.2+r0.3, r1.2+r1.3] */
            __m256i s01 = _mm256_add_epi64(_mm256_unpacklo_epi64(r0, r1), _mm256_unpackhi_epi64(r0, r1));
            __m256i s23 = _mm256_add_epi64(_mm256_unpacklo_epi64(r2, r3), _mm256_unpackhi_epi64(r2, r3));
            /* s01 = [a0 b0 | a1 b1], s23 = [c0 d0 | c1 d1] -> [a b c d] */
            __m256i lo = _mm256_permute2x128_si256(s01, s23, 0x20);
            __m256i hi = _mm256_permute2x128_si256(s01, s23, 0x31);
            __m256i s = _mm256_add_epi64(lo, hi);
            _mm_storeu_si128((__m128i *)(out + i * ldo), _mm256_cvtepi64_epi32(s));
        }
    } else {
        for (int i = 0; i < MA; i++)
            for (int j = 0; j < MB; j++) out[i * ldo + j] = (int32_t)_mm512_reduce_add_epi64(acc[i][j]);
    }
}

TGT_AVX512 static void hm_range_avx512(const hm_ctx *c, size_t a0, size_t a1, size_t b0, size_t b1) {
    const size_t W = c->w, ldo = c->n_b;
    const uint64_t *A = c->a, *B = c->b;
    int32_t *out = c->out;
    /* keep a tile of b rows (<= ~512 KB) hot in L2 while all rows of a stream past it */
    size_t tile = (size_t)(512 * 1024) / (W * 8 + 1);
    tile &= ~(size_t)3;
    if (tile < 4) tile = 4;
    for (size_t bt = b0; bt < b1; bt += tile) {
        size_t be = min_sz(bt + tile, b1);
        size_t i = a0;
        for (; i + 4 <= a1; i += 4) {
            size_t j = bt;
            for (; j + 4 <= be; j += 4) hm512_kernel(A + i * W, B + j * W, W, out + i * ldo + j, ldo, 4, 4);
            for (; j < be; j++) hm512_kernel(A + i * W, B + j * W, W, out + i * ldo + j, ldo, 4, 1);
        }
        for (; i < a1; i++) {
            size_t j = bt;
            for (; j + 4 <= be; j += 4) hm512_kernel(A + i * W, B + j * W, W, out + i * ldo + j, ldo, 1, 4);
            for (; j < be; j++) hm512_kernel(A + i * W, B + j * W, W, out + i * ldo + j, ldo, 1, 1);
        }
    }
}
#endif

static void hm_dispatch(const hm_ctx *c, size_t a0, size_t a1, size_t b0, size_t b1) {
#if HDC_X86
    if (g_level >= LVL_AVX512VPOPCNT) {
        hm_range_avx512(c, a0, a1, b0, b1);
        return;
    }
    if (g_level >= LVL_POPCNT) {
        hm_range_popcnt(c, a0, a1, b0, b1);
        return;
    }
#endif
    hm_range_generic(c, a0, a1, b0, b1);
}

static void hm_task(void *ctx, size_t begin, size_t end) {
    const hm_ctx *c = (const hm_ctx *)ctx;
    if (c->split_rows)
        hm_dispatch(c, begin, end, 0, c->n_b);
    else
        hm_dispatch(c, 0, c->n_a, begin, end);
}

/* ------------------------------------------------------------------------------------------ */
/* bit_counts                                                                                  */
/* ------------------------------------------------------------------------------------------ */
typedef struct {
    const uint64_t *x;
    size_t n, w;
    int32_t *out; /* w*64, zeroed by the caller */
} bc_ctx;

/* byte b -> 8 byte lanes holding its bits (bit i -> byte lane i) */
static uint64_t BC_TABLE[256];

static void bc_init_table(void) {
    for (int b = 0; b < 256; b++) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
            if (b & (1 << i)) v |= (uint64_t)1 << (8 * i);
        BC_TABLE[b] = v;
    }
}

#define BC_GROUP 8 /* words per column group */

static void bc_range_generic(const bc_ctx *c, size_t w0, size_t w1) {
    const size_t W = c->w, n = c->n;
    uint64_t acc[BC_GROUP][8];
    for (size_t wg = w0; wg < w1; wg += BC_GROUP) {
        size_t g = min_sz(BC_GROUP, w1 - wg);
        for (size_t r0 = 0; r0 < n; r0 += 255) {
            size_t re = min_sz(r0 + 255, n);
            memset(acc, 0, sizeof(acc));
            const uint64_t *p = c->x + r0 * W + wg;
            for (size_t r = r0; r < re; r++, p += W) {
                for (size_t q = 0; q < g; q++) {
                    uint64_t v = p[q];
                    acc[q][0] += BC_TABLE[v & 255];
                    acc[q][1] += BC_TABLE[(v >> 8) & 255];
                    acc[q][2] += BC_TABLE[(v >> 16) & 255];
                    acc[q][3] += BC_TABLE[(v >> 24) & 255];
                    acc[q][4] += BC_TABLE[(v >> 32) & 255];
                    acc[q][5] += BC_TABLE[(v >> 40) & 255];
                    acc[q][6] += BC_TABLE[(v >> 48) & 255];
                    acc[q][7] += BC_TABLE[v >> 56];
                }
            }
            for (size_t q = 0; q < g; q++) {
                int32_t *o = c->out + (wg + q) * 64;
                for (int by = 0; by < 8; by++) {
                    uint64_t a = acc[q][by];
                    for (int i = 0; i < 8; i++) o[by * 8 + i] += (int32_t)((a >> (8 * i)) & 255);
                }
            }
        }
    }
}

#if HDC_X86
TGT_AVX512BW HDC_INLINE void bc512_group(const bc_ctx *c, size_t wg, int G) {
    const size_t W = c->w, n = c->n;
    const __m512i one = _mm512_set1_epi8(1);
    __m512i acc[BC_GROUP];
    for (size_t r0 = 0; r0 < n; r0 += 255) {
        size_t re = min_sz(r0 + 255, n);
        for (int q = 0; q < G; q++) acc[q] = _mm512_setzero_si512();
        const uint64_t *p = c->x + r0 * W + wg;
        for (size_t r = r0; r < re; r++, p += W)
            for (int q = 0; q < G; q++) acc[q] = _mm512_mask_add_epi8(acc[q], _cvtu64_mask64(p[q]), acc[q], one);
        for (int q = 0; q < G; q++) {
            int32_t *o = c->out + (wg + (size_t)q) * 64;
            for (int t = 0; t < 4; t++) {
                __m512i v = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(acc[q], t));
                __m512i cur = _mm512_loadu_si512((const void *)(o + 16 * t));
                _mm512_storeu_si512((void *)(o + 16 * t), _mm512_add_epi32(cur, v));
            }
        }
    }
}

TGT_AVX512BW static void bc_range_avx512(const bc_ctx *c, size_t w0, size_t w1) {
    size_t wg = w0;
    for (; wg + BC_GROUP <= w1; wg += BC_GROUP) bc512_group(c, wg, BC_GROUP);
    switch (w1 - wg) {
        case 7: bc512_group(c, wg, 7); break;
        case 6: bc512_group(c, wg, 6); break;
        case 5: bc512_group(c, wg, 5); break;
        case 4: bc512_group(c, wg, 4); break;
        case 3: bc512_group(c, wg, 3); break;
        case 2: bc512_group(c, wg, 2); break;
        case 1: bc512_group(c, wg, 1); break;
        default: break;
    }
}
#endif

static void bc_task(void *ctx, size_t begin, size_t end) {
    const bc_ctx *c = (const bc_ctx *)ctx;
#if HDC_X86
    if (g_level >= LVL_AVX512BW) {
        bc_range_avx512(c, begin, end);
        return;
    }
#endif
    bc_range_generic(c, begin, end);
}

/* ------------------------------------------------------------------------------------------ */
/* int8_column_sum                                                                             */
/* ------------------------------------------------------------------------------------------ */
typedef struct {
    const int8_t *x;
    size_t n, d;
    int32_t *out; /* d, zeroed by the caller */
} cs_ctx;

/* portable body; int16 accumulators flushed every 256 rows (|sum| <= 256*128 fits int16) */
HDC_INLINE void cs_body(const cs_ctx *c, size_t c0, size_t c1, int16_t *acc) {
    const size_t n = c->n, d = c->d, m = c1 - c0;
    const int8_t *X = c->x;
    for (size_t r0 = 0; r0 < n; r0 += 256) {
        size_t re = min_sz(r0 + 256, n), r = r0;
        memset(acc, 0, m * sizeof(int16_t));
        for (; r + 4 <= re; r += 4) {
            const int8_t *x0 = X + r * d + c0, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
            for (size_t k = 0; k < m; k++)
                acc[k] = (int16_t)(acc[k] + (int16_t)x0[k] + (int16_t)x1[k] + (int16_t)x2[k] + (int16_t)x3[k]);
        }
        for (; r < re; r++) {
            const int8_t *x0 = X + r * d + c0;
            for (size_t k = 0; k < m; k++) acc[k] = (int16_t)(acc[k] + (int16_t)x0[k]);
        }
        int32_t *o = c->out + c0;
        for (size_t k = 0; k < m; k++) o[k] += acc[k];
    }
}

static void cs_range_generic(const cs_ctx *c, size_t c0, size_t c1, int16_t *acc) { cs_body(c, c0, c1, acc); }

#if HDC_X86
TGT_AVX2 static void cs_range_avx2(const cs_ctx *c, size_t c0, size_t c1, int16_t *acc) { cs_body(c, c0, c1, acc); }

TGT_AVX512BW static void cs_range_avx512(const cs_ctx *c, size_t c0, size_t c1, int16_t *acc) {
    const size_t n = c->n, d = c->d, m = c1 - c0;
    const size_t full = m / 64, rem = m % 64;
    const __mmask64 tail = rem ? (((__mmask64)1 << rem) - 1) : 0;
    const int8_t *X = c->x + c0;
    /* acc holds 64 int16 per 64-column chunk (ceil(m/64) chunks) */
    const size_t chunks = full + (rem ? 1 : 0);
    for (size_t r0 = 0; r0 < n; r0 += 256) {
        size_t re = min_sz(r0 + 256, n), r = r0;
        memset(acc, 0, chunks * 64 * sizeof(int16_t));
        for (; r + 4 <= re; r += 4) {
            const int8_t *x0 = X + r * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
            for (size_t q = 0; q < chunks; q++) {
                __m512i v0, v1, v2, v3;
                if (q < full) {
                    v0 = _mm512_loadu_si512((const void *)(x0 + q * 64));
                    v1 = _mm512_loadu_si512((const void *)(x1 + q * 64));
                    v2 = _mm512_loadu_si512((const void *)(x2 + q * 64));
                    v3 = _mm512_loadu_si512((const void *)(x3 + q * 64));
                } else {
                    v0 = _mm512_maskz_loadu_epi8(tail, (const void *)(x0 + q * 64));
                    v1 = _mm512_maskz_loadu_epi8(tail, (const void *)(x1 + q * 64));
                    v2 = _mm512_maskz_loadu_epi8(tail, (const void *)(x2 + q * 64));
                    v3 = _mm512_maskz_loadu_epi8(tail, (const void *)(x3 + q * 64));
                }
                __m512i lo = _mm512_add_epi16(
                    _mm512_add_epi16(_mm512_cvtepi8_epi16(_mm512_castsi512_si256(v0)),
                                     _mm512_cvtepi8_epi16(_mm512_castsi512_si256(v1))),
                    _mm512_add_epi16(_mm512_cvtepi8_epi16(_mm512_castsi512_si256(v2)),
                                     _mm512_cvtepi8_epi16(_mm512_castsi512_si256(v3))));
                __m512i hi = _mm512_add_epi16(
                    _mm512_add_epi16(_mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(v0, 1)),
                                     _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(v1, 1))),
                    _mm512_add_epi16(_mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(v2, 1)),
                                     _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(v3, 1))));
                int16_t *a = acc + q * 64;
                _mm512_store_si512((void *)a, _mm512_add_epi16(_mm512_load_si512((const void *)a), lo));
                _mm512_store_si512((void *)(a + 32), _mm512_add_epi16(_mm512_load_si512((const void *)(a + 32)), hi));
            }
        }
        for (; r < re; r++) {
            const int8_t *x0 = X + r * d;
            for (size_t q = 0; q < chunks; q++) {
                __m512i v0 = q < full ? _mm512_loadu_si512((const void *)(x0 + q * 64))
                                      : _mm512_maskz_loadu_epi8(tail, (const void *)(x0 + q * 64));
                int16_t *a = acc + q * 64;
                _mm512_store_si512((void *)a, _mm512_add_epi16(_mm512_load_si512((const void *)a),
                                                               _mm512_cvtepi8_epi16(_mm512_castsi512_si256(v0))));
                _mm512_store_si512((void *)(a + 32),
                                   _mm512_add_epi16(_mm512_load_si512((const void *)(a + 32)),
                                                    _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(v0, 1))));
            }
        }
        int32_t *o = c->out + c0;
        for (size_t q = 0; q < full; q++) {
            const int16_t *a = acc + q * 64;
            for (int t = 0; t < 4; t++) {
                __m512i v = _mm512_cvtepi16_epi32(_mm256_load_si256((const __m256i *)(a + 16 * t)));
                __m512i cur = _mm512_loadu_si512((const void *)(o + q * 64 + 16 * t));
                _mm512_storeu_si512((void *)(o + q * 64 + 16 * t), _mm512_add_epi32(cur, v));
            }
        }
        for (size_t k = full * 64; k < m; k++) o[k] += acc[k];
    }
}
#endif

static void cs_task(void *ctx, size_t begin, size_t end) {
    const cs_ctx *c = (const cs_ctx *)ctx;
    size_t m = end - begin;
    size_t bytes = ((m + 63) / 64) * 64 * sizeof(int16_t);
    int16_t *acc = (int16_t *)aligned_alloc(64, bytes ? bytes : 64);
    if (!acc) { /* fall back to a small stack buffer, column block by column block */
        int16_t small[1024] __attribute__((aligned(64)));
        for (size_t b = begin; b < end; b += 1024) {
            size_t e = min_sz(b + 1024, end);
#if HDC_X86
            if (g_level >= LVL_AVX512BW) { cs_range_avx512(c, b, e, small); continue; }
            if (g_level >= LVL_AVX2) { cs_range_avx2(c, b, e, small); continue; }
#endif
            cs_range_generic(c, b, e, small);
        }
        return;
    }
#if HDC_X86
    if (g_level >= LVL_AVX512BW)
        cs_range_avx512(c, begin, end, acc);
    else if (g_level >= LVL_AVX2)
        cs_range_avx2(c, begin, end, acc);
    else
#endif
        cs_range_generic(c, begin, end, acc);
    free(acc);
}

/* ------------------------------------------------------------------------------------------ */
/* pack_sign_bits_int8                                                                         */
/* ------------------------------------------------------------------------------------------ */
typedef struct {
    const int8_t *x;
    size_t n, d, w;
    uint64_t *out;
} ps_ctx;

HDC_INLINE uint64_t sign_bits8(uint64_t v) {
    /* byte i's top bit -> bit i */
    return (((v >> 7) & 0x0101010101010101ULL) * 0x0102040810204080ULL) >> 56;
}

static void ps_range_generic(const ps_ctx *c, size_t r0, size_t r1) {
    const size_t d = c->d, W = c->w;
    for (size_t r = r0; r < r1; r++) {
        const int8_t *xr = c->x + r * d;
        uint64_t *o = c->out + r * W;
        for (size_t w = 0; w < W; w++) {
            size_t base = w * 64;
            uint64_t bits = 0;
            if (base + 64 <= d) {
                for (int b = 0; b < 8; b++) {
                    uint64_t v;
                    memcpy(&v, xr + base + 8 * b, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                    bits |= sign_bits8(v) << (8 * b);
#else
                    for (int i = 0; i < 8; i++)
                        if (xr[base + 8 * b + i] < 0) bits |= (uint64_t)1 << (8 * b + i);
                    (void)v;
#endif
                }
            } else {
                for (size_t k = base; k < d; k++)
                    if (xr[k] < 0) bits |= (uint64_t)1 << (k - base);
            }
            o[w] = bits;
        }
    }
}

#if HDC_X86
TGT_AVX512BW static void ps_range_avx512(const ps_ctx *c, size_t r0, size_t r1) {
    const size_t d = c->d, W = c->w;
    const size_t full = d / 64, rem = d % 64;
    const __mmask64 tail = rem ? (((__mmask64)1 << rem) - 1) : 0;
    for (size_t r = r0; r < r1; r++) {
        const int8_t *xr = c->x + r * d;
        uint64_t *o = c->out + r * W;
        size_t w = 0;
        for (; w < full; w++) o[w] = _cvtmask64_u64(_mm512_movepi8_mask(_mm512_loadu_si512((const void *)(xr + w * 64))));
        if (rem) {
            o[w] = _cvtmask64_u64(_mm512_movepi8_mask(_mm512_maskz_loadu_epi8(tail, (const void *)(xr + w * 64))));
            w++;
        }
        for (; w < W; w++) o[w] = 0;
    }
}
#endif

static void ps_task(void *ctx, size_t begin, size_t end) {
    const ps_ctx *c = (const ps_ctx *)ctx;
#if HDC_X86
    if (g_level >= LVL_AVX512BW) {
        ps_range_avx512(c, begin, end);
        return;
    }
#endif
    ps_range_generic(c, begin, end);
}

/* ------------------------------------------------------------------------------------------ */
/* Python argument helpers                                                                     */
/* ------------------------------------------------------------------------------------------ */
static int get_ptr(PyObject *obj, const char *name, void **out) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int (a data pointer), got %.100s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow < 0 || (overflow == 0 && v < 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be a non-negative pointer value", name);
        return -1;
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(obj);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s does not fit in a pointer", name);
        return -1;
    }
    if ((unsigned long long)(uintptr_t)u != u) {
        PyErr_Format(PyExc_ValueError, "%s does not fit in a pointer", name);
        return -1;
    }
    *out = (void *)(uintptr_t)u;
    return 0;
}

static int check_size(Py_ssize_t v, const char *name) {
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be non-negative, got %zd", name, v);
        return -1;
    }
    return 0;
}

static int check_nonnull(void *p, int needed, const char *name) {
    if (needed && p == NULL) {
        PyErr_Format(PyExc_ValueError, "%s must be a non-null pointer when the sizes are positive", name);
        return -1;
    }
    return 0;
}

static int mul_ok(size_t a, size_t b, size_t limit) { return a == 0 || b <= limit / a; }

static size_t norm_threads(Py_ssize_t t) {
    if (t < 1) return 1;
    if (t > HDC_MAX_THREADS) return HDC_MAX_THREADS;
    return (size_t)t;
}

#define SIZE_LIMIT ((size_t)PY_SSIZE_T_MAX)

/* ------------------------------------------------------------------------------------------ */
/* Python functions                                                                            */
/* ------------------------------------------------------------------------------------------ */
PyDoc_STRVAR(hamming_matrix_doc,
             "hamming_matrix(a_ptr, n_a, b_ptr, n_b, words, out_ptr, threads)\n\n"
             "out[i, j] (int32, n_a x n_b, row-major) = popcount(a_i XOR b_j) over `words` uint64 words.");

static PyObject *py_hamming_matrix(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *pa, *pb, *po;
    Py_ssize_t n_a, n_b, words, threads;
    if (!PyArg_ParseTuple(args, "OnOnnOn:hamming_matrix", &pa, &n_a, &pb, &n_b, &words, &po, &threads)) return NULL;
    void *a, *b, *o;
    if (get_ptr(pa, "a_ptr", &a) || get_ptr(pb, "b_ptr", &b) || get_ptr(po, "out_ptr", &o)) return NULL;
    if (check_size(n_a, "n_a") || check_size(n_b, "n_b") || check_size(words, "words")) return NULL;
    if (check_nonnull(a, n_a > 0 && words > 0, "a_ptr") || check_nonnull(b, n_b > 0 && words > 0, "b_ptr") ||
        check_nonnull(o, n_a > 0 && n_b > 0, "out_ptr"))
        return NULL;
    if ((size_t)words > (size_t)INT32_MAX / 64) {
        PyErr_SetString(PyExc_ValueError, "words is too large for int32 distances");
        return NULL;
    }
    if (!mul_ok((size_t)n_a, (size_t)words, SIZE_LIMIT / 8) || !mul_ok((size_t)n_b, (size_t)words, SIZE_LIMIT / 8) ||
        !mul_ok((size_t)n_a, (size_t)n_b, SIZE_LIMIT / 4)) {
        PyErr_SetString(PyExc_ValueError, "n_a, n_b, words: sizes overflow");
        return NULL;
    }
    if (n_a == 0 || n_b == 0) Py_RETURN_NONE;
    hm_ctx c = {(const uint64_t *)a, (const uint64_t *)b, (size_t)n_a, (size_t)n_b, (size_t)words, (int32_t *)o, 1};
    size_t T = norm_threads(threads);
    Py_BEGIN_ALLOW_THREADS;
    if (words == 0) {
        memset(o, 0, (size_t)n_a * (size_t)n_b * sizeof(int32_t));
    } else {
        double work = (double)n_a * (double)n_b * (double)(words + 4);
        T = threads_for(T, work, 2e5);
        /* split the larger side, in units of the 4-wide register block */
        c.split_rows = !((size_t)n_a < 4 * T && (size_t)n_b > (size_t)n_a);
        parallel_for(hm_task, &c, c.split_rows ? c.n_a : c.n_b, 4, T);
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(bit_counts_doc,
             "bit_counts(x_ptr, n, words, out_ptr, threads)\n\n"
             "out (int32, words*64)[k] = number of the n rows (uint64 x words) with bit k set.");

static PyObject *py_bit_counts(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *px, *po;
    Py_ssize_t n, words, threads;
    if (!PyArg_ParseTuple(args, "OnnOn:bit_counts", &px, &n, &words, &po, &threads)) return NULL;
    void *x, *o;
    if (get_ptr(px, "x_ptr", &x) || get_ptr(po, "out_ptr", &o)) return NULL;
    if (check_size(n, "n") || check_size(words, "words")) return NULL;
    if (check_nonnull(x, n > 0 && words > 0, "x_ptr") || check_nonnull(o, words > 0, "out_ptr")) return NULL;
    if ((size_t)n > (size_t)INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "n is too large for int32 counts");
        return NULL;
    }
    if (!mul_ok((size_t)n, (size_t)words, SIZE_LIMIT / 8) || !mul_ok(64, (size_t)words, SIZE_LIMIT / 4)) {
        PyErr_SetString(PyExc_ValueError, "n, words: sizes overflow");
        return NULL;
    }
    if (words == 0) Py_RETURN_NONE;
    bc_ctx c = {(const uint64_t *)x, (size_t)n, (size_t)words, (int32_t *)o};
    size_t T = norm_threads(threads);
    Py_BEGIN_ALLOW_THREADS;
    memset(o, 0, (size_t)words * 64 * sizeof(int32_t));
    if (n > 0) {
        T = threads_for(T, (double)n * (double)words, 1e5);
        parallel_for(bc_task, &c, (size_t)words, BC_GROUP, T);
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(int8_column_sum_doc,
             "int8_column_sum(x_ptr, n, d, out_ptr, threads)\n\n"
             "out (int32, d) = column sums of the int8 (n x d, row-major) matrix x.");

static PyObject *py_int8_column_sum(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *px, *po;
    Py_ssize_t n, d, threads;
    if (!PyArg_ParseTuple(args, "OnnOn:int8_column_sum", &px, &n, &d, &po, &threads)) return NULL;
    void *x, *o;
    if (get_ptr(px, "x_ptr", &x) || get_ptr(po, "out_ptr", &o)) return NULL;
    if (check_size(n, "n") || check_size(d, "d")) return NULL;
    if (check_nonnull(x, n > 0 && d > 0, "x_ptr") || check_nonnull(o, d > 0, "out_ptr")) return NULL;
    if (!mul_ok((size_t)n, (size_t)d, SIZE_LIMIT) || !mul_ok(4, (size_t)d, SIZE_LIMIT)) {
        PyErr_SetString(PyExc_ValueError, "n, d: sizes overflow");
        return NULL;
    }
    if (d == 0) Py_RETURN_NONE;
    cs_ctx c = {(const int8_t *)x, (size_t)n, (size_t)d, (int32_t *)o};
    size_t T = norm_threads(threads);
    Py_BEGIN_ALLOW_THREADS;
    memset(o, 0, (size_t)d * sizeof(int32_t));
    if (n > 0) {
        T = threads_for(T, (double)n * (double)d, 2e5);
        parallel_for(cs_task, &c, (size_t)d, 64, T);
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(pack_sign_bits_int8_doc,
             "pack_sign_bits_int8(x_ptr, n, d, words, out_ptr, threads)\n\n"
             "out (uint64, n x words): bit k of row r set iff x[r, k] < 0; words >= ceil(d/64), padding zero.");

static PyObject *py_pack_sign_bits_int8(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *px, *po;
    Py_ssize_t n, d, words, threads;
    if (!PyArg_ParseTuple(args, "OnnnOn:pack_sign_bits_int8", &px, &n, &d, &words, &po, &threads)) return NULL;
    void *x, *o;
    if (get_ptr(px, "x_ptr", &x) || get_ptr(po, "out_ptr", &o)) return NULL;
    if (check_size(n, "n") || check_size(d, "d") || check_size(words, "words")) return NULL;
    if ((size_t)words < ((size_t)d + 63) / 64) {
        PyErr_Format(PyExc_ValueError, "words must be >= ceil(d/64) = %zd, got %zd", (Py_ssize_t)((d + 63) / 64), words);
        return NULL;
    }
    if (check_nonnull(x, n > 0 && d > 0, "x_ptr") || check_nonnull(o, n > 0 && words > 0, "out_ptr")) return NULL;
    if (!mul_ok((size_t)n, (size_t)d, SIZE_LIMIT) || !mul_ok((size_t)n, (size_t)words, SIZE_LIMIT / 8)) {
        PyErr_SetString(PyExc_ValueError, "n, d, words: sizes overflow");
        return NULL;
    }
    if (n == 0 || words == 0) Py_RETURN_NONE;
    ps_ctx c = {(const int8_t *)x, (size_t)n, (size_t)d, (size_t)words, (uint64_t *)o};
    size_t T = norm_threads(threads);
    Py_BEGIN_ALLOW_THREADS;
    T = threads_for(T, (double)n * (double)(d + 64), 4e5);
    parallel_for(ps_task, &c, (size_t)n, 1, T);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

static PyObject *py_features(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(LEVEL_NAMES[g_level]);
}

static PyObject *py_set_level(PyObject *self, PyObject *args) {
    (void)self;
    int lvl;
    if (!PyArg_ParseTuple(args, "i:_set_level", &lvl)) return NULL;
    if (lvl < 0) {
        PyErr_SetString(PyExc_ValueError, "level must be >= 0");
        return NULL;
    }
    int prev = g_level;
    g_level = lvl > g_max_level ? g_max_level : lvl;
    return PyLong_FromLong(prev);
}

static PyObject *py_max_level(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromLong(g_max_level);
}

static PyMethodDef methods[] = {
    {"hamming_matrix", py_hamming_matrix, METH_VARARGS, hamming_matrix_doc},
    {"bit_counts", py_bit_counts, METH_VARARGS, bit_counts_doc},
    {"int8_column_sum", py_int8_column_sum, METH_VARARGS, int8_column_sum_doc},
    {"pack_sign_bits_int8", py_pack_sign_bits_int8, METH_VARARGS, pack_sign_bits_int8_doc},
    {"features", py_features, METH_NOARGS, "Name of the code path chosen at run time."},
    {"_set_level", py_set_level, METH_VARARGS,
     "_set_level(level) -> previous level. Lowers the code path (0 generic .. 4 avx512-vpopcntdq), capped at "
     "what the CPU supports. For tests."},
    {"_max_level", py_max_level, METH_NOARGS, "Highest code-path level this CPU supports."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_cpu", "Compiled CPU kernels for hd_compute (packed binary and int8 hypervectors).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cpu(void) {
    bc_init_table();
    g_max_level = detect_level();
    g_level = g_max_level;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "LEVEL", g_max_level) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
