// parallel_for for the CPU kernels (hashgrid_cpu.cpp, occupancy_cpu.cpp, mlp_cpu.cpp, sh_cpu.cpp).
//
// Built with OpenMP (cpu_kernels.py tries -fopenmp first) the work runs on the process's OpenMP
// threads, which are torch's own: torch links libgomp.so.1 and so do we, and the loader keeps one.
// That matters on a 2-core machine: after each parallel torch op its idle worker spins on the
// second core for milliseconds, so a thread of our own started then waits for it. Without OpenMP
// it falls back to std::thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace recon {

// fn(begin, end, part) over `parts` contiguous ranges of [0, count)
template <typename Fn>
void parallel_for(int64_t count, int parts, Fn fn) {
    parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(parts, count)));
    if (parts == 1) {
        fn(0, count, 0);
        return;
    }
    const int64_t chunk = (count + parts - 1) / parts;
#ifdef _OPENMP
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int t = 0; t < parts; ++t) {
        const int64_t begin = std::min(count, t * chunk), end = std::min(count, begin + chunk);
        fn(begin, end, t);
    }
#else
    std::vector<std::thread> pool;
    pool.reserve(parts - 1);
    for (int t = 1; t < parts; ++t) {
        const int64_t begin = std::min(count, t * chunk), end = std::min(count, begin + chunk);
        pool.emplace_back(fn, begin, end, t);
    }
    fn(0, std::min(count, chunk), 0);
    for (auto& th : pool) th.join();
#endif
}

// fn(i) for each i in [0, count), handed out one at a time to `parts` threads, in order: for a few
// items of unequal cost
template <typename Fn>
void parallel_for_dynamic(int64_t count, int parts, Fn fn) {
    parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(parts, count)));
    if (parts == 1) {
        for (int64_t i = 0; i < count; ++i) fn(i);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(parts) schedule(dynamic, 1)
    for (int64_t i = 0; i < count; ++i) fn(i);
#else
    std::atomic<int64_t> next{0};
    auto work = [&]() {
        for (int64_t i = next++; i < count; i = next++) fn(i);
    };
    std::vector<std::thread> pool;
    pool.reserve(parts - 1);
    for (int t = 1; t < parts; ++t) pool.emplace_back(work);
    work();
    for (auto& th : pool) th.join();
#endif
}

}  // namespace recon
