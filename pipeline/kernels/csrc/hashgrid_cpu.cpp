// Multiresolution hash grid on the CPU: forward, table gradient and input gradient in plain C++
// (no torch headers, so it compiles in seconds; built and loaded by cpu_kernels.py, called from hashgrid_cpu.py).
//
// Same layout, hash and arithmetic as the PyTorch reference (pipeline/kernels/hashgrid_torch.py): one flat
// table (rows, F) with per-level offsets; coarse "dense" levels index row = x + s*y + s^2*z, finer
// levels hash (x ^ y*2654435761 ^ z*805459861) & mask, in uint32 arithmetic; corner c = 4bx+2by+bz.
// A block of 32 points' corners lives in a small array in L1 (see Block): nothing per corner goes
// to memory, which is what the eager reference spends most of its time on. All three loops go
// level by level, in blocks located one ahead of their use so that their rows are prefetched
// (see kBlock and sweep_level).
//
// Threads: the forward and the input gradient split the points; the table gradient hands out the
// LEVELS (each level owns its rows of the table), so the scatter needs no atomics and its result
// does not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu_parallel.h"

namespace {

constexpr uint32_t kPrimeY = 2654435761u;
constexpr uint32_t kPrimeZ = 805459861u;

struct Levels {
    const double* scale;    // (L,) cells per unit
    const int32_t* stride;  // (L,) vertices per axis
    const int32_t* offset;  // (L,) first row of the level
    int32_t num_dense;      // levels [0, num_dense) are dense
    int32_t levels;
    uint32_t mask;          // table size - 1
};

template <typename T>
inline T clamp01(T v) { return v < T(0) ? T(0) : (v > T(1) ? T(1) : v); }  // NaN stays NaN

// points per thread below which more threads cost more (to start) than they save
constexpr int64_t kMinPointsPerThread = 2048;

// Points go level by level, not point by point over the levels: one level's rows (up to 1 MB) at a
// time stay in the caches, where all 16 levels' (13 MB) did not. Within a level they go in blocks
// of kBlock: the block's cells are located first and their rows prefetched, then used, so the
// block's cache misses overlap instead of each point waiting for its own.
constexpr int kBlock = 32;

// A block's cells, one array per quantity over the block's points (structure of arrays), so that
// locating them is plain arithmetic over arrays that the compiler vectorises: 8 points per AVX2
// instruction instead of one point at a time (locating, not reading the table, is most of the
// forward's work when the rows are in the caches).
template <typename T>
struct Block {
    int64_t point[kBlock];  // the block's point indices
    int count;
    uint32_t row[8][kBlock];  // corner c = 4bx+2by+bz: its row of the table
    T w[3][2][kBlock];        // per axis: weight of the lower and the upper vertex
    T cw[8][kBlock];          // corner weights (wx * wy) * wz: the reference's order of products
};

// the next block of consecutive points from `from` (before `end`); returns where the one after starts
template <typename T>
inline int64_t next_points(Block<T>& block, int64_t from, int64_t end) {
    block.count = static_cast<int>(std::min<int64_t>(kBlock, end - from));
    for (int k = 0; k < block.count; ++k) block.point[k] = from + k;
    return from + block.count;
}

// locate the block's points at one level (same arithmetic as the reference) and prefetch their
// rows of `rows` (the table, or the table gradient when for_write). The loops run over the whole
// block, points past `count` at the origin, so their trip count is fixed.
template <typename T, int F, bool for_write = false>
inline void locate_block(const T* x, const Levels& lv, int level, const T* rows, Block<T>& block) {
    const T s = static_cast<T>(lv.scale[level]);
    T pos[3][kBlock];
    for (int k = 0; k < kBlock; ++k)
        for (int d = 0; d < 3; ++d) pos[d][k] = k < block.count ? x[3 * block.point[k] + d] : T(0);
    int32_t base[3][kBlock];
    for (int d = 0; d < 3; ++d) {
        for (int k = 0; k < kBlock; ++k) {
            const T v = clamp01(pos[d][k]) * s;
            const T fl = std::floor(v);
            const T frac = v - fl;
            base[d][k] = static_cast<int32_t>(fl == fl ? fl : T(0));  // NaN: cell 0 (its features come out NaN)
            block.w[d][0][k] = T(1) - frac;
            block.w[d][1][k] = frac;
        }
    }
    const uint32_t off = static_cast<uint32_t>(lv.offset[level]);
    if (level < lv.num_dense) {
        const int32_t st = lv.stride[level];
        const uint32_t sy = static_cast<uint32_t>(st), sz = sy * sy;
        for (int k = 0; k < kBlock; ++k) {
            uint32_t b[3];
            for (int d = 0; d < 3; ++d)  // never out of bounds
                b[d] = static_cast<uint32_t>(std::min(std::max(base[d][k], 0), st - 2));
            const uint32_t origin = off + b[0] + b[1] * sy + b[2] * sz;
            for (int c = 0; c < 8; ++c)
                block.row[c][k] = origin + ((c >> 2) & 1) + ((c >> 1) & 1) * sy + (c & 1) * sz;
        }
    } else {
        for (int k = 0; k < kBlock; ++k) {
            const uint32_t x0 = static_cast<uint32_t>(base[0][k]);
            const uint32_t y0 = static_cast<uint32_t>(base[1][k]) * kPrimeY, z0 = static_cast<uint32_t>(base[2][k]) * kPrimeZ;
            const uint32_t hx[2] = {x0, x0 + 1u}, hy[2] = {y0, y0 + kPrimeY}, hz[2] = {z0, z0 + kPrimeZ};
            for (int c = 0; c < 8; ++c)
                block.row[c][k] = ((hx[(c >> 2) & 1] ^ hy[(c >> 1) & 1] ^ hz[c & 1]) & lv.mask) + off;
        }
    }
    for (int c = 0; c < 8; ++c)
        for (int k = 0; k < kBlock; ++k)
            block.cw[c][k] = block.w[0][(c >> 2) & 1][k] * block.w[1][(c >> 1) & 1][k] * block.w[2][c & 1][k];
    for (int k = 0; k < block.count; ++k)
        // corners c and c+4 differ in x only, whose prime is 1: x0 ^ h and (x0+1) ^ h share a cache line
        // when x0 is even, and dense rows are neighbours; one prefetch per pair
        for (int c = 0; c < 4; ++c)
            __builtin_prefetch(rows + static_cast<int64_t>(block.row[c][k]) * F, for_write ? 1 : 0);
}

// One level's sweep over points [begin, end): fill(block, from, end) gathers the next block's points
// and returns where the following block starts; use(block) consumes a located block. The next block
// is located and its rows prefetched BEFORE the current one is used, so its cache misses overlap
// with useful work instead of the prefetches arriving just as the rows are needed.
//
// The lambdas handed to sweep_level (and to parallel_for) capture by value ([=]): GCC 12 at -O3
// with AVX-512 can drop the stores to locals that such a lambda captures by reference (the level's
// scale `s` in input_grad_points) before the out-of-line sweep_level call that reads them, which
// made the float input gradient all zeros; values copied into the closure leave no store to drop.
template <typename T, int F, bool for_write, typename Fill, typename Use>
inline void sweep_level(const T* x, const Levels& lv, int level, const T* rows, int64_t begin, int64_t end, Fill fill,
                        Use use) {
    Block<T> blocks[2];
    int64_t next = begin;
    auto load = [&](Block<T>& block) {
        next = fill(block, next, end);
        if (block.count > 0) locate_block<T, F, for_write>(x, lv, level, rows, block);
    };
    int cur = 0;
    load(blocks[cur]);
    while (blocks[cur].count > 0 || next < end) {
        load(blocks[cur ^ 1]);
        use(blocks[cur]);
        cur ^= 1;
    }
}

template <typename T, int F>
void forward_points(const T* x, const T* table, T* out, int64_t begin, int64_t end, const Levels& lv) {
    const int L = lv.levels;
    for (int l = 0; l < L; ++l) {
        sweep_level<T, F, false>(x, lv, l, table, begin, end, next_points<T>, [=](const Block<T>& block) {
            for (int k = 0; k < block.count; ++k) {
                T acc[F];
                for (int f = 0; f < F; ++f) acc[f] = T(0);
                for (int c = 0; c < 8; ++c) {
                    const T w = block.cw[c][k];
                    const T* r = table + static_cast<int64_t>(block.row[c][k]) * F;
                    for (int f = 0; f < F; ++f) acc[f] += w * r[f];
                }
                T* o = out + block.point[k] * L * F + l * F;
                for (int f = 0; f < F; ++f) o[f] = acc[f];
            }
        });
    }
}

template <typename T, int F>
void table_grad_level(const T* x, const T* grad_out, T* grad_table, int64_t n, int64_t rows, int l,
                      const Levels& lv) {
    const int L = lv.levels;
    // the level's rows are zeroed here, by the thread that owns them, just before they are summed
    const int64_t first_row = lv.offset[l], end_row = l + 1 < L ? lv.offset[l + 1] : rows;
    std::fill(grad_table + first_row * F, grad_table + end_row * F, T(0));
    auto points_with_gradient = [=](Block<T>& block, int64_t from, int64_t end) {
        const int64_t to = std::min<int64_t>(end, from + kBlock);
        block.count = 0;
        for (int64_t i = from; i < to; ++i) {
            const T* g = grad_out + i * L * F + l * F;
            // this level's features of a point lie 4 * L * F bytes apart, a cache line each: fetch
            // them a block ahead, as the table rows are
            if (i + kBlock < end) __builtin_prefetch(g + kBlock * L * F);
            bool any = false;
            for (int f = 0; f < F; ++f) any |= g[f] != T(0);
            if (any) block.point[block.count++] = i;  // others, e.g. samples the loss does not see, add nothing
        }
        return to;
    };
    sweep_level<T, F, true>(x, lv, l, grad_table, 0, n, points_with_gradient, [=](const Block<T>& block) {
        for (int k = 0; k < block.count; ++k) {
            const T* g = grad_out + block.point[k] * L * F + l * F;
            for (int c = 0; c < 8; ++c) {
                const T w = block.cw[c][k];
                T* r = grad_table + static_cast<int64_t>(block.row[c][k]) * F;
                for (int f = 0; f < F; ++f) r[f] += w * g[f];
            }
        }
    });
}

template <typename T, int F>
void input_grad_points(const T* x, const T* table, const T* grad_out, T* grad_x, int64_t begin, int64_t end,
                       const Levels& lv) {
    // level by level in blocks, like the forward; grad_x sums the levels in the same order as a per-point loop
    const int L = lv.levels;
    for (int64_t i = 3 * begin; i < 3 * end; ++i) grad_x[i] = T(0);
    for (int l = 0; l < L; ++l) {
        const T s = static_cast<T>(lv.scale[l]);
        sweep_level<T, F, false>(x, lv, l, table, begin, end, next_points<T>, [=](const Block<T>& block) {
            for (int k = 0; k < block.count; ++k) {
                const int64_t i = block.point[k];
                const T* g = grad_out + i * L * F + l * F;
                T gpos[3] = {T(0), T(0), T(0)};
                for (int c = 0; c < 8; ++c) {
                    const int b[3] = {(c >> 2) & 1, (c >> 1) & 1, c & 1};
                    const T* r = table + static_cast<int64_t>(block.row[c][k]) * F;
                    T dot = T(0);  // dLoss / dweight_c
                    for (int f = 0; f < F; ++f) dot += r[f] * g[f];
                    for (int d = 0; d < 3; ++d) {
                        const T others = block.w[(d + 1) % 3][b[(d + 1) % 3]][k] * block.w[(d + 2) % 3][b[(d + 2) % 3]][k];
                        gpos[d] += b[d] ? dot * others : -dot * others;
                    }
                }
                for (int d = 0; d < 3; ++d) grad_x[3 * i + d] += gpos[d] * s;
            }
        });
    }
}

template <typename T, int F>
void run_forward(const T* x, const T* table, T* out, int64_t n, const Levels& lv, int threads) {
    threads = static_cast<int>(std::min<int64_t>(threads, 1 + n / kMinPointsPerThread));
    recon::parallel_for(n, threads, [=](int64_t b, int64_t e, int) { forward_points<T, F>(x, table, out, b, e, lv); });
}

template <typename T, int F>
void run_table_grad(const T* x, const T* grad_out, T* grad_table, int64_t n, int64_t rows, const Levels& lv,
                    int threads) {
    threads = static_cast<int>(std::min<int64_t>({threads, lv.levels, 1 + n / kMinPointsPerThread}));
    threads = std::max(1, threads);
    // each level is summed whole by one thread, the finest (most cache misses) first, each thread taking
    // the next level when done: balanced, and the result does not depend on the thread count
    recon::parallel_for_dynamic(lv.levels, threads, [=](int64_t i) {
        table_grad_level<T, F>(x, grad_out, grad_table, n, rows, lv.levels - 1 - static_cast<int>(i), lv);
    });
}

template <typename T, int F>
void run_input_grad(const T* x, const T* table, const T* grad_out, T* grad_x, int64_t n, const Levels& lv,
                    int threads) {
    threads = static_cast<int>(std::min<int64_t>(threads, 1 + n / kMinPointsPerThread));
    recon::parallel_for(n, threads, [=](int64_t b, int64_t e, int) {
        input_grad_points<T, F>(x, table, grad_out, grad_x, b, e, lv);
    });
}

// F is a template parameter (the inner loops unroll); the features-per-level of instant-ngp and our configs
#define DISPATCH_F(F_VALUE, CALL)                \
    switch (F_VALUE) {                           \
        case 1: { constexpr int F = 1; CALL; return 0; } \
        case 2: { constexpr int F = 2; CALL; return 0; } \
        case 4: { constexpr int F = 4; CALL; return 0; } \
        case 8: { constexpr int F = 8; CALL; return 0; } \
        default: return 1;                       \
    }

}  // namespace

