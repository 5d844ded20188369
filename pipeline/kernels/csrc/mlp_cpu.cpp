// Fully fused ReLU MLP on the CPU (tiny-cuda-nn's FullyFusedMLP, for CPU caches): forward and
// backward of x -> [Linear -> ReLU] * (L - 1) -> Linear, in plain C++ (built and loaded by
// cpu_kernels.py, called from mlp_cpu.py). A layer may take the network input again beside the
// hidden activations ([h, x], NeRF's skip connection), and the input may come in parts.
//
// Why: the instant-ngp field's layers are thin (64 wide, outputs of 16 and 3). Run as separate torch
// ops, each layer streams its (N, 64) activations through memory several times (matmul, bias,
// ReLU, ReLU's backward, the bias gradient's sum), and the thin output layers run at a tenth of
// the machine's matmul rate. Here each thread takes blocks of kBlockRows points through every
// layer while they sit in L2; only the hidden activations the backward needs are written out.
//
// Every product is one register-blocked kernel (gemm_cpu.h), C (+)= A B with B's rows contiguous and padded to
// whole vectors (8 floats): the forward multiplies by W^T, the input gradient by W, and the weight
// gradient accumulates A^T dZ into per-chunk sums, added up at the end (the chunks depend only on
// the row and thread counts, so the result is the same from run to run, and to float rounding for
// any thread count).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_parallel.h"
#include "gemm_cpu.h"

