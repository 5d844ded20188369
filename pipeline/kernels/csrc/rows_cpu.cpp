// Which rows of a gradient hold anything but zeros: the backward passes of the CPU kernels run
// only those rows when a renderer has zeroed many (samples hidden behind opaque ones). A row's scan
// stops at its first non-zero entry, so a gradient without zero rows costs one read per row.
#include <cstdint>

namespace {

template <typename T>
int64_t live_rows(const T* grad, int64_t n, int64_t cols, int64_t* rows) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
        const T* row = grad + i * cols;
        for (int64_t j = 0; j < cols; ++j) {
            if (row[j] != T(0)) {  // NaN counts as non-zero: it must reach the gradients
                rows[count++] = i;
                break;
            }
        }
    }
    return count;
}

}  // namespace

extern "C" {

// grad (n, cols) contiguous -> writes the indices of its rows with a non-zero entry to rows (n,)
// in increasing order and returns their count.
int64_t live_rows_f32(const float* grad, int64_t n, int64_t cols, int64_t* rows) {
    return live_rows(grad, n, cols, rows);
}

int64_t live_rows_f64(const double* grad, int64_t n, int64_t cols, int64_t* rows) {
    return live_rows(grad, n, cols, rows);
}

}  // extern "C"
