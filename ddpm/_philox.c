/* Optional compiled Philox4x32-10 core for ddpm.noise (plain CPython C API, no numpy).
 *
 * Same layout as ddpm/noise.py's numpy reference (read its docstring): key = (k0, k1),
 * counter(k) = counter_start + k split into (lo, hi, 0, 0); only output words r0, r1 are
 * produced. Two entry points, both filling caller-owned writable buffers (e.g. numpy
 * arrays) of at least n 4-byte items:
 *
 *   philox(r0, r1, counter_start, n, k0, k1)        -> uint32 words r0, r1
 *   uniform_pair(u1, u2, counter_start, n, k0, k1)  -> float32 max(u(r0), 1e-7), u(r1) * 2pi
 *
 * uniform_pair is the integer/IEEE-exact prefix of Box-Muller (int32 -> float32 conversion,
 * float32 multiplies, a max): every step is correctly rounded, so it is bit-identical to the
 * numpy path, which then applies log / sqrt / cos itself. Build with -ffp-contract=off and
 * without -ffast-math (setup.py does) so nothing is fused or reassociated.
 *
 * x86 with AVX2 (checked at run time, so the build needs no -march flag) runs a hand-written
 * vpmuludq kernel, 8 counters per step; everything else, and the last n % 8 items, runs the
 * portable per-element loop. Measured on the 2-core AVX2 dev VM (196,608 counters, median):
 * the portable loop auto-vectorized by gcc 12 via target_clones("avx512f","avx2","default")
 * took ~1.5 ms -- gcc packs/unpacks the 64-bit products with vpshufd/vperm2i128 every
 * round -- the intrinsics kernel ~0.5 ms, so target_clones is not used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(DDPM_NO_AVX2)
#define HAVE_AVX2_PATH 1
#include <immintrin.h>
#endif

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

#define KEY_A 0x9E3779B9u
#define KEY_B 0xBB67AE85u
#define ROUND_A 0xD2511F53u
#define ROUND_B 0xCD9E8D57u

/* float32 constants as hex literals: exactly np.float32(4.6566127342e-10), np.float32(2*pi)
 * and np.float32(1e-7) from noise.py (a decimal literal could round differently). */
#define U_SCALE 0x1.fffffep-32f
#define TWO_PI 0x1.921fb6p+2f
#define U_MIN 0x1.ad7f2ap-24f

/* One Philox4x32-10 evaluation for counter (c0, c1, 0, 0); returns r0, r1. */
INLINE void philox10(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1, uint32_t *r0,
                     uint32_t *r1)
{
    uint32_t c2 = 0, c3 = 0;
    for (int r = 0; r < 10; r++) {
        uint64_t pa = (uint64_t)ROUND_A * c0;
        uint64_t pb = (uint64_t)ROUND_B * c2;
        c0 = (uint32_t)(pb >> 32) ^ c1 ^ k0;
        c1 = (uint32_t)pb;
        c2 = (uint32_t)(pa >> 32) ^ c3 ^ k1;
        c3 = (uint32_t)pa;
        k0 += KEY_A;
        k1 += KEY_B;
    }
    *r0 = c0;
    *r1 = c1;
}

/* Triton's uint_to_uniform_float: fold the sign (~x for x < 0), scale into [0, 1). */
INLINE float to_uniform(uint32_t r)
{
    int32_t x = (int32_t)r;
    x ^= x >> 31;
    return (float)x * U_SCALE;
}

/* Portable loops (gcc auto-vectorizes them with the baseline ISA). Counters lo0 + i never
 * wrap: run() splits the range where the counter's high word changes. */
static void words_portable(uint32_t *r0, uint32_t *r1, uint32_t lo0, uint32_t hi, size_t n,
                           uint32_t k0, uint32_t k1)
{
    for (size_t i = 0; i < n; i++)
        philox10(lo0 + (uint32_t)i, hi, k0, k1, &r0[i], &r1[i]);
}

static void uniform_portable(float *u1, float *u2, uint32_t lo0, uint32_t hi, size_t n,
                             uint32_t k0, uint32_t k1)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t a, b;
        philox10(lo0 + (uint32_t)i, hi, k0, k1, &a, &b);
        float x = to_uniform(a);
        u1[i] = x < U_MIN ? U_MIN : x;
        u2[i] = to_uniform(b) * TWO_PI;
    }
}

