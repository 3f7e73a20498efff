/*
 * popql.engine._vecscan: the compiled kernels of popql.engine.vector (optional).
 *
 * Two functions over the float16 matrix of a VectorIndex, read in place (memory-mapped usearch
 * file or in-memory array), with no gathering or conversion copy:
 *
 *   scan(matrix, dim, selection, mode, query, count, threshold, out_rows, out_scores, threads)
 *       Cosine similarity (float32 sums, float32 query) of every selected row; selection is all
 *       rows (mode 0), an int64 array of rows (mode 1) or a bool mask over the rows (mode 2).
 *       count > 0: the `count` best rows, best first (a heap per thread, merged);
 *       count == 0: every row scoring at least `threshold`, in row order.
 *       Returns how many rows were written to out_rows / out_scores.
 *
 *   hnsw(file, starts, matrix, dim, conn, conn_base, slot_bytes, max_level, entry, mask, query,
 *        ef, ef_upper, max_visits, k, out_rows, out_scores)
 *       HNSW search over the graph of a saved usearch (2.x) dense index, read in place, with the
 *       filter inside the graph: every node is traversed but only rows whose mask byte is set
 *       enter the result list (ef of them). Stops after max_visits distance computations (then
 *       the caller falls back to an exact scan). Returns (written, visits, exhausted,
 *       allowed_seen, first_allowed_visit, above_kth): how many of the rows whose distance it
 *       computed passed the filter, after how many distances the first one did (-1: none), and
 *       how many of the rows it scored (allowed or not) score above the k-th allowed result
 *       (-1: fewer than k found). A filter independent of the query puts about k / selectivity
 *       rows there; many more means the allowed rows are scarce near the query (a filter
 *       anti-correlated with it), where a narrow search is least reliable.
 *
 *   rescore(matrix, dim, rows, query64, out)
 *       The reported scores: cosine of each listed row with the float64 query, summed in
 *       float64 in a fixed order (the same on every CPU), clipped to [-1, 1]; zero rows score 0.
 *
 * Distances use AVX2 + F16C + FMA when the CPU has them (checked at run time), else portable C.
 * Every score the Python side returns is recomputed exactly in float64; these kernels only
 * choose candidates, and their error bound (KERNEL_EPS in vector.py) covers both code paths.
 * The GIL is released while computing. Built by setup.py as an optional extension: when it is
 * missing, vector.py uses usearch's kernel instead.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VS_X86 1
#else
#define VS_X86 0
#endif

/* ------------------------------------------------------------------------------------------ */
/* float16 -> float32 and the distance kernels                                                  */
/* ------------------------------------------------------------------------------------------ */

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while ((mant & 0x400u) == 0);
            mant &= 0x3ffu;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

typedef void (*dot_fn)(const uint16_t *x, const float *q, Py_ssize_t dim, float *dot, float *xx);

static void dot_portable(const uint16_t *x, const float *q, Py_ssize_t dim, float *dot,
                         float *xx) {
    float d = 0.f, n = 0.f;
    for (Py_ssize_t i = 0; i < dim; i++) {
        float v = half_to_float(x[i]);
        d += v * q[i];
        n += v * v;
    }
    *dot = d;
    *xx = n;
}

#if VS_X86
__attribute__((target("avx2,f16c,fma"))) static void dot_avx2(const uint16_t *x, const float *q,
                                                               Py_ssize_t dim, float *dot,
                                                               float *xx) {
    __m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps();
    __m256 n0 = _mm256_setzero_ps(), n1 = _mm256_setzero_ps();
    Py_ssize_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        __m256 b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i + 8)));
        d0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(q + i), d0);
        d1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(q + i + 8), d1);
        n0 = _mm256_fmadd_ps(a, a, n0);
        n1 = _mm256_fmadd_ps(b, b, n1);
    }
    __m256 d = _mm256_add_ps(d0, d1), n = _mm256_add_ps(n0, n1);
    float dd[8], nn[8];
    _mm256_storeu_ps(dd, d);
    _mm256_storeu_ps(nn, n);
    float ds = 0.f, ns = 0.f;
    for (int j = 0; j < 8; j++) {
        ds += dd[j];
        ns += nn[j];
    }
    for (; i < dim; i++) {
        float v = half_to_float(x[i]);
        ds += v * q[i];
        ns += v * v;
    }
    *dot = ds;
    *xx = ns;
}
#endif