namespace {

constexpr int kBlockRows = 192;  // a block of 64-wide activations is 48 KB: it stays in L2
constexpr int64_t kChunkRows = 4 * kBlockRows;  // the forward hands out rows to the threads in chunks of this

// The network input x may come in parts, [x_0, x_1, ...] side by side (the colour MLP's [SH(dir),
// geometry feature]): read where they lie, no concatenated copy, and each part gets an input
// gradient only if it asks for one (the directions' encoding never does).
struct Parts {
    int count;
    const float* const* data;  // (n, width[p]) each
    const int32_t* width;
    std::vector<int> offset;   // first column of each part in x
    float* const* grad;        // (n, width[p]) each, or null pointers: no gradient wanted
    bool any_grad() const {
        for (int p = 0; p < count; ++p)
            if (grad != nullptr && grad[p] != nullptr) return true;
        return false;
    }
};

// A term added to the first layer's output before its ReLU, looked up per row: row i gets
// values[index[i]]. The colour MLP's directions: its first layer's product with the directions'
// encoding, computed once per ray (values (rays, dims[1])) instead of once per sample.
struct RowTerm {
    const float* values = nullptr;   // (rows, width), width = dims[1], a whole number of vectors (forward)
    const int64_t* index = nullptr;  // (n,): each row's row of values
    bool active() const { return values != nullptr; }
};

struct Layer {
    int in, out;    // in: all input columns, [h, x] for a skip layer, x for the first layer
    int main;       // the columns of h (0 for the first layer)
    bool takes_x;   // the first layer, and skip layers
    int64_t in_pad, out_pad;
    int64_t w_ld;             // W's row stride: in_pad + 8, so a part's 8-column panels never run past it
    std::vector<float> wt;    // (in, out_pad): W^T, for the forward
    std::vector<float> w;     // (out, w_ld): W, for the input gradient
    std::vector<float> bias;  // (out_pad,)
};

std::vector<Layer> pack(int num_layers, const int32_t* dims, const int32_t* skips, const float* const* weights,
                        const float* const* biases) {
    std::vector<Layer> layers(num_layers);
    for (int l = 0; l < num_layers; ++l) {
        Layer& L = layers[l];
        L.takes_x = l == 0 || (skips != nullptr && skips[l] != 0);
        L.main = l == 0 ? 0 : dims[l];
        L.in = L.main + (L.takes_x ? dims[0] : 0);
        L.out = dims[l + 1];
        L.in_pad = padded(L.in);
        L.out_pad = padded(L.out);
        L.w_ld = L.in_pad + kLanes;
        L.wt.assign(L.in * L.out_pad, 0.0f);
        L.w.assign(L.out * L.w_ld, 0.0f);
        L.bias.assign(L.out_pad, 0.0f);
        const float* W = weights[l];  // torch's (out, in)
        for (int o = 0; o < L.out; ++o)
            for (int i = 0; i < L.in; ++i) {
                L.wt[i * L.out_pad + o] = W[o * L.in + i];
                L.w[o * L.w_ld + i] = W[o * L.in + i];
            }
        if (biases != nullptr && biases[l] != nullptr) std::copy(biases[l], biases[l] + L.out, L.bias.begin());
    }
    return layers;
}

int64_t widest(const std::vector<Layer>& layers) {
    int64_t w = 0;
    for (const Layer& L : layers) w = std::max({w, L.in_pad, L.out_pad});
    return w;
}

// one layer's product for rows [r0, r0 + m): [h, x parts] W^T + b (+ the row term, when given:
// the first layer), then ReLU unless the last layer
void layer_forward(const Layer& L, const Parts& x, const float* h, int64_t ldh, int64_t r0, int m, float* c,
                   bool relu, const RowTerm& term) {
    const int cols = static_cast<int>(L.out_pad);
    const int segments = (L.main > 0 ? 1 : 0) + (L.takes_x ? x.count : 0);
    int done = 0;
    auto product = [&](const float* a, int64_t lda, int k, int first_row) {  // the last one adds b, ReLU
        Epilogue e;
        if (++done == segments) {
            e.bias = L.bias.data();
            e.relu = relu;
            if (term.active()) {
                e.add = term.values;
                e.index = term.index + r0;
                e.add_ld = L.out_pad;
            }
        }
        gemm(m, cols, k, a, lda, 1, L.wt.data() + first_row * L.out_pad, L.out_pad, c, L.out_pad, done > 1, e);
    };
    if (L.main > 0) product(h, ldh, L.main, 0);
    if (L.takes_x)
        for (int p = 0; p < x.count; ++p) product(x.data[p] + r0 * x.width[p], x.width[p], x.width[p], L.main + x.offset[p]);
}

void forward_rows(const std::vector<Layer>& layers, const Parts& x, const RowTerm& term, float* const* hidden,
                  float* out, int64_t begin, int64_t end) {
    const int64_t width = widest(layers);
    std::vector<float> buffers(2 * kBlockRows * width);
    const int last = static_cast<int>(layers.size()) - 1;
    for (int64_t r0 = begin; r0 < end; r0 += kBlockRows) {
        const int m = static_cast<int>(std::min<int64_t>(kBlockRows, end - r0));
        const float* a = nullptr;  // the previous layer's output block
        int64_t lda = 0;
        for (int l = 0; l <= last; ++l) {
            const Layer& L = layers[l];
            float* keep = l < last ? (hidden != nullptr ? hidden[l] + r0 * L.out : nullptr) : out + r0 * L.out;
            // a layer as wide as whole vectors writes straight into its output; others go through a buffer
            const bool direct = keep != nullptr && L.out == L.out_pad;
            float* c = direct ? keep : buffers.data() + (l % 2) * kBlockRows * width;
            layer_forward(L, x, a, lda, r0, m, c, l < last, l == 0 ? term : RowTerm{});
            if (keep != nullptr && !direct)
                for (int r = 0; r < m; ++r) std::memcpy(keep + r * L.out, c + r * L.out_pad, L.out * sizeof(float));
            a = c;
            lda = L.out_pad;
        }
    }
}

struct Gradients {  // one chunk's sums
    std::vector<std::vector<float>> wt;    // per layer (in, out_pad): dW^T
    std::vector<std::vector<float>> bias;  // per layer (out_pad,)
    std::vector<float> term;               // the row term's rows [term_first, ...) that the chunk's rows use
    int64_t term_first = 0;
};

void backward_rows(const std::vector<Layer>& layers, const Parts& x, const RowTerm& term, const float* const* hidden,
                   const float* grad_out, Gradients& g, int64_t begin, int64_t end) {
    const int64_t width = widest(layers) + kLanes;
    std::vector<float> dz_buffer(kBlockRows * width), din_buffer(kBlockRows * width);
    std::vector<std::vector<float>> gx(x.count);  // per part: the block's input gradient, summed over layers
    for (int p = 0; p < x.count; ++p)
        if (x.grad != nullptr && x.grad[p] != nullptr) gx[p].resize(kBlockRows * x.width[p]);
    const bool x_grad = x.any_grad();
    const int last = static_cast<int>(layers.size()) - 1;
    for (int64_t r0 = begin; r0 < end; r0 += kBlockRows) {
        const int m = static_cast<int>(std::min<int64_t>(kBlockRows, end - r0));
        float* dz = dz_buffer.data();
        float* din = din_buffer.data();
        for (auto& part : gx) std::fill(part.begin(), part.end(), 0.0f);
        int64_t ldz = layers[last].out_pad;
        for (int r = 0; r < m; ++r) {
            std::memcpy(dz + r * ldz, grad_out + (r0 + r) * layers[last].out, layers[last].out * sizeof(float));
            std::fill(dz + r * ldz + layers[last].out, dz + (r + 1) * ldz, 0.0f);
        }
        for (int l = last; l >= 0; --l) {
            const Layer& L = layers[l];
            const int cols = static_cast<int>(L.out_pad);
            const float* h = l > 0 ? hidden[l - 1] + r0 * L.main : nullptr;
            if (l == 0 && !g.term.empty())  // the row term's gradient: dz summed over the rows that share a row of it
                for (int r = 0; r < m; ++r) {
                    float* sum = g.term.data() + (term.index[r0 + r] - g.term_first) * ldz;
                    for (int64_t j = 0; j < ldz; ++j) sum[j] += dz[r * ldz + j];
                }
            // dW^T (in, out_pad) += input^T (in, m) dz (m, out_pad), segment by segment
            if (L.main > 0) gemm(L.main, cols, m, h, 1, L.main, dz, ldz, g.wt[l].data(), L.out_pad, true);
            if (L.takes_x)
                for (int p = 0; p < x.count; ++p)
                    gemm(x.width[p], cols, m, x.data[p] + r0 * x.width[p], 1, x.width[p], dz, ldz,
                         g.wt[l].data() + (L.main + x.offset[p]) * L.out_pad, L.out_pad, true);
            float* db = g.bias[l].data();
            for (int r = 0; r < m; ++r)
                for (int64_t j = 0; j < L.out_pad; ++j) db[j] += dz[r * ldz + j];
            // d input (m, columns) = dz (m, out) W (out, columns): the parts that want it, then h
            if (L.takes_x && x_grad) {
                for (int p = 0; p < x.count; ++p) {
                    if (gx[p].empty()) continue;
                    const int64_t wp = padded(x.width[p]);
                    gemm(m, static_cast<int>(wp), L.out, dz, ldz, 1, L.w.data() + L.main + x.offset[p], L.w_ld, din,
                         wp, false);
                    float* sum = gx[p].data();
                    for (int r = 0; r < m; ++r)
                        for (int j = 0; j < x.width[p]; ++j) sum[r * x.width[p] + j] += din[r * wp + j];
                }
            }
            if (l == 0) break;
            const int64_t ldh = padded(L.main);
            gemm(m, static_cast<int>(ldh), L.out, dz, ldz, 1, L.w.data(), L.w_ld, din, ldh, false);
            for (int r = 0; r < m; ++r) {  // through the ReLU of the layer below: its output > 0
                float* row = din + r * ldh;
                const float* hr = h + r * L.main;
                for (int j = 0; j < L.main; ++j) row[j] = hr[j] > 0.0f ? row[j] : 0.0f;
            }
            std::swap(dz, din);
            ldz = ldh;
        }
        for (int p = 0; p < x.count; ++p)
            if (!gx[p].empty())
                std::memcpy(x.grad[p] + r0 * x.width[p], gx[p].data(), static_cast<size_t>(m) * x.width[p] * sizeof(float));
    }
}

Parts make_parts(int32_t count, const float* const* data, const int32_t* width, float* const* grad) {
    Parts x{count, data, width, std::vector<int>(count), grad};
    for (int p = 1; p < count; ++p) x.offset[p] = x.offset[p - 1] + width[p - 1];
    return x;
}

}  // namespace