#ifdef HAVE_AVX2_PATH
/* AVX2: 8 counters per step, kept as even / odd halves in 64-bit lanes (value in the low
 * 32 bits, the high 32 bits ignored) so each 32x32->64 product is a single vpmuludq and
 * hi / lo are a shift / nothing -- no per-round packing. Rounds 1, 2 and 10 are
 * specialised as in noise.philox_r0_r1 (c2 = c3 = 0 and c1 constant at the start). */
#define AVX2 __attribute__((target("avx2")))

typedef struct {
    __m256i k0[10], k1[10]; /* round keys, broadcast */
    __m256i c0_r2, x2_r2;   /* round-2 constants: c0 of round 2, hi(A*c0) ^ k1 */
    __m256i x3_r3;          /* round-3 constant folded into c2: lo(A*c0_r2) ^ k1 */
} avx2_keys;

AVX2 static void avx2_setup(avx2_keys *K, uint32_t hi, uint32_t k0, uint32_t k1)
{
    uint32_t a[10], b[10];
    for (int r = 0; r < 10; r++) {
        a[r] = k0 + (uint32_t)r * KEY_A;
        b[r] = k1 + (uint32_t)r * KEY_B;
        K->k0[r] = _mm256_set1_epi64x(a[r]);
        K->k1[r] = _mm256_set1_epi64x(b[r]);
    }
    uint32_t c0 = hi ^ a[0]; /* round 1: c0' = hi(B * 0) ^ c1 ^ k0 */
    uint64_t pa = (uint64_t)ROUND_A * c0; /* round 2: c0 is a scalar */
    K->c0_r2 = _mm256_set1_epi64x(c0);
    K->x2_r2 = _mm256_set1_epi64x((uint32_t)(pa >> 32) ^ b[1]);
    K->x3_r3 = _mm256_set1_epi64x((uint32_t)pa ^ b[2]);
}

/* Philox on one half (4 counters in 64-bit lanes); r0, r1 in the low 32 bits of lanes. */
AVX2 INLINE void avx2_half(const avx2_keys *K, __m256i ctr, __m256i *r0, __m256i *r1)
{
    const __m256i A = _mm256_set1_epi64x(ROUND_A), B = _mm256_set1_epi64x(ROUND_B);
    /* Round 1: c0 = scalar, c1 = 0, c2 = hi(A*ctr) ^ k1, c3 = lo(A*ctr). */
    __m256i pa = _mm256_mul_epu32(ctr, A);
    __m256i c2 = _mm256_xor_si256(_mm256_srli_epi64(pa, 32), K->k1[0]);
    __m256i c3 = pa;
    /* Round 2: pa = A * c0 is a scalar; c1 was 0. */
    __m256i pb = _mm256_mul_epu32(c2, B);
    __m256i c0 = _mm256_xor_si256(_mm256_srli_epi64(pb, 32), K->k0[1]);
    __m256i c1 = pb;
    c2 = _mm256_xor_si256(c3, K->x2_r2);
    /* Round 3: c3 is the scalar lo(A * c0_r2), folded into x3_r3. */
    pa = _mm256_mul_epu32(c0, A);
    pb = _mm256_mul_epu32(c2, B);
    c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pb, 32), c1), K->k0[2]);
    c1 = pb;
    c2 = _mm256_xor_si256(_mm256_srli_epi64(pa, 32), K->x3_r3);
    c3 = pa;
    for (int r = 3; r < 9; r++) {
        pa = _mm256_mul_epu32(c0, A);
        pb = _mm256_mul_epu32(c2, B);
        c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pb, 32), c1), K->k0[r]);
        c1 = pb;
        c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa, 32), c3), K->k1[r]);
        c3 = pa;
    }
    pb = _mm256_mul_epu32(c2, B); /* round 10: only r0, r1 */
    *r0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pb, 32), c1), K->k0[9]);
    *r1 = pb;
}

