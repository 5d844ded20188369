// Ray marching through the occupancy grid on the CPU (pipeline/models/components/occupancy.py:
// march_rays, through pipeline/kernels/occupancy_cpu.py).
//
// The PyTorch marcher builds (rays, width) tensors of every candidate step, its point and its cell,
// then drops the empty ones; this loop visits the same candidates in the same order and writes
// only the kept samples. The caller computes each ray's first schedule step and step count and
// draws the jitter (rays, width) exactly as the PyTorch version does, so both consume the same
// random numbers and keep the same samples (up to float rounding at cell borders).
//
// Threads take contiguous runs of rays; each writes from the first slot its rays could fill, and
// the runs are then moved together, so the samples come out in ray order whatever the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_parallel.h"

namespace {

// candidates per thread below which a second thread costs more (to start) than it saves
constexpr int64_t kMinCandidatesPerThread = 50000;

int64_t march_range(const float* rays_o, const float* rays_d, const float* far, const int64_t* first,
                    const int64_t* count, const float* jitter, int64_t begin, int64_t end, int64_t width,
                    const float* schedule, int64_t schedule_len, const uint8_t* occupied, int32_t resolution,
                    int32_t cascades, const float* center, const float* half, int64_t* ray_index, float* t_out,
                    float* delta_out) {
    const int64_t R = resolution;
    const int64_t last_step = schedule_len - 2;  // steps[k] = schedule[k + 1] - schedule[k], k <= K - 2
    int64_t written = 0;
    for (int64_t i = begin; i < end; ++i) {
        const float* o = rays_o + 3 * i;
        const float* d = rays_d + 3 * i;
        for (int64_t j = 0; j < count[i]; ++j) {
            const int64_t k = std::min(first[i] + j, last_step);
            const float delta = schedule[k + 1] - schedule[k];
            const float u = jitter ? jitter[i * width + j] : 0.5f;
            const float t = schedule[k] + u * delta;
            if (!(t < far[i])) continue;
            float rel[3];
            float extent = 0.0f;
            for (int a = 0; a < 3; ++a) {
                const float p = o[a] + d[a] * t;
                rel[a] = (p - center[a]) / half[a];
                extent = std::max(extent, std::fabs(rel[a]));
            }
            int64_t cascade = 0;
            if (cascades > 1) {
                const float level = std::ceil(std::log2(std::max(extent, 1e-6f)));
                cascade = static_cast<int64_t>(std::min(std::max(level, 0.0f), static_cast<float>(cascades - 1)));
            }
            const float scale = std::exp2(static_cast<float>(cascade));
            if (!(extent <= scale)) continue;  // outside the outermost cascade (or NaN)
            int64_t cell[3];
            for (int a = 0; a < 3; ++a) {
                const int64_t c = static_cast<int64_t>((rel[a] / scale + 1.0f) * 0.5f * static_cast<float>(R));
                cell[a] = std::min(std::max(c, int64_t(0)), R - 1);
            }
            const int64_t flat = cascade * R * R * R + (cell[0] * R + cell[1]) * R + cell[2];
            if (!occupied[flat]) continue;
            ray_index[written] = i;
            t_out[written] = t;
            delta_out[written] = delta;
            ++written;
        }
    }
    return written;
}

}  // namespace

extern "C" {

// rays_o, rays_d (N, 3); far (N,); first, count (N,) int64; jitter (N, width) or null (then 0.5);
// schedule (K,), occupied (C * R^3) uint8; center, half (3,): the base box. Outputs, each with room
// for sum(count) entries: ray_index int64, t, delta. Returns the number of samples written.
int64_t march_occupied_f32(const float* rays_o, const float* rays_d, const float* far, const int64_t* first,
                           const int64_t* count, const float* jitter, int64_t n, int64_t width,
                           const float* schedule, int64_t schedule_len, const uint8_t* occupied, int32_t resolution,
                           int32_t cascades, const float* center, const float* half, int64_t* ray_index,
                           float* t_out, float* delta_out, int32_t threads) {
    int64_t candidates = 0;
    for (int64_t i = 0; i < n; ++i) candidates += count[i];
    threads = static_cast<int32_t>(std::max<int64_t>(1, std::min<int64_t>({threads, n, 1 + candidates / kMinCandidatesPerThread})));
    // runs of rays with about equal candidates; run t writes from slot[t] (the candidates before it)
    std::vector<int64_t> bounds{0}, slot{0};
    int64_t seen = 0;
    for (int64_t i = 0; i < n && static_cast<int32_t>(bounds.size()) < threads; ++i) {
        seen += count[i];
        if (seen * threads >= candidates * static_cast<int64_t>(bounds.size())) {
            bounds.push_back(i + 1);
            slot.push_back(seen);
        }
    }
    bounds.push_back(n);
    const int runs = static_cast<int>(bounds.size()) - 1;
    std::vector<int64_t> written(runs, 0);
    recon::parallel_for(runs, runs, [&](int64_t r, int64_t, int) {
        written[r] = march_range(rays_o, rays_d, far, first, count, jitter, bounds[r], bounds[r + 1], width,
                                 schedule, schedule_len, occupied, resolution, cascades, center, half,
                                 ray_index + slot[r], t_out + slot[r], delta_out + slot[r]);
    });
    int64_t total = written[0];
    for (int r = 1; r < runs; ++r) {  // close the gaps: run r follows run r - 1
        std::memmove(ray_index + total, ray_index + slot[r], written[r] * sizeof(int64_t));
        std::memmove(t_out + total, t_out + slot[r], written[r] * sizeof(float));
        std::memmove(delta_out + total, delta_out + slot[r], written[r] * sizeof(float));
        total += written[r];
    }
    return total;
}

}  // extern "C"