extern "C" {

// The network input x (n, dims[0]) comes as num_parts parts side by side: parts[p] (n, part_width[p]),
// widths summing to dims[0]. -> out (n, dims[L]); weights[l] (dims[l+1], in_l) and biases[l]
// (dims[l+1],) as torch.nn.Linear keeps them, where in_l = dims[l] (dims[0] for l = 0), plus dims[0]
// when skips[l] (the layer takes [h, x]; skips may be null). hidden: L - 1 buffers (n, dims[l+1])
// that receive the hidden activations (after ReLU) for the backward, or null. term_values
// (rows, dims[1]) and term_index (n,), or nulls: the first layer's output of row i gets
// term_values[term_index[i]] added before its ReLU (RowTerm); dims[1] must then be a multiple of 8.
// Returns 0, 1 for bad layer or part counts, 2 for a row term of another width.
int mlp_forward_f32(const float* const* parts, const int32_t* part_width, int32_t num_parts, int64_t n,
                    int32_t num_layers, const int32_t* dims, const int32_t* skips, const float* const* weights,
                    const float* const* biases, float* const* hidden, float* out, int32_t threads,
                    const float* term_values, const int64_t* term_index) {
    if (num_layers < 1 || num_parts < 1) return 1;
    if (term_values != nullptr && dims[1] % kLanes != 0) return 2;
    const Parts x = make_parts(num_parts, parts, part_width, nullptr);
    const RowTerm term{term_values, term_index};
    const std::vector<Layer> layers = pack(num_layers, dims, skips, weights, biases);
    const int64_t chunks = (n + kChunkRows - 1) / kChunkRows;
    recon::parallel_for_dynamic(chunks, threads, [&](int64_t c) {
        forward_rows(layers, x, term, hidden, out, c * kChunkRows, std::min(n, (c + 1) * kChunkRows));
    });
    return 0;
}

// The gradients of mlp_forward_f32 from grad_out (n, dims[L]) and its saved hidden activations:
// grad_weights[l] and grad_biases[l] (overwritten), and grad_parts[p] (n, part_width[p]) for each
// part whose pointer is not null (grad_parts itself may be null: no input gradient); with a row
// term (term_index (n,), term_rows), grad_term (term_rows, dims[1]) receives its gradient (overwritten).
int mlp_backward_f32(const float* const* parts, const int32_t* part_width, int32_t num_parts, int64_t n,
                     int32_t num_layers, const int32_t* dims, const int32_t* skips, const float* const* weights,
                     const float* const* hidden, const float* grad_out, float* const* grad_parts,
                     float* const* grad_weights, float* const* grad_biases, int32_t threads,
                     const int64_t* term_index, int64_t term_rows, float* grad_term) {
    if (num_layers < 1 || num_parts < 1) return 1;
    if (grad_term != nullptr && dims[1] % kLanes != 0) return 2;
    const Parts x = make_parts(num_parts, parts, part_width, grad_parts);
    const RowTerm term{nullptr, term_index};
    const std::vector<Layer> layers = pack(num_layers, dims, skips, weights, nullptr);
    const int64_t blocks = (n + kBlockRows - 1) / kBlockRows;
    const int threads_used = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, blocks)));
    // the rows go in chunks handed out to the threads one at a time (a thread whose core the machine
    // slows takes fewer), each chunk summing its own weight gradient: a fixed split for a given row and
    // thread count, so the sums are the same from run to run. Four chunks per thread, as far as their
    // sums stay small (the 8x256 NeRF MLP's take 2.4 MB each)
    int64_t sum_floats = 0;
    for (const Layer& L : layers) sum_floats += (L.in + 1) * L.out_pad;
    const int64_t affordable = std::max<int64_t>(1, (int64_t{1} << 20) / sum_floats);  // 4 MB of sums
    const int64_t chunks = threads_used == 1 ? 1 : std::min<int64_t>(blocks, std::max<int64_t>(threads_used,
                                                                      std::min<int64_t>(4 * threads_used, affordable)));
    const int64_t blocks_per_chunk = (blocks + chunks - 1) / chunks;
    std::vector<Gradients> sums(chunks);
    recon::parallel_for_dynamic(chunks, threads_used, [&](int64_t c) {
        Gradients& g = sums[c];
        for (const Layer& L : layers) {
            g.wt.emplace_back(L.in * L.out_pad, 0.0f);
            g.bias.emplace_back(L.out_pad, 0.0f);
        }
        const int64_t begin = std::min(n, c * blocks_per_chunk * kBlockRows);
        const int64_t end = std::min(n, (c + 1) * blocks_per_chunk * kBlockRows);
        if (grad_term != nullptr && end > begin) {  // the rows of the term these rows use: one ray range when sorted
            const auto [lo, hi] = std::minmax_element(term_index + begin, term_index + end);
            g.term_first = *lo;
            g.term.assign((*hi - *lo + 1) * dims[1], 0.0f);
        }
        backward_rows(layers, x, term, hidden, grad_out, g, begin, end);
    });
    if (grad_term != nullptr) {  // the chunks' sums, in chunk order
        std::fill(grad_term, grad_term + term_rows * dims[1], 0.0f);
        for (const Gradients& g : sums)
            for (size_t i = 0; i < g.term.size(); ++i) grad_term[g.term_first * dims[1] + i] += g.term[i];
    }
    for (int l = 0; l < num_layers; ++l) {
        const Layer& L = layers[l];
        for (int o = 0; o < L.out; ++o) {
            for (int i = 0; i < L.in; ++i) {
                float s = 0.0f;
                for (const Gradients& g : sums) s += g.wt[l][i * L.out_pad + o];
                grad_weights[l][o * L.in + i] = s;
            }
            float s = 0.0f;
            for (const Gradients& g : sums) s += g.bias[l][o];
            grad_biases[l][o] = s;
        }
    }
    return 0;
}

}  // extern "C"