/* 8 consecutive counters lo0 + i .. + 7 -> r0, r1 as 8 uint32 in natural order. */
AVX2 INLINE void avx2_block(const avx2_keys *K, __m256i ctr, __m256i *r0, __m256i *r1)
{
    __m256i e0, e1, o0, o1;
    avx2_half(K, ctr, &e0, &e1);                        /* lanes 0, 2, 4, 6 */
    avx2_half(K, _mm256_srli_epi64(ctr, 32), &o0, &o1); /* lanes 1, 3, 5, 7 */
    *r0 = _mm256_blend_epi32(e0, _mm256_slli_epi64(o0, 32), 0xAA);
    *r1 = _mm256_blend_epi32(e1, _mm256_slli_epi64(o1, 32), 0xAA);
}

AVX2 INLINE __m256 avx2_uniform(__m256i r)
{
    __m256i x = _mm256_xor_si256(r, _mm256_srai_epi32(r, 31));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(x), _mm256_set1_ps(U_SCALE));
}

/* Both kernels return how many leading items they did (a multiple of 8). */
AVX2 static size_t words_avx2(uint32_t *r0, uint32_t *r1, uint32_t lo0, uint32_t hi,
                              size_t n, uint32_t k0, uint32_t k1)
{
    avx2_keys K;
    avx2_setup(&K, hi, k0, k1);
    __m256i ctr = _mm256_add_epi32(_mm256_set1_epi32((int)lo0),
                                   _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i eight = _mm256_set1_epi32(8);
    size_t i = 0;
    for (; i + 8 <= n; i += 8, ctr = _mm256_add_epi32(ctr, eight)) {
        __m256i a, b;
        avx2_block(&K, ctr, &a, &b);
        _mm256_storeu_si256((__m256i *)(r0 + i), a);
        _mm256_storeu_si256((__m256i *)(r1 + i), b);
    }
    return i;
}

AVX2 static size_t uniform_avx2(float *u1, float *u2, uint32_t lo0, uint32_t hi, size_t n,
                                uint32_t k0, uint32_t k1)
{
    avx2_keys K;
    avx2_setup(&K, hi, k0, k1);
    __m256i ctr = _mm256_add_epi32(_mm256_set1_epi32((int)lo0),
                                   _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i eight = _mm256_set1_epi32(8);
    const __m256 umin = _mm256_set1_ps(U_MIN), two_pi = _mm256_set1_ps(TWO_PI);
    size_t i = 0;
    for (; i + 8 <= n; i += 8, ctr = _mm256_add_epi32(ctr, eight)) {
        __m256i a, b;
        avx2_block(&K, ctr, &a, &b);
        _mm256_storeu_ps(u1 + i, _mm256_max_ps(avx2_uniform(a), umin));
        _mm256_storeu_ps(u2 + i, _mm256_mul_ps(avx2_uniform(b), two_pi));
    }
    return i;
}

static int avx2_state = -1; /* -1: not probed yet, 0: off, 1: on */

static int cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
}

static int use_avx2(void)
{
    if (avx2_state < 0)
        avx2_state = cpu_has_avx2();
    return avx2_state;
}
#endif /* HAVE_AVX2_PATH */

/* Kernel interface used by run(): fill items [0, n) for counters (lo0 + i, hi). */
static void words_kernel(void *a, void *b, uint32_t lo0, uint32_t hi, size_t n, uint32_t k0,
                         uint32_t k1)
{
    size_t done = 0;
#ifdef HAVE_AVX2_PATH
    if (use_avx2())
        done = words_avx2(a, b, lo0, hi, n, k0, k1);
#endif
    words_portable((uint32_t *)a + done, (uint32_t *)b + done, lo0 + (uint32_t)done, hi,
                   n - done, k0, k1);
}

static void uniform_kernel(void *a, void *b, uint32_t lo0, uint32_t hi, size_t n, uint32_t k0,
                           uint32_t k1)
{
    size_t done = 0;
#ifdef HAVE_AVX2_PATH
    if (use_avx2())
        done = uniform_avx2(a, b, lo0, hi, n, k0, k1);
#endif
    uniform_portable((float *)a + done, (float *)b + done, lo0 + (uint32_t)done, hi,
                     n - done, k0, k1);
}

typedef void (*kernel_fn)(void *, void *, uint32_t, uint32_t, size_t, uint32_t, uint32_t);

static int get_u32(PyObject *obj, const char *name, uint64_t max, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_ValueError, "%s must be an integer in 0..%llu", name,
                     (unsigned long long)max);
        return -1;
    }
    if (v > max) {
        PyErr_Format(PyExc_ValueError, "%s must be in 0..%llu, got %llu", name,
                     (unsigned long long)max, v);
        return -1;
    }
    *out = v;
    return 0;
}

