// Multiresolution grid lookup on the CPU: forward and backward-to-table in one pass each.
//
// Semantics are those of fieldstudio.encoders.grid (tcnn's GridEncoding): position
// p = x * scale_l + 0.5, corner floor(p), coherent prime hash (uint32 XOR of i_k * pi_k, masked to
// the power-of-two table) on hashed levels, a row-major dense index modulo the table size
// otherwise. The PyTorch twin in encoders/grid.py is the oracle the tests hold this against.
//
// Why it is fast: the PyTorch path materialises [N, 2^d] index and weight tensors per level and
// scatters gradients with index_add_; here each point's corners live in registers. The forward
// splits points across threads; the backward splits *levels* across threads, so every thread
// accumulates into its own disjoint slice of the table and no atomics are needed.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr uint32_t kPrimes[7] = {1u, 2654435761u, 805459861u, 3674653429u, 2097192037u, 1434869437u, 2165219737u};

enum Interp { kNearest = 0, kLinear = 1, kSmoothstep = 2 };

struct LevelInfo {
  float scale;
  int64_t resolution, size, offset, hashed, dense_dims;
};

std::vector<LevelInfo> unpack_levels(const torch::Tensor& scales, const torch::Tensor& ints) {
  // ints: [L, 5] int64 = resolution, size, offset, hashed, dense_dims
  auto s = scales.accessor<float, 1>();
  auto a = ints.accessor<int64_t, 2>();
  std::vector<LevelInfo> out(scales.size(0));
  for (int64_t l = 0; l < scales.size(0); ++l)
    out[l] = {s[l], a[l][0], a[l][1], a[l][2], a[l][3], a[l][4]};
  return out;
}

template <int D>
inline int64_t corner_index(const int32_t* c, const LevelInfo& lv) {
  if (lv.hashed) {
    uint32_t h = 0;
    for (int k = 0; k < D; ++k) h ^= static_cast<uint32_t>(c[k]) * kPrimes[k];
    return lv.offset + static_cast<int64_t>(h & static_cast<uint32_t>(lv.size - 1));
  }
  int64_t idx = 0, stride = 1;
  for (int k = 0; k < D && k < lv.dense_dims; ++k) {
    idx += static_cast<int64_t>(c[k]) * stride;
    stride *= lv.resolution;
  }
  // corners past the last vertex wrap around, as the PyTorch path's remainder does; a division
  // only happens for those (it dominates the cost of dense levels otherwise)
  if (static_cast<uint64_t>(idx) >= static_cast<uint64_t>(lv.size)) {
    idx %= lv.size;
    if (idx < 0) idx += lv.size;
  }
  return lv.offset + idx;
}

// Corners and weights of one point on one level; returns the number of corners.
template <int D, typename scalar_t>
inline int corners(const scalar_t* x, const LevelInfo& lv, int interp, int64_t* idx, scalar_t* w) {
  int32_t i0[D];
  scalar_t f[D];
  for (int k = 0; k < D; ++k) {
    // float32 position as the PyTorch path computes it (x * scale + 0.5 in x's dtype)
    scalar_t p = x[k] * static_cast<scalar_t>(lv.scale) + static_cast<scalar_t>(0.5);
    scalar_t b = std::floor(p);
    i0[k] = static_cast<int32_t>(b);
    scalar_t t = p - b;
    if (interp == kSmoothstep) t = t * t * (static_cast<scalar_t>(3) - static_cast<scalar_t>(2) * t);
    f[k] = t;
  }
  if (interp == kNearest) {
    idx[0] = corner_index<D>(i0, lv);
    w[0] = 1;
    return 1;
  }
  for (int c = 0; c < (1 << D); ++c) {
    int32_t cc[D];
    scalar_t wc = 1;
    for (int k = 0; k < D; ++k) {
      const int bit = (c >> k) & 1;
      cc[k] = i0[k] + bit;
      wc *= bit ? f[k] : static_cast<scalar_t>(1) - f[k];
    }
    idx[c] = corner_index<D>(cc, lv);
    w[c] = wc;
  }
  return 1 << D;
}