extern "C" {

// All arrays contiguous. x (N, 3), table (R, F), out / grad_out (N, L * F), grad_table (R = rows, F)
// written whole (zeroed level by level, then summed), grad_x (N, 3). Returns 0, or 1 for an unsupported F.
int hashgrid_forward_f32(const float* x, const float* table, float* out, int64_t n, int32_t features,
                         const double* scale, const int32_t* stride, const int32_t* offset, int32_t num_dense,
                         int32_t levels, uint32_t mask, int32_t threads) {
    const Levels lv{scale, stride, offset, num_dense, levels, mask};
    DISPATCH_F(features, (run_forward<float, F>(x, table, out, n, lv, threads)))
}

int hashgrid_forward_f64(const double* x, const double* table, double* out, int64_t n, int32_t features,
                         const double* scale, const int32_t* stride, const int32_t* offset, int32_t num_dense,
                         int32_t levels, uint32_t mask, int32_t threads) {
    const Levels lv{scale, stride, offset, num_dense, levels, mask};
    DISPATCH_F(features, (run_forward<double, F>(x, table, out, n, lv, threads)))
}

int hashgrid_table_grad_f32(const float* x, const float* grad_out, float* grad_table, int64_t rows, int64_t n,
                            int32_t features, const double* scale, const int32_t* stride, const int32_t* offset, int32_t num_dense,
                            int32_t levels, uint32_t mask, int32_t threads) {
    const Levels lv{scale, stride, offset, num_dense, levels, mask};
    DISPATCH_F(features, (run_table_grad<float, F>(x, grad_out, grad_table, n, rows, lv, threads)))
}

int hashgrid_table_grad_f64(const double* x, const double* grad_out, double* grad_table, int64_t rows,
                            int64_t n, int32_t features, const double* scale, const int32_t* stride, const int32_t* offset,
                            int32_t num_dense, int32_t levels, uint32_t mask, int32_t threads) {
    const Levels lv{scale, stride, offset, num_dense, levels, mask};
    DISPATCH_F(features, (run_table_grad<double, F>(x, grad_out, grad_table, n, rows, lv, threads)))
}

int hashgrid_input_grad_f32(const float* x, const float* table, const float* grad_out, float* grad_x, int64_t n,
                            int32_t features, const double* scale, const int32_t* stride, const int32_t* offset,
                            int32_t num_dense, int32_t levels, uint32_t mask, int32_t threads) {
    const Levels lv{scale, stride, offset, num_dense, levels, mask};
    DISPATCH_F(features, (run_input_grad<float, F>(x, table, grad_out, grad_x, n, lv, threads)))
}

int hashgrid_input_grad_f64(const double* x, const double* table, const double* grad_out, double* grad_x,
                            int64_t n, int32_t features, const double* scale, const int32_t* stride,
                            const int32_t* offset, int32_t num_dense, int32_t levels, uint32_t mask,
                            int32_t threads) {
    const Levels lv{scale, stride, offset, num_dense, levels, mask};
    DISPATCH_F(features, (run_input_grad<double, F>(x, table, grad_out, grad_x, n, lv, threads)))
}

}  // extern "C"
