// Real spherical harmonics of unit directions (degree 1-4) on the CPU: the same formulas and
// constants as SphericalHarmonics in pipeline/models/components/encodings.py, one pass over the
// points instead of ~45 tensor ops and a stack. Built and loaded by cpu_kernels.py, called from
// sh_cpu.py.
#include <cstdint>

#include "cpu_parallel.h"

namespace {

constexpr double kC0 = 0.28209479177387814;
constexpr double kC1 = 0.4886025119029199;
constexpr double kC2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
                           0.5462742152960396};
constexpr double kC3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
                           -0.4570457994644658, 1.445305721320277, -0.5900435899266435};

void encode(const float* dirs, float* out, int degree, int64_t begin, int64_t end) {
    const int width = degree * degree;
    for (int64_t i = begin; i < end; ++i) {
        const float x = dirs[3 * i], y = dirs[3 * i + 1], z = dirs[3 * i + 2];
        float* o = out + i * width;
        o[0] = static_cast<float>(kC0);
        if (degree > 1) {
            const float c1 = static_cast<float>(kC1);
            o[1] = -c1 * y;
            o[2] = c1 * z;
            o[3] = -c1 * x;
        }
        if (degree > 2) {
            const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
            o[4] = static_cast<float>(kC2[0]) * xy;
            o[5] = static_cast<float>(kC2[1]) * yz;
            o[6] = static_cast<float>(kC2[2]) * (2.0f * zz - xx - yy);
            o[7] = static_cast<float>(kC2[3]) * xz;
            o[8] = static_cast<float>(kC2[4]) * (xx - yy);
            if (degree > 3) {
                o[9] = static_cast<float>(kC3[0]) * y * (3.0f * xx - yy);
                o[10] = static_cast<float>(kC3[1]) * xy * z;
                o[11] = static_cast<float>(kC3[2]) * y * (4.0f * zz - xx - yy);
                o[12] = static_cast<float>(kC3[3]) * z * (2.0f * zz - 3.0f * xx - 3.0f * yy);
                o[13] = static_cast<float>(kC3[4]) * x * (4.0f * zz - xx - yy);
                o[14] = static_cast<float>(kC3[5]) * z * (xx - yy);
                o[15] = static_cast<float>(kC3[6]) * x * (xx - 3.0f * yy);
            }
        }
    }
}

}  // namespace

extern "C" {

// dirs (n, 3) -> out (n, degree^2); returns 1 for a degree outside 1-4
int sh_encode_f32(const float* dirs, int64_t n, int32_t degree, float* out, int32_t threads) {
    if (degree < 1 || degree > 4) return 1;
    recon::parallel_for(n, n < 8192 ? 1 : threads, [&](int64_t b, int64_t e, int) { encode(dirs, out, degree, b, e); });
    return 0;
}

}  // extern "C"