static int get_out(PyObject *obj, Py_buffer *view, Py_ssize_t n, const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len / 4 < n || ((uintptr_t)view->buf & 3u) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a 4-byte-aligned writable buffer of at least %zd 4-byte items",
                     name, n);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *run(PyObject *args, kernel_fn kernel, const char *fname)
{
    PyObject *o0, *o1, *octr, *ok0, *ok1;
    Py_ssize_t n;
    uint64_t counter, k0, k1;
    if (!PyArg_ParseTuple(args, "OOOnOO", &o0, &o1, &octr, &n, &ok0, &ok1))
        return NULL;
    if (n < 0)
        return PyErr_Format(PyExc_ValueError, "%s: n must be >= 0, got %zd", fname, n);
    if (get_u32(octr, "counter_start", UINT64_MAX, &counter) < 0 ||
        get_u32(ok0, "k0", UINT32_MAX, &k0) < 0 || get_u32(ok1, "k1", UINT32_MAX, &k1) < 0)
        return NULL;
    if ((uint64_t)n > UINT64_MAX - counter)
        return PyErr_Format(PyExc_ValueError, "%s: counter_start + n exceeds 2**64", fname);

    Py_buffer b0, b1;
    if (get_out(o0, &b0, n, "out0") < 0)
        return NULL;
    if (get_out(o1, &b1, n, "out1") < 0) {
        PyBuffer_Release(&b0);
        return NULL;
    }
    char *p0 = b0.buf, *p1 = b1.buf;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t done = 0;
    while (done < n) {
        /* Split where the counter's high word changes, as noise.randn does. */
        uint64_t ctr = counter + (uint64_t)done;
        uint64_t room = ((uint64_t)UINT32_MAX + 1u) - (ctr & UINT32_MAX);
        Py_ssize_t m = (uint64_t)(n - done) < room ? n - done : (Py_ssize_t)room;
        kernel(p0 + 4 * done, p1 + 4 * done, (uint32_t)ctr, (uint32_t)(ctr >> 32), (size_t)m,
               (uint32_t)k0, (uint32_t)k1);
        done += m;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b0);
    PyBuffer_Release(&b1);
    Py_RETURN_NONE;
}

static PyObject *py_philox(PyObject *self, PyObject *args)
{
    (void)self;
    return run(args, words_kernel, "philox");
}

static PyObject *py_uniform_pair(PyObject *self, PyObject *args)
{
    (void)self;
    return run(args, uniform_kernel, "uniform_pair");
}

static PyObject *py_simd(PyObject *self, PyObject *args)
{
    (void)self;
    int enable = -1;
    if (!PyArg_ParseTuple(args, "|p", &enable))
        return NULL;
#ifdef HAVE_AVX2_PATH
    if (enable >= 0)
        avx2_state = enable ? cpu_has_avx2() : 0;
    return PyUnicode_FromString(use_avx2() ? "avx2" : "none");
#else
    return PyUnicode_FromString("none");
#endif
}

static PyMethodDef methods[] = {
    {"philox", py_philox, METH_VARARGS,
     "philox($module, r0, r1, counter_start, n, k0, k1, /)\n--\n\n"
     "Fill uint32 buffers r0, r1 with Philox4x32-10 words 0 and 1 for counters\n"
     "counter_start + i (i < n) and key (k0, k1)."},
    {"uniform_pair", py_uniform_pair, METH_VARARGS,
     "uniform_pair($module, u1, u2, counter_start, n, k0, k1, /)\n--\n\n"
     "Fill float32 buffers: u1 = max(uniform(r0), 1e-7), u2 = uniform(r1) * float32(2 pi)."},
    {"simd", py_simd, METH_VARARGS,
     "simd($module, enable=None, /)\n--\n\n"
     "Name of the SIMD kernel in use ('avx2' or 'none'); simd(False) forces the portable\n"
     "loop and simd(True) re-enables AVX2 where the CPU has it (for tests and benchmarks)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ddpm._philox",
    .m_doc = "Compiled Philox4x32-10 core for ddpm.noise (optional; numpy fallback).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__philox(void)
{
    return PyModule_Create(&module);
}