static dot_fn DOT = dot_portable;
static const char *KERNEL_NAME = "portable";

static void choose_kernel(void) {
#if VS_X86 && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
        __builtin_cpu_supports("fma") && getenv("POPQL_VECSCAN_PORTABLE") == NULL) {
        DOT = dot_avx2;
        KERNEL_NAME = "avx2-f16c";
    }
#endif
}

/* cosine similarity of row x with the unit query q; zero rows score 0 */
static inline float cosine(const uint16_t *x, const float *q, Py_ssize_t dim) {
    float d, n;
    DOT(x, q, dim, &d, &n);
    return n > 0.f ? d / sqrtf(n) : 0.f;
}

static inline void prefetch_row(const uint16_t *x, Py_ssize_t dim) {
#if defined(__GNUC__) || defined(__clang__)
    const char *p = (const char *)x;
    for (Py_ssize_t b = 0; b < dim * 2; b += 64) __builtin_prefetch(p + b, 0, 0);
#else
    (void)x;
    (void)dim;
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Heaps                                                                                        */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    float score;
    int64_t row;
} item_t;

/* min-heap on score: the worst kept item on top (top-count selection) */
static void minheap_push(item_t *h, Py_ssize_t *size, item_t it) {
    Py_ssize_t i = (*size)++;
    while (i > 0) {
        Py_ssize_t p = (i - 1) / 2;
        if (h[p].score <= it.score) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

static void minheap_replace_top(item_t *h, Py_ssize_t size, item_t it) {
    Py_ssize_t i = 0;
    for (;;) {
        Py_ssize_t l = 2 * i + 1, r = l + 1, m = i;
        float ms = it.score;
        if (l < size && h[l].score < ms) {
            m = l;
            ms = h[l].score;
        }
        if (r < size && h[r].score < ms) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    h[i] = it;
}

static inline void keep_best(item_t *h, Py_ssize_t *size, Py_ssize_t cap, float s, int64_t row) {
    if (*size < cap) {
        item_t it = {s, row};
        minheap_push(h, size, it);
    } else if (s > h[0].score) {
        item_t it = {s, row};
        minheap_replace_top(h, *size, it);
    }
}

static int by_score_desc(const void *a, const void *b) {
    const item_t *x = a, *y = b;
    if (x->score > y->score) return -1;
    if (x->score < y->score) return 1;
    return (x->row > y->row) - (x->row < y->row);
}

/* ------------------------------------------------------------------------------------------ */
/* scan                                                                                         */
/* ------------------------------------------------------------------------------------------ */

#define BLOCK 4096
#ifndef PREFETCH
#define PREFETCH 8 /* rows ahead */
#endif

typedef struct {
    const uint16_t *matrix;
    Py_ssize_t dim, n;
    const int64_t *rows; /* mode 1 */
    const uint8_t *mask; /* mode 2 */
    int mode;
    Py_ssize_t total; /* entries to walk: n (modes 0, 2) or len(rows) */
    const float *q;
    Py_ssize_t count;
    float threshold;
    int tid, nthreads;
    /* results */
    item_t *heap;
    Py_ssize_t size, cap;
    int failed;
    int64_t local[BLOCK]; /* mode 2: the selected rows of the current block */
} job_t;

/* Room for one more element in a growable array of `size` elements (capacity doubled, `first`
   at the start): 0, or -1 when out of memory (the array is left as it was). */
static int reserve(void **a, Py_ssize_t size, Py_ssize_t *cap, size_t elem, Py_ssize_t first) {
    if (size < *cap) return 0;
    Py_ssize_t c = *cap ? 2 * *cap : first;
    void *na = realloc(*a, (size_t)c * elem);
    if (na == NULL) return -1;
    *a = na;
    *cap = c;
    return 0;
}

static void job_add(job_t *j, float s, int64_t row) {
    if (j->count > 0) {
        keep_best(j->heap, &j->size, j->count, s, row);
    } else if (s >= j->threshold) {
        void *h = j->heap;
        if (reserve(&h, j->size, &j->cap, sizeof(item_t), 1024) < 0) {
            j->failed = 1;
            return;
        }
        j->heap = h;
        item_t it = {s, row};
        j->heap[j->size++] = it;
    }
}

static void *scan_job(void *arg) {
    job_t *j = arg;
    const Py_ssize_t dim = j->dim;
    for (Py_ssize_t b0 = (Py_ssize_t)j->tid * BLOCK; b0 < j->total && !j->failed;
         b0 += (Py_ssize_t)j->nthreads * BLOCK) {
        Py_ssize_t b1 = b0 + BLOCK < j->total ? b0 + BLOCK : j->total;
        if (j->mode == 1) {
            for (Py_ssize_t i = b0; i < b1; i++) {
                if (i + PREFETCH < b1) prefetch_row(j->matrix + j->rows[i + PREFETCH] * dim, dim);
                int64_t r = j->rows[i];
                job_add(j, cosine(j->matrix + r * dim, j->q, dim), r);
            }
        } else if (j->mode == 2) {
            /* the block's selected rows first (8 mask bytes at a time), then scanned with
               software prefetch: rows scattered over a large mapping miss the TLB and the
               caches, and the hardware prefetcher does not cross pages */
            Py_ssize_t m = 0, i = b0;
            while (i < b1) {
                if (i + 8 <= b1) {
                    uint64_t w;
                    memcpy(&w, j->mask + i, 8);
                    if (w == 0) {
                        i += 8;
                        continue;
                    }
                }
                if (j->mask[i]) j->local[m++] = i;
                i++;
            }
            for (Py_ssize_t t = 0; t < m; t++) {
                if (t + PREFETCH < m) prefetch_row(j->matrix + j->local[t + PREFETCH] * dim, dim);
                int64_t r = j->local[t];
                job_add(j, cosine(j->matrix + r * dim, j->q, dim), r);
            }
        } else {
            for (Py_ssize_t i = b0; i < b1; i++)
                job_add(j, cosine(j->matrix + i * dim, j->q, dim), i);
        }
    }
    return NULL;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "_vecscan: %s must be a C-contiguous%s buffer", what,
                     writable ? " writable" : "");
        return -1;
    }
    return 0;
}

static PyObject *py_scan(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_matrix, *o_sel, *o_q, *o_rows, *o_scores;
    Py_ssize_t dim, count;
    int mode, threads;
    float threshold;
    if (!PyArg_ParseTuple(args, "OnOiOnfOOi", &o_matrix, &dim, &o_sel, &mode, &o_q, &count,
                          &threshold, &o_rows, &o_scores, &threads))
        return NULL;
    Py_buffer bm = {0}, bs = {0}, bq = {0}, bo = {0}, bsc = {0};
    int have_sel = 0;
    PyObject *result = NULL;
    job_t *jobs = NULL;
    if (dim <= 0 || mode < 0 || mode > 2 || count < 0) {
        PyErr_SetString(PyExc_ValueError, "_vecscan.scan: bad arguments");
        return NULL;
    }
    if (get_buffer(o_matrix, &bm, 0, "matrix") < 0) return NULL;
    if (get_buffer(o_q, &bq, 0, "query") < 0) goto done;
    if (get_buffer(o_rows, &bo, 1, "out_rows") < 0) goto done;
    if (get_buffer(o_scores, &bsc, 1, "out_scores") < 0) goto done;
    if (mode != 0) {
        if (get_buffer(o_sel, &bs, 0, "selection") < 0) goto done;
        have_sel = 1;
    }
    Py_ssize_t n = bm.len / (2 * dim);
    Py_ssize_t total = mode == 1 ? bs.len / 8 : n;
    Py_ssize_t out_cap = bo.len / 8;
    if (bq.len != dim * 4 || bsc.len / 4 < out_cap || (mode == 2 && bs.len != n)) {
        PyErr_SetString(PyExc_ValueError, "_vecscan.scan: buffer sizes do not match");
        goto done;
    }
    if (count > out_cap) {
        PyErr_SetString(PyExc_ValueError, "_vecscan.scan: output buffers too small");
        goto done;
    }
    if (mode == 1) {
        const int64_t *rows = bs.buf;
        for (Py_ssize_t i = 0; i < total; i++) {
            if (rows[i] < 0 || rows[i] >= n) {
                PyErr_SetString(PyExc_IndexError, "_vecscan.scan: row out of range");
                goto done;
            }
        }
    }
    if (threads < 1) threads = 1;
    Py_ssize_t blocks = (total + BLOCK - 1) / BLOCK;
    if (threads > blocks) threads = blocks > 0 ? (int)blocks : 1;
    jobs = calloc((size_t)threads, sizeof(job_t));
    if (jobs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (int t = 0; t < threads; t++) {
        job_t *j = &jobs[t];
        j->matrix = bm.buf;
        j->dim = dim;
        j->n = n;
        j->rows = mode == 1 ? bs.buf : NULL;
        j->mask = mode == 2 ? bs.buf : NULL;
        j->mode = mode;
        j->total = total;
        j->q = bq.buf;
        j->count = count;
        j->threshold = threshold;
        j->tid = t;
        j->nthreads = threads;
        if (count > 0) {
            j->heap = malloc((size_t)(count ? count : 1) * sizeof(item_t));
            if (j->heap == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            j->cap = count;
        }
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS;
    pthread_t tids[64];
    int started = 0;
    for (int t = 1; t < threads && t < 64; t++) {
        if (pthread_create(&tids[t], NULL, scan_job, &jobs[t]) != 0) break;
        started = t;
    }
    /* threads that could not start run here, one after another */
    scan_job(&jobs[0]);
    for (int t = started + 1; t < threads; t++) scan_job(&jobs[t]);
    for (int t = 1; t <= started; t++) pthread_join(tids[t], NULL);
    for (int t = 0; t < threads; t++) failed |= jobs[t].failed;
    Py_END_ALLOW_THREADS;
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t *out_rows = bo.buf;
    float *out_scores = bsc.buf;
    Py_ssize_t written = 0;
    if (count > 0) {
        /* merge the per-thread heaps: all items, sorted best first, the first count kept */
        Py_ssize_t all = 0;
        for (int t = 0; t < threads; t++) all += jobs[t].size;
        item_t *merged = malloc((size_t)(all ? all : 1) * sizeof(item_t));
        if (merged == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        Py_ssize_t p = 0;
        for (int t = 0; t < threads; t++) {
            memcpy(merged + p, jobs[t].heap, (size_t)jobs[t].size * sizeof(item_t));
            p += jobs[t].size;
        }
        qsort(merged, (size_t)all, sizeof(item_t), by_score_desc);
        written = all < count ? all : count;
        for (Py_ssize_t i = 0; i < written; i++) {
            out_rows[i] = merged[i].row;
            out_scores[i] = merged[i].score;
        }
        free(merged);
    } else {
        /* threshold: every passing row, in row order within each thread's blocks; the caller
           sorts what it keeps */
        Py_ssize_t all = 0;
        for (int t = 0; t < threads; t++) all += jobs[t].size;
        if (all > out_cap) {
            PyErr_SetString(PyExc_ValueError, "_vecscan.scan: output buffers too small");
            goto done;
        }
        for (int t = 0; t < threads; t++) {
            for (Py_ssize_t i = 0; i < jobs[t].size; i++) {
                out_rows[written] = jobs[t].heap[i].row;
                out_scores[written] = jobs[t].heap[i].score;
                written++;
            }
        }
    }
    result = PyLong_FromSsize_t(written);
done:
    if (jobs != NULL) {
        for (int t = 0; t < threads; t++) free(jobs[t].heap);
        free(jobs);
    }
    if (bm.obj) PyBuffer_Release(&bm);
    if (have_sel) PyBuffer_Release(&bs);
    if (bq.obj) PyBuffer_Release(&bq);
    if (bo.obj) PyBuffer_Release(&bo);
    if (bsc.obj) PyBuffer_Release(&bsc);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* hnsw: filtered search over a saved usearch graph                                             */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *file;
    Py_ssize_t file_len;
    const int64_t *starts;
    Py_ssize_t n;
    Py_ssize_t conn, conn_base;
    int slot_bytes;
} graph_t;

/* the neighbour list of a node at a level: count and a pointer to the packed slots */
static inline const uint8_t *neighbours(const graph_t *g, int64_t slot, int level,
                                        uint32_t *count) {
    const uint8_t *p = g->file + g->starts[slot] + 10;
    if (level > 0)
        p += (4 + g->conn_base * g->slot_bytes) + (Py_ssize_t)(level - 1) * (4 + g->conn * g->slot_bytes);
    uint32_t c;
    memcpy(&c, p, 4);
    *count = c;
    return p + 4;
}

static inline int64_t slot_at(const graph_t *g, const uint8_t *p, uint32_t i) {
    if (g->slot_bytes == 4) {
        uint32_t s;
        memcpy(&s, p + 4 * (size_t)i, 4);
        return s;
    }
    uint64_t s = 0;
    memcpy(&s, p + 5 * (size_t)i, 5); /* little-endian u40 */
    return (int64_t)s;
}

static inline int16_t node_level(const graph_t *g, int64_t slot) {
    int16_t l;
    memcpy(&l, g->file + g->starts[slot] + 8, 2);
    return l;
}

/* candidates: max-heap on score (best first) */
static int cand_push(item_t **h, Py_ssize_t *size, Py_ssize_t *cap, item_t it) {
    void *a0 = *h;
    if (reserve(&a0, *size, cap, sizeof(item_t), 256) < 0) return -1;
    *h = a0;
    Py_ssize_t i = (*size)++;
    item_t *a = *h;
    while (i > 0) {
        Py_ssize_t p = (i - 1) / 2;
        if (a[p].score >= it.score) break;
        a[i] = a[p];
        i = p;
    }
    a[i] = it;
    return 0;
}

static item_t cand_pop(item_t *h, Py_ssize_t *size) {
    item_t top = h[0];
    item_t last = h[--(*size)];
    Py_ssize_t i = 0, s = *size;
    for (;;) {
        Py_ssize_t l = 2 * i + 1, r = l + 1, m = i;
        float ms = last.score;
        if (l < s && h[l].score > ms) {
            m = l;
            ms = h[l].score;
        }
        if (r < s && h[r].score > ms) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (s > 0) h[i] = last;
    return top;
}

#define MAX_EF_UPPER 64

static int push_touched(int64_t **a, Py_ssize_t *size, Py_ssize_t *cap, int64_t s) {
    void *a0 = *a;
    if (reserve(&a0, *size, cap, sizeof(int64_t), 256) < 0) return -1;
    *a = a0;
    (*a)[(*size)++] = s;
    return 0;
}

static int push_score(float **a, Py_ssize_t *size, Py_ssize_t *cap, float v) {
    void *a0 = *a;
    if (reserve(&a0, *size, cap, sizeof(float), 1024) < 0) return -1;
    *a = a0;
    (*a)[(*size)++] = v;
    return 0;
}

static PyObject *py_hnsw(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_file, *o_starts, *o_matrix, *o_mask, *o_q, *o_rows, *o_scores;
    Py_ssize_t dim, conn, conn_base, ef, ef_upper, max_visits, want_k;
    int slot_bytes, max_level;
    long long entry;
    if (!PyArg_ParseTuple(args, "OOOnnniiLOOnnnnOO", &o_file, &o_starts, &o_matrix, &dim, &conn,
                          &conn_base, &slot_bytes, &max_level, &entry, &o_mask, &o_q, &ef,
                          &ef_upper, &max_visits, &want_k, &o_rows, &o_scores))
        return NULL;
    Py_buffer bf = {0}, bst = {0}, bm = {0}, bk = {0}, bq = {0}, bo = {0}, bsc = {0};
    int have_mask = o_mask != Py_None;
    PyObject *result = NULL;
    uint64_t *visited = NULL;
    int64_t *touched = NULL;
    item_t *cands = NULL, *top = NULL;
    float *scored = NULL; /* every level-0 score, for above_kth */
    if (get_buffer(o_file, &bf, 0, "file") < 0) return NULL;
    if (get_buffer(o_starts, &bst, 0, "starts") < 0) goto done;
    if (get_buffer(o_matrix, &bm, 0, "matrix") < 0) goto done;
    if (have_mask && get_buffer(o_mask, &bk, 0, "mask") < 0) goto done;
    if (get_buffer(o_q, &bq, 0, "query") < 0) goto done;
    if (get_buffer(o_rows, &bo, 1, "out_rows") < 0) goto done;
    if (get_buffer(o_scores, &bsc, 1, "out_scores") < 0) goto done;
    Py_ssize_t n = bst.len / 8;
    if (dim <= 0 || bm.len != n * dim * 2 || bq.len != dim * 4 || (have_mask && bk.len != n) ||
        (slot_bytes != 4 && slot_bytes != 5) || ef < 1 || bo.len / 8 < ef || bsc.len / 4 < ef ||
        ef_upper < 1 || ef_upper > MAX_EF_UPPER || want_k < 1 ||
        (n > 0 && (entry < 0 || entry >= n))) {
        PyErr_SetString(PyExc_ValueError, "_vecscan.hnsw: bad arguments");
        goto done;
    }
    if (n == 0) {
        result = Py_BuildValue("nninnn", (Py_ssize_t)0, (Py_ssize_t)0, 0, (Py_ssize_t)0,
                               (Py_ssize_t)-1, (Py_ssize_t)-1);
        goto done;
    }
    graph_t g = {bf.buf, bf.len, bst.buf, n, conn, conn_base, slot_bytes};
    const uint16_t *matrix = bm.buf;
    const uint8_t *mask = have_mask ? bk.buf : NULL;
    const float *q = bq.buf;
    /* node starts must lie in the file: checked once per call on the entry only; the Python
       side validated the whole layout when it parsed the file */
    visited = calloc((size_t)(n + 63) / 64, 8);
    Py_ssize_t tcap = ef, tsize = 0, csize = 0, ccap = 0;
    top = malloc((size_t)tcap * sizeof(item_t));
    if (visited == NULL || top == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t visits = 0, allowed_seen = 0, first_allowed = -1, above = -1;
    Py_ssize_t nscored = 0, scored_cap = 0;
    int exhausted = 0, failed = 0;
    Py_BEGIN_ALLOW_THREADS;
    /* upper levels: a best-first search of breadth ef_upper per level (1 is usearch's greedy
       descent), seeded by the level above; level 0 starts from all of the last level's results.
       A breadth above 1 keeps a query whose greedy path ends in a poor region from being stuck
       there. */
    item_t seeds[MAX_EF_UPPER];
    Py_ssize_t nseeds = 1;
    seeds[0].row = entry;
    seeds[0].score = cosine(matrix + entry * dim, q, dim);
    visits++;
    Py_ssize_t tch_size = 0, tch_cap = 0;
    item_t up[MAX_EF_UPPER];
    for (int level = max_level; level >= 1 && !failed; level--) {
        for (Py_ssize_t i = 0; i < tch_size; i++) {
            int64_t s = touched[i];
            visited[s >> 6] &= ~(1ull << (s & 63));
        }
        tch_size = 0;
        Py_ssize_t usize = 0;
        csize = 0;
        for (Py_ssize_t i = 0; i < nseeds && !failed; i++) {
            int64_t s = seeds[i].row;
            visited[s >> 6] |= 1ull << (s & 63);
            if (push_touched(&touched, &tch_size, &tch_cap, s) < 0 ||
                cand_push(&cands, &csize, &ccap, seeds[i]) < 0)
                failed = 1;
            keep_best(up, &usize, ef_upper, seeds[i].score, s);
        }
        while (csize > 0 && !failed) {
            item_t c = cand_pop(cands, &csize);
            if (usize == ef_upper && c.score < up[0].score) break;
            if (node_level(&g, c.row) < level) continue;
            uint32_t cnt;
            const uint8_t *nb = neighbours(&g, c.row, level, &cnt);
            for (uint32_t i = 0; i < cnt; i++) {
                int64_t s = slot_at(&g, nb, i);
                if (s >= 0 && s < n) prefetch_row(matrix + s * dim, dim);
            }
            for (uint32_t i = 0; i < cnt; i++) {
                int64_t s = slot_at(&g, nb, i);
                if (s < 0 || s >= n) continue;
                uint64_t bit = 1ull << (s & 63);
                if (visited[s >> 6] & bit) continue;
                visited[s >> 6] |= bit;
                if (push_touched(&touched, &tch_size, &tch_cap, s) < 0) {
                    failed = 1;
                    break;
                }
                float sc = cosine(matrix + s * dim, q, dim);
                visits++;
                if (usize < ef_upper || sc > up[0].score) {
                    item_t it = {sc, s};
                    if (cand_push(&cands, &csize, &ccap, it) < 0) {
                        failed = 1;
                        break;
                    }
                    keep_best(up, &usize, ef_upper, sc, s);
                }
            }
        }
        memcpy(seeds, up, (size_t)usize * sizeof(item_t));
        nseeds = usize;
    }
    for (Py_ssize_t i = 0; i < tch_size; i++) {
        int64_t s = touched[i];
        visited[s >> 6] &= ~(1ull << (s & 63));
    }
    /* level 0: best-first search; only allowed rows enter `top` (a min-heap of ef) */
    csize = 0;
    for (Py_ssize_t i = 0; i < nseeds && !failed; i++) {
        int64_t s = seeds[i].row;
        visited[s >> 6] |= 1ull << (s & 63);
        if (cand_push(&cands, &csize, &ccap, seeds[i]) < 0 ||
            push_score(&scored, &nscored, &scored_cap, seeds[i].score) < 0)
            failed = 1;
        if (!mask || mask[s]) {
            keep_best(top, &tsize, ef, seeds[i].score, s);
            allowed_seen++;
            if (first_allowed < 0) first_allowed = visits;
        }
    }
    while (csize > 0 && !failed) {
        item_t c = cand_pop(cands, &csize);
        if (tsize == ef && c.score < top[0].score) break;
        if (visits >= max_visits) {
            exhausted = 1;
            break;
        }
        uint32_t cnt;
        const uint8_t *nb = neighbours(&g, c.row, 0, &cnt);
        for (uint32_t i = 0; i < cnt; i++) {
            int64_t s = slot_at(&g, nb, i);
            if (s >= 0 && s < n && !(visited[s >> 6] & (1ull << (s & 63))))
                prefetch_row(matrix + s * dim, dim);
        }
        for (uint32_t i = 0; i < cnt; i++) {
            int64_t s = slot_at(&g, nb, i);
            if (s < 0 || s >= n) continue;
            uint64_t bit = 1ull << (s & 63);
            if (visited[s >> 6] & bit) continue;
            visited[s >> 6] |= bit;
            float sc = cosine(matrix + s * dim, q, dim);
            visits++;
            if (push_score(&scored, &nscored, &scored_cap, sc) < 0) {
                failed = 1;
                break;
            }
            if (!mask || mask[s]) {
                allowed_seen++;
                if (first_allowed < 0) first_allowed = visits;
            }
            if (tsize < ef || sc > top[0].score) {
                item_t it = {sc, s};
                if (cand_push(&cands, &csize, &ccap, it) < 0) {
                    failed = 1;
                    break;
                }
                if (!mask || mask[s]) keep_best(top, &tsize, ef, sc, s);
            }
        }
    }
    if (!failed) {
        qsort(top, (size_t)tsize, sizeof(item_t), by_score_desc);
        if (tsize >= want_k) {
            float kth = top[want_k - 1].score;
            above = 0;
            for (Py_ssize_t i = 0; i < nscored; i++) above += scored[i] > kth;
        }
    }
    Py_END_ALLOW_THREADS;
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t *out_rows = bo.buf;
    float *out_scores = bsc.buf;
    for (Py_ssize_t i = 0; i < tsize; i++) {
        out_rows[i] = top[i].row;
        out_scores[i] = top[i].score;
    }
    result = Py_BuildValue("nninnn", tsize, visits, exhausted, allowed_seen, first_allowed, above);
done:
    free(visited);
    free(scored);
    free(touched);
    free(cands);
    free(top);
    if (bf.obj) PyBuffer_Release(&bf);
    if (bst.obj) PyBuffer_Release(&bst);
    if (bm.obj) PyBuffer_Release(&bm);
    if (bk.obj) PyBuffer_Release(&bk);
    if (bq.obj) PyBuffer_Release(&bq);
    if (bo.obj) PyBuffer_Release(&bo);
    if (bsc.obj) PyBuffer_Release(&bsc);
    return result;
}


/* ------------------------------------------------------------------------------------------ */
/* rescore: the reported float64 scores                                                         */
/* ------------------------------------------------------------------------------------------ */

#if VS_X86
__attribute__((target("f16c"))) static void halves_f16c(const uint16_t *x, float *out,
                                                       Py_ssize_t dim) {
    Py_ssize_t i = 0;
    for (; i + 8 <= dim; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < dim; i++) out[i] = half_to_float(x[i]);
}
#endif

static int HAVE_F16C = 0;

static PyObject *py_rescore(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_matrix, *o_rows, *o_q, *o_out;
    Py_ssize_t dim;
    if (!PyArg_ParseTuple(args, "OnOOO", &o_matrix, &dim, &o_rows, &o_q, &o_out)) return NULL;
    Py_buffer bm = {0}, br = {0}, bq = {0}, bo = {0};
    PyObject *result = NULL;
    float *row = NULL;
    if (get_buffer(o_matrix, &bm, 0, "matrix") < 0) return NULL;
    if (get_buffer(o_rows, &br, 0, "rows") < 0) goto done;
    if (get_buffer(o_q, &bq, 0, "query") < 0) goto done;
    if (get_buffer(o_out, &bo, 1, "out") < 0) goto done;
    Py_ssize_t n = dim > 0 ? bm.len / (2 * dim) : 0, count = br.len / 8;
    if (dim <= 0 || bm.len != n * dim * 2 || bq.len != dim * 8 || bo.len != count * 4) {
        PyErr_SetString(PyExc_ValueError, "_vecscan.rescore: bad arguments");
        goto done;
    }
    const int64_t *rows = br.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (rows[i] < 0 || rows[i] >= n) {
            PyErr_SetString(PyExc_IndexError, "_vecscan.rescore: row out of range");
            goto done;
        }
    }
    row = malloc((size_t)dim * sizeof(float));
    if (row == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const uint16_t *matrix = bm.buf;
    const double *q = bq.buf;
    float *out = bo.buf;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t r = 0; r < count; r++) {
        const uint16_t *x = matrix + rows[r] * dim;
#if VS_X86
        if (HAVE_F16C)
            halves_f16c(x, row, dim);
        else
#endif
            for (Py_ssize_t i = 0; i < dim; i++) row[i] = half_to_float(x[i]);
        /* four float64 partial sums, i mod 4, combined in a fixed order: conversions are
           exact, so every CPU gets the same bits */
        double d[4] = {0, 0, 0, 0}, nn[4] = {0, 0, 0, 0};
        Py_ssize_t i = 0;
        for (; i + 4 <= dim; i += 4) {
            for (int j = 0; j < 4; j++) {
                double v = (double)row[i + j];
                d[j] += v * q[i + j];
                nn[j] += v * v;
            }
        }
        for (; i < dim; i++) {
            double v = (double)row[i];
            d[0] += v * q[i];
            nn[0] += v * v;
        }
        double dot = (d[0] + d[1]) + (d[2] + d[3]), norm = sqrt((nn[0] + nn[1]) + (nn[2] + nn[3]));
        double c = norm > 0 ? dot / norm : 0.0;
        out[r] = (float)(c > 1.0 ? 1.0 : (c < -1.0 ? -1.0 : c));
    }
    Py_END_ALLOW_THREADS;
    result = PyLong_FromSsize_t(count);
done:
    free(row);
    if (bm.obj) PyBuffer_Release(&bm);
    if (br.obj) PyBuffer_Release(&br);
    if (bq.obj) PyBuffer_Release(&bq);
    if (bo.obj) PyBuffer_Release(&bo);
    return result;
}

static PyObject *py_kernel(PyObject *self, PyObject *args) {
    (void)self;
    const char *want = NULL;
    if (!PyArg_ParseTuple(args, "|z", &want)) return NULL;
    if (want != NULL) {
        if (strcmp(want, "portable") == 0) {
            DOT = dot_portable;
            KERNEL_NAME = "portable";
        } else if (strcmp(want, "best") == 0) {
            DOT = dot_portable;
            KERNEL_NAME = "portable";
            choose_kernel();
        } else {
            PyErr_SetString(PyExc_ValueError, "kernel: 'portable' or 'best'");
            return NULL;
        }
    }
    return PyUnicode_FromString(KERNEL_NAME);
}

static PyMethodDef methods[] = {
    {"scan", py_scan, METH_VARARGS,
     "scan(matrix, dim, selection, mode, query, count, threshold, out_rows, out_scores, threads)"
     " -> written"},
    {"hnsw", py_hnsw, METH_VARARGS,
     "hnsw(file, starts, matrix, dim, conn, conn_base, slot_bytes, max_level, entry, mask, "
     "query, ef, ef_upper, max_visits, k, out_rows, out_scores) -> (written, visits, exhausted, allowed_seen, "
     "first_allowed_visit, above_kth)"},
    {"rescore", py_rescore, METH_VARARGS,
     "rescore(matrix, dim, rows, query64, out) -> count: float64 cosine scores of rows"},
    {"kernel", py_kernel, METH_VARARGS,
     "kernel(choice=None) -> the distance kernel in use, 'avx2-f16c' or 'portable'; choice "
     "'portable' or 'best' switches (tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_vecscan",
    "Compiled scan and filtered-HNSW kernels of popql.engine.vector (optional).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__vecscan(void) {
    choose_kernel();
#if VS_X86 && (defined(__GNUC__) || defined(__clang__))
    HAVE_F16C = __builtin_cpu_supports("f16c");
#endif
    return PyModule_Create(&moduledef);
}
