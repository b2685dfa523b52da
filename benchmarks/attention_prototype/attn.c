#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static inline __m256 exp2_ps(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-126.0f));
    __m256 xi = _mm256_floor_ps(x);
    __m256 f = _mm256_sub_ps(x, xi);
    /* 2^f on [0,1): degree-5 polynomial */
    __m256 p = _mm256_set1_ps(1.8775767e-3f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(8.9893397e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5826318e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4015361e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9315308e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.9999994e-1f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(xi), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* q,k,v,out: (B, S, H*D) row-major; S padded internally to a multiple of 8 */
void attn(const float* q, const float* k, const float* v, float* out, int B, int S, int H, int D, float scale) {
    int E = H * D, Sp = (S + 7) & ~7;
    float* kt = aligned_alloc(32, sizeof(float) * D * Sp);
    float* vt = aligned_alloc(32, sizeof(float) * D * Sp);
    float* s = aligned_alloc(32, sizeof(float) * Sp);
    float* vn = aligned_alloc(32, sizeof(float) * 8 * Sp);
    float c = scale * 1.4426950408889634f;
    for (int b = 0; b < B; b++) for (int h = 0; h < H; h++) {
        const float* kb = k + (size_t)b * S * E + h * D;
        const float* vb = v + (size_t)b * S * E + h * D;
        for (int d = 0; d < D; d++) {
            for (int j = 0; j < S; j++) { kt[d * Sp + j] = kb[(size_t)j * E + d]; vt[d * Sp + j] = vb[(size_t)j * E + d]; }
            for (int j = S; j < Sp; j++) { kt[d * Sp + j] = 0.f; vt[d * Sp + j] = 0.f; }
        }
        for (int j = 0; j < S; j++) memcpy(vn + j * 8, vb + (size_t)j * E, 8 * sizeof(float));
        for (int i = 0; i < S; i++) {
            const float* qi = q + ((size_t)b * S + i) * E + h * D;
            __m256 qv[8];
            for (int d = 0; d < 8; d++) qv[d] = _mm256_set1_ps(qi[d] * c);
            __m256 vmax = _mm256_set1_ps(-INFINITY);
            int j = 0;
            for (; j + 32 <= Sp; j += 32) {  /* 4 independent FMA chains */
                __m256 c0 = _mm256_mul_ps(qv[0], _mm256_load_ps(kt + j));
                __m256 c1 = _mm256_mul_ps(qv[0], _mm256_load_ps(kt + j + 8));
                __m256 c2 = _mm256_mul_ps(qv[0], _mm256_load_ps(kt + j + 16));
                __m256 c3 = _mm256_mul_ps(qv[0], _mm256_load_ps(kt + j + 24));
                for (int d = 1; d < 8; d++) {
                    const float* kd = kt + d * Sp + j;
                    c0 = _mm256_fmadd_ps(qv[d], _mm256_load_ps(kd), c0);
                    c1 = _mm256_fmadd_ps(qv[d], _mm256_load_ps(kd + 8), c1);
                    c2 = _mm256_fmadd_ps(qv[d], _mm256_load_ps(kd + 16), c2);
                    c3 = _mm256_fmadd_ps(qv[d], _mm256_load_ps(kd + 24), c3);
                }
                _mm256_store_ps(s + j, c0); _mm256_store_ps(s + j + 8, c1);
                _mm256_store_ps(s + j + 16, c2); _mm256_store_ps(s + j + 24, c3);
            }
            for (; j < Sp; j += 8) {
                __m256 acc = _mm256_mul_ps(qv[0], _mm256_load_ps(kt + j));
                for (int d = 1; d < 8; d++) acc = _mm256_fmadd_ps(qv[d], _mm256_load_ps(kt + d * Sp + j), acc);
                _mm256_store_ps(s + j, acc);
            }
            for (int t = S; t < Sp; t++) s[t] = -INFINITY;
            for (j = 0; j < Sp; j += 8) vmax = _mm256_max_ps(vmax, _mm256_load_ps(s + j));
            float mx[8]; _mm256_storeu_ps(mx, vmax);
            float m = mx[0]; for (int t = 1; t < 8; t++) m = mx[t] > m ? mx[t] : m;
            __m256 vm = _mm256_set1_ps(m), vsum = _mm256_setzero_ps();
            for (int j = 0; j < Sp; j += 8) {
                __m256 p = exp2_ps(_mm256_sub_ps(_mm256_load_ps(s + j), vm));
                _mm256_store_ps(s + j, p);
                vsum = _mm256_add_ps(vsum, p);
            }
            float sm[8]; _mm256_storeu_ps(sm, vsum);
            float l = 0; for (int t = 0; t < 8; t++) l += sm[t];
            float inv = 1.0f / l;
            float* oi = out + ((size_t)b * S + i) * E + h * D;
            /* D == 8: one vector per value row; p[j] broadcast, 4 accumulators for latency */
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            j = 0;
            for (; j + 4 <= S; j += 4) {
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(s + j), _mm256_load_ps(vn + j * 8), a0);
                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(s + j + 1), _mm256_load_ps(vn + (j + 1) * 8), a1);
                a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(s + j + 2), _mm256_load_ps(vn + (j + 2) * 8), a2);
                a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(s + j + 3), _mm256_load_ps(vn + (j + 3) * 8), a3);
            }
            for (; j < S; j++) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(s + j), _mm256_load_ps(vn + j * 8), a0);
            __m256 acc = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            _mm256_storeu_ps(oi, _mm256_mul_ps(acc, _mm256_set1_ps(inv)));
        }
    }
    free(kt); free(vt); free(s); free(vn);
}
