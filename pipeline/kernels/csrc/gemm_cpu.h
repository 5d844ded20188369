// The register-blocked matrix product of the fused MLP (mlp_cpu.cpp, its only includer):
// C (+)= A B with B's rows contiguous and padded to whole vectors of 8 floats, A addressed through
// two strides (so A^T costs nothing), and an epilogue (bias, a per-row term, ReLU) applied while a
// tile is still in registers. Internal linkage, as if it were written in mlp_cpu.cpp.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

typedef float v8 __attribute__((vector_size(32)));
constexpr int kLanes = 8;
constexpr int kTileRows = 6;     // 6 rows x 16 columns = 12 accumulators (+2 B, +1 A): 15 of 16 AVX registers

inline v8 load8(const float* p) {
    v8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }
inline v8 splat(float a) { return v8{a, a, a, a, a, a, a, a}; }
inline v8 fma8(v8 a, v8 b, v8 c) {
#if defined(__FMA__)
    return _mm256_fmadd_ps(a, b, c);
#else
    return a * b + c;
#endif
}
inline int64_t padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// What a layer's last product adds to its tiles while they are in registers: bias[j] (unless null),
// the row term add[index[r] * add_ld + j] (unless null: mlp_cpu.cpp's RowTerm), then with relu max(0, .)
struct Epilogue {
    const float* bias = nullptr;
    bool relu = false;
    const float* add = nullptr;
    const int64_t* index = nullptr;
    int64_t add_ld = 0;
    // the same for the tile that starts at row m and column j
    Epilogue at(int64_t m, int64_t j) const {
        return {bias != nullptr ? bias + j : nullptr, relu, add != nullptr ? add + j : nullptr,
                index != nullptr ? index + m : nullptr, add_ld};
    }
};

// C[R x 8NV] (+)= sum_k A[r * a_row + k * a_k] B[k * ldb + j], then the epilogue
template <int R, int NV>
inline void tile(int K, const float* A, int64_t a_row, int64_t a_k, const float* B, int64_t ldb, float* C,
                 int64_t ldc, bool accumulate, const Epilogue& e) {
    v8 c[R][NV];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) c[r][v] = accumulate ? load8(C + r * ldc + v * kLanes) : v8{};
    for (int k = 0; k < K; ++k) {
        v8 b[NV];
        for (int v = 0; v < NV; ++v) b[v] = load8(B + k * ldb + v * kLanes);
        for (int r = 0; r < R; ++r) {
            const v8 a = splat(A[r * a_row + k * a_k]);
            for (int v = 0; v < NV; ++v) c[r][v] = fma8(a, b[v], c[r][v]);
        }
    }
    if (e.bias != nullptr) {
        for (int v = 0; v < NV; ++v) {
            const v8 b = load8(e.bias + v * kLanes);
            for (int r = 0; r < R; ++r) c[r][v] += b;
        }
    }
    if (e.add != nullptr) {
        for (int r = 0; r < R; ++r) {
            const float* row = e.add + e.index[r] * e.add_ld;
            for (int v = 0; v < NV; ++v) c[r][v] += load8(row + v * kLanes);
        }
    }
    if (e.relu) {
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) c[r][v] = c[r][v] > v8{} ? c[r][v] : v8{};
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) store8(C + r * ldc + v * kLanes, c[r][v]);
}

template <int NV>
inline void tile_rows(int rows, int K, const float* A, int64_t a_row, int64_t a_k, const float* B, int64_t ldb,
                      float* C, int64_t ldc, bool accumulate, const Epilogue& e) {
    switch (rows) {
        case 6: tile<6, NV>(K, A, a_row, a_k, B, ldb, C, ldc, accumulate, e); break;
        case 5: tile<5, NV>(K, A, a_row, a_k, B, ldb, C, ldc, accumulate, e); break;
        case 4: tile<4, NV>(K, A, a_row, a_k, B, ldb, C, ldc, accumulate, e); break;
        case 3: tile<3, NV>(K, A, a_row, a_k, B, ldb, C, ldc, accumulate, e); break;
        case 2: tile<2, NV>(K, A, a_row, a_k, B, ldb, C, ldc, accumulate, e); break;
        default: tile<1, NV>(K, A, a_row, a_k, B, ldb, C, ldc, accumulate, e); break;
    }
}

// C[M x cols] (+)= A[M x K] B[K x cols]; cols, ldb and ldc are whole vectors (multiples of 8).
// A is addressed A[m * a_row + k * a_k], so A^T is the same matrix with the strides swapped.
// The epilogue's bias (cols,) and row term: see Epilogue.
void gemm(int M, int cols, int K, const float* A, int64_t a_row, int64_t a_k, const float* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate, const Epilogue& epilogue = Epilogue{}) {
    for (int j = 0; j < cols; j += 2 * kLanes) {  // a 16-column panel of B (K x 16) stays in L1
        const bool wide = cols - j >= 2 * kLanes;
        for (int m = 0; m < M; m += kTileRows) {
            const int rows = std::min(kTileRows, M - m);
            const float* a = A + m * a_row;
            float* c = C + m * ldc + j;
            const Epilogue e = epilogue.at(m, j);
            if (wide)
                tile_rows<2>(rows, K, a, a_row, a_k, B + j, ldb, c, ldc, accumulate, e);
            else
                tile_rows<1>(rows, K, a, a_row, a_k, B + j, ldb, c, ldc, accumulate, e);
        }
    }
}

}  // namespace