template <int D, int F, typename scalar_t>
void forward_impl(const scalar_t* x, const scalar_t* table, scalar_t* out, int64_t n,
                  const std::vector<LevelInfo>& levels, int interp) {
  const int64_t L = levels.size();
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    int64_t idx[1 << D];
    scalar_t w[1 << D];
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* xi = x + i * D;
      scalar_t* oi = out + i * L * F;
      for (int64_t l = 0; l < L; ++l) {
        const int nc = corners<D>(xi, levels[l], interp, idx, w);
        scalar_t acc[F] = {};
        for (int c = 0; c < nc; ++c) {
          const scalar_t* row = table + idx[c] * F;
          for (int f = 0; f < F; ++f) acc[f] += w[c] * row[f];
        }
        for (int f = 0; f < F; ++f) oi[l * F + f] = acc[f];
      }
    }
  });
}

template <int D, int F, typename scalar_t>
void backward_impl(const scalar_t* x, const scalar_t* grad_out, scalar_t* grad_table, int64_t n,
                   const std::vector<LevelInfo>& levels, int interp) {
  const int64_t L = levels.size();
  // one level per task: the levels' table slices are disjoint, so the scatter needs no atomics
  at::parallel_for(0, L, 1, [&](int64_t lbegin, int64_t lend) {
    int64_t idx[1 << D];
    scalar_t w[1 << D];
    for (int64_t l = lbegin; l < lend; ++l) {
      for (int64_t i = 0; i < n; ++i) {
        const int nc = corners<D>(x + i * D, levels[l], interp, idx, w);
        const scalar_t* g = grad_out + i * L * F + l * F;
        for (int c = 0; c < nc; ++c) {
          scalar_t* row = grad_table + idx[c] * F;
          for (int f = 0; f < F; ++f) row[f] += w[c] * g[f];
        }
      }
    }
  });
}

void check(const torch::Tensor& x, const torch::Tensor& table) {
  TORCH_CHECK(x.device().is_cpu() && table.device().is_cpu(), "grid kernel: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && table.is_contiguous(), "grid kernel: contiguous [N, d] inputs");
  TORCH_CHECK(x.scalar_type() == table.scalar_type(), "grid kernel: x and table must share a dtype");
}

#define DISPATCH_FEATS(F_VALUE, ...)                                   \
  switch (F_VALUE) {                                                   \
    case 1: { constexpr int F = 1; __VA_ARGS__; break; }               \
    case 2: { constexpr int F = 2; __VA_ARGS__; break; }               \
    case 4: { constexpr int F = 4; __VA_ARGS__; break; }               \
    case 8: { constexpr int F = 8; __VA_ARGS__; break; }               \
    default: TORCH_CHECK(false, "grid kernel: 1, 2, 4 or 8 features"); \
  }

#define DISPATCH_DIMS(D_VALUE, ...)                                   \
  switch (D_VALUE) {                                                  \
    case 1: { constexpr int D = 1; __VA_ARGS__; break; }              \
    case 2: { constexpr int D = 2; __VA_ARGS__; break; }              \
    case 3: { constexpr int D = 3; __VA_ARGS__; break; }              \
    case 4: { constexpr int D = 4; __VA_ARGS__; break; }              \
    default: TORCH_CHECK(false, "grid kernel: 1 to 4 input dims");    \
  }

}  // namespace

torch::Tensor grid_forward(torch::Tensor x, torch::Tensor params, torch::Tensor scales, torch::Tensor ints,
                           int64_t n_feats, int64_t interp) {
  check(x, params);
  const auto levels = unpack_levels(scales, ints);
  const int64_t n = x.size(0), L = levels.size();
  auto out = torch::empty({n, L * n_feats}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grid_forward", [&] {
    DISPATCH_DIMS(x.size(1), DISPATCH_FEATS(n_feats, forward_impl<D, F, scalar_t>(
        x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, levels, (int)interp)));
  });
  return out;
}

torch::Tensor grid_backward(torch::Tensor x, torch::Tensor grad_out, int64_t numel, torch::Tensor scales,
                            torch::Tensor ints, int64_t n_feats, int64_t interp) {
  check(x, grad_out);
  TORCH_CHECK(grad_out.is_contiguous(), "grid kernel: contiguous grad");
  const auto levels = unpack_levels(scales, ints);
  auto grad_table = torch::zeros({numel}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grid_backward", [&] {
    DISPATCH_DIMS(x.size(1), DISPATCH_FEATS(n_feats, backward_impl<D, F, scalar_t>(
        x.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), grad_table.data_ptr<scalar_t>(), x.size(0), levels,
        (int)interp)));
  });
  return grad_table;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("grid_forward", &grid_forward, "multiresolution grid lookup (CPU)");
  m.def("grid_backward", &grid_backward, "gradient of the lookup with respect to the table (CPU)");
}
