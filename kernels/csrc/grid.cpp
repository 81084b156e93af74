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
//
// Input gradients (SDF normals, eikonal losses) come from the same corner loop: dL/dx and the
// backward of dL/dx itself (to the table, the upstream gradient and x), so the second-order pass
// never falls back to autograd graphs of gathers.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <algorithm>
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

// Per-axis geometry of one point on one level: the floor corner, the (smoothstepped) fraction f,
// and df/dx, d2f/dx2 (the position's scale folded in) for the input gradients.
template <int D, typename scalar_t>
inline void geometry(const scalar_t* x, const LevelInfo& lv, int interp, int32_t* i0, scalar_t* f, scalar_t* df,
                     scalar_t* ddf) {
  const scalar_t s = static_cast<scalar_t>(lv.scale);
  for (int k = 0; k < D; ++k) {
    // x * scale + 0.5 in x's dtype, as the PyTorch path computes it
    const scalar_t p = x[k] * s + static_cast<scalar_t>(0.5);
    const scalar_t b = std::floor(p);
    i0[k] = static_cast<int32_t>(b);
    const scalar_t t = p - b;
    if (interp == kSmoothstep) {
      f[k] = t * t * (static_cast<scalar_t>(3) - static_cast<scalar_t>(2) * t);
      df[k] = static_cast<scalar_t>(6) * t * (static_cast<scalar_t>(1) - t) * s;
      ddf[k] = (static_cast<scalar_t>(6) - static_cast<scalar_t>(12) * t) * s * s;
    } else {
      f[k] = t;
      df[k] = s;
      ddf[k] = 0;
    }
  }
}

template <int D>
inline int64_t corner_of(const int32_t* i0, int c, const LevelInfo& lv) {
  int32_t cc[D];
  for (int k = 0; k < D; ++k) cc[k] = i0[k] + ((c >> k) & 1);
  return corner_index<D>(cc, lv);
}

// Points are processed in blocks, and inside a block level after level: the block's slice of the
// outputs / upstream gradients stays in L2 while one level's table rows are being hit.
constexpr int64_t kBlock = 512;

template <int D, int F, typename scalar_t>
void forward_impl(const scalar_t* x, const scalar_t* table, scalar_t* out, int64_t n,
                  const std::vector<LevelInfo>& levels, int interp) {
  const int64_t L = levels.size();
  constexpr int C = 1 << D;
  at::parallel_for(0, n, kBlock, [&](int64_t begin, int64_t end) {
    // two passes per block and level: all corner addresses first (with prefetches), then the
    // gathers, so the random table reads overlap instead of waiting on one another
    std::vector<int64_t> idx(kBlock * C);
    std::vector<scalar_t> w(kBlock * C);
    for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
      const int64_t b1 = std::min(end, b0 + kBlock);
      for (int64_t l = 0; l < L; ++l) {
        int nc = 0;
        for (int64_t i = b0; i < b1; ++i) {
          int64_t* ii = idx.data() + (i - b0) * C;
          nc = corners<D>(x + i * D, levels[l], interp, ii, w.data() + (i - b0) * C);
          for (int c = 0; c < nc; ++c) __builtin_prefetch(table + ii[c] * F);
        }
        for (int64_t i = b0; i < b1; ++i) {
          const int64_t* ii = idx.data() + (i - b0) * C;
          const scalar_t* wi = w.data() + (i - b0) * C;
          scalar_t acc[F] = {};
          for (int c = 0; c < nc; ++c) {
            const scalar_t* row = table + ii[c] * F;
            for (int f = 0; f < F; ++f) acc[f] += wi[c] * row[f];
          }
          scalar_t* o = out + i * L * F + l * F;
          for (int f = 0; f < F; ++f) o[f] = acc[f];
        }
      }
    }
  });
}

// Runs body(t, x_partial) once per worker t, worker t owning levels t, t + nt, t + 2 nt, ...:
// the levels' table slices are disjoint, so table scatters need no atomics, and interleaving the
// levels balances the cheap (cached, dense) coarse levels against the fine hashed ones. Input
// gradients sum over levels, so each worker writes its own partial [n, D] buffer (worker 0 the
// output itself) and the partials are added at the end.
template <typename scalar_t, typename Body>
void over_levels(int64_t L, int64_t n, int64_t d, scalar_t* grad_x, const Body& body) {
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), L));
  std::vector<scalar_t> parts(grad_x != nullptr && nt > 1 ? (nt - 1) * n * d : 0, scalar_t(0));
  at::parallel_for(0, nt, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t)
      body(t, nt, grad_x == nullptr ? nullptr : (t == 0 ? grad_x : parts.data() + (t - 1) * n * d));
  });
  if (grad_x != nullptr && nt > 1) {
    at::parallel_for(0, n * d, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t t = 1; t < nt; ++t) {
        const scalar_t* p = parts.data() + (t - 1) * n * d;
        for (int64_t j = b; j < e; ++j) grad_x[j] += p[j];
      }
    });
  }
}

// Weights of corner c and their first derivatives along each axis.
template <int D, typename scalar_t>
inline scalar_t corner_weight(int c, const scalar_t* f, const scalar_t* df, scalar_t* dw) {
  scalar_t a[D], da[D];
  scalar_t w = 1;
  for (int k = 0; k < D; ++k) {
    const bool up = (c >> k) & 1;
    a[k] = up ? f[k] : static_cast<scalar_t>(1) - f[k];
    da[k] = up ? df[k] : -df[k];
    w *= a[k];
  }
  if (dw != nullptr) {
    for (int k = 0; k < D; ++k) {
      scalar_t p = da[k];
      for (int j = 0; j < D; ++j)
        if (j != k) p *= a[j];
      dw[k] = p;
    }
  }
  return w;
}

// Gradient to the table (scatter of w * g) and/or to the inputs (sum over corners of
// (g . row) * dw/dx), one pass over the corners for both.
template <int D, int F, typename scalar_t>
void backward_impl(const scalar_t* x, const scalar_t* table, const scalar_t* grad_out, scalar_t* grad_table,
                   scalar_t* grad_x, int64_t n, const std::vector<LevelInfo>& levels, int interp) {
  const int64_t L = levels.size();
  constexpr int C = 1 << D;
  const bool want_x = grad_x != nullptr && interp != kNearest;
  over_levels<scalar_t>(L, n, D, want_x ? grad_x : nullptr, [&](int64_t t, int64_t nt, scalar_t* gx) {
    int32_t i0[D];
    scalar_t f[D], df[D], ddf[D];
    // as in the forward: corner addresses of a block first (prefetching the rows), then the
    // scatter; the geometry is kept for the input gradient
    std::vector<int64_t> idx(kBlock * C);
    std::vector<scalar_t> w(kBlock * C), dw(want_x ? kBlock * C * D : 0);
    for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
      const int64_t b1 = std::min(n, b0 + kBlock);
      for (int64_t l = t; l < L; l += nt) {
        const LevelInfo& lv = levels[l];
        for (int64_t i = b0; i < b1; ++i) {
          int64_t* ii = idx.data() + (i - b0) * C;
          geometry<D>(x + i * D, lv, interp, i0, f, df, ddf);
          if (interp == kNearest) {
            ii[0] = corner_index<D>(i0, lv);
            if (grad_table != nullptr) __builtin_prefetch(grad_table + ii[0] * F, 1);
            continue;
          }
          for (int c = 0; c < C; ++c) {
            ii[c] = corner_of<D>(i0, c, lv);
            w[(i - b0) * C + c] = corner_weight<D>(c, f, df, want_x ? dw.data() + ((i - b0) * C + c) * D : nullptr);
            if (grad_table != nullptr) __builtin_prefetch(grad_table + ii[c] * F, 1);
            if (want_x) __builtin_prefetch(table + ii[c] * F);
          }
        }
        for (int64_t i = b0; i < b1; ++i) {
          const int64_t* ii = idx.data() + (i - b0) * C;
          const scalar_t* g = grad_out + i * L * F + l * F;
          if (interp == kNearest) {
            if (grad_table != nullptr) {
              scalar_t* row = grad_table + ii[0] * F;
              for (int q = 0; q < F; ++q) row[q] += g[q];
            }
            continue;
          }
          const scalar_t* wi = w.data() + (i - b0) * C;
          scalar_t acc[D] = {};
          for (int c = 0; c < C; ++c) {
            if (grad_table != nullptr) {
              scalar_t* row = grad_table + ii[c] * F;
              for (int q = 0; q < F; ++q) row[q] += wi[c] * g[q];
            }
            if (want_x) {
              const scalar_t* row = table + ii[c] * F;
              const scalar_t* dwc = dw.data() + ((i - b0) * C + c) * D;
              scalar_t h = 0;
              for (int q = 0; q < F; ++q) h += g[q] * row[q];
              for (int k = 0; k < D; ++k) acc[k] += h * dwc[k];
            }
          }
          if (want_x)
            for (int k = 0; k < D; ++k) gx[i * D + k] += acc[k];
        }
      }
    }
  });
}

// Backward of the input gradient gx = B(x, table, g) against an upstream v = dLoss/dgx:
// with u_c = sum_k v_k dw_c/dx_k and h_c = g . row_c,
//   dLoss/dtable[row_c] += u_c g,   dLoss/dg = sum_c u_c row_c,
//   dLoss/dx_j = sum_c h_c sum_k v_k d2w_c / dx_k dx_j.
template <int D, int F, typename scalar_t>
void double_backward_impl(const scalar_t* x, const scalar_t* table, const scalar_t* grad_out, const scalar_t* v,
                          scalar_t* d_table, scalar_t* d_g, scalar_t* d_x, int64_t n,
                          const std::vector<LevelInfo>& levels, int interp) {
  const int64_t L = levels.size();
  if (interp == kNearest) return;  // the lookup is piecewise constant: every term is zero
  over_levels<scalar_t>(L, n, D, d_x, [&](int64_t t, int64_t nt, scalar_t* dx) {
    int32_t i0[D];
    scalar_t f[D], df[D], ddf[D];
    for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
      const int64_t b1 = std::min(n, b0 + kBlock);
      for (int64_t l = t; l < L; l += nt) {
        const LevelInfo& lv = levels[l];
        for (int64_t i = b0; i < b1; ++i) {
          const scalar_t* g = grad_out + i * L * F + l * F;
          const scalar_t* vi = v + i * D;
          geometry<D>(x + i * D, lv, interp, i0, f, df, ddf);
          scalar_t dgi[F] = {};
          scalar_t acc[D] = {};
          for (int c = 0; c < (1 << D); ++c) {
            const int64_t idx = corner_of<D>(i0, c, lv);
            scalar_t a[D], da[D], dda[D];
            for (int k = 0; k < D; ++k) {
              const bool up = (c >> k) & 1;
              a[k] = up ? f[k] : static_cast<scalar_t>(1) - f[k];
              da[k] = up ? df[k] : -df[k];
              dda[k] = up ? ddf[k] : -ddf[k];
            }
            scalar_t u = 0;
            for (int k = 0; k < D; ++k) {
              scalar_t p = da[k];
              for (int j = 0; j < D; ++j)
                if (j != k) p *= a[j];
              u += vi[k] * p;
            }
            const scalar_t* row = table + idx * F;
            if (d_table != nullptr) {
              scalar_t* drow = d_table + idx * F;
              for (int q = 0; q < F; ++q) drow[q] += u * g[q];
            }
            if (d_g != nullptr)
              for (int q = 0; q < F; ++q) dgi[q] += u * row[q];
            if (dx != nullptr) {
              scalar_t h = 0;
              for (int q = 0; q < F; ++q) h += g[q] * row[q];
              for (int j = 0; j < D; ++j) {
                scalar_t s = 0;
                for (int k = 0; k < D; ++k) {
                  scalar_t p = (k == j) ? dda[k] : da[k] * da[j];
                  for (int m = 0; m < D; ++m)
                    if (m != k && m != j) p *= a[m];
                  s += vi[k] * p;
                }
                acc[j] += h * s;
              }
            }
          }
          if (d_g != nullptr)
            for (int q = 0; q < F; ++q) d_g[i * L * F + l * F + q] = dgi[q];
          if (dx != nullptr)
            for (int j = 0; j < D; ++j) dx[i * D + j] += acc[j];
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

std::vector<torch::Tensor> grid_backward(torch::Tensor x, torch::Tensor params, torch::Tensor grad_out,
                                         torch::Tensor scales, torch::Tensor ints, int64_t n_feats, int64_t interp,
                                         bool need_table, bool need_x) {
  check(x, params);
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == x.scalar_type(), "grid kernel: contiguous grad");
  const auto levels = unpack_levels(scales, ints);
  auto grad_table = need_table ? torch::zeros({params.numel()}, x.options()) : torch::empty({0}, x.options());
  auto grad_x = need_x ? torch::zeros_like(x) : torch::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grid_backward", [&] {
    DISPATCH_DIMS(x.size(1), DISPATCH_FEATS(n_feats, backward_impl<D, F, scalar_t>(
        x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
        need_table ? grad_table.data_ptr<scalar_t>() : nullptr, need_x ? grad_x.data_ptr<scalar_t>() : nullptr,
        x.size(0), levels, (int)interp)));
  });
  return {grad_table, grad_x};
}

std::vector<torch::Tensor> grid_double_backward(torch::Tensor x, torch::Tensor params, torch::Tensor grad_out,
                                                torch::Tensor v, torch::Tensor scales, torch::Tensor ints,
                                                int64_t n_feats, int64_t interp, bool need_table, bool need_g,
                                                bool need_x) {
  check(x, params);
  TORCH_CHECK(grad_out.is_contiguous() && v.is_contiguous(), "grid kernel: contiguous grads");
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type() && v.scalar_type() == x.scalar_type(), "grid kernel: one dtype");
  const auto levels = unpack_levels(scales, ints);
  auto d_table = need_table ? torch::zeros({params.numel()}, x.options()) : torch::empty({0}, x.options());
  auto d_g = need_g ? torch::zeros_like(grad_out) : torch::empty({0}, x.options());
  auto d_x = need_x ? torch::zeros_like(x) : torch::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grid_double_backward", [&] {
    DISPATCH_DIMS(x.size(1), DISPATCH_FEATS(n_feats, double_backward_impl<D, F, scalar_t>(
        x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
        need_table ? d_table.data_ptr<scalar_t>() : nullptr, need_g ? d_g.data_ptr<scalar_t>() : nullptr,
        need_x ? d_x.data_ptr<scalar_t>() : nullptr, x.size(0), levels, (int)interp)));
  });
  return {d_table, d_g, d_x};
}

// rbf.cpp
torch::Tensor rbf_forward(torch::Tensor x, torch::Tensor idx, torch::Tensor centres, torch::Tensor shapes,
                          torch::Tensor weights, torch::Tensor freqs, int64_t kernel, int64_t shape, bool normalize);
std::vector<torch::Tensor> rbf_backward(torch::Tensor grad_out, torch::Tensor x, torch::Tensor idx,
                                        torch::Tensor centres, torch::Tensor shapes, torch::Tensor weights,
                                        torch::Tensor freqs, int64_t kernel, int64_t shape, bool normalize,
                                        bool need_x, bool need_centres, bool need_shapes, bool need_weights);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("grid_forward", &grid_forward, "multiresolution grid lookup (CPU)");
  m.def("grid_backward", &grid_backward, "gradients of the lookup to the table and/or the inputs (CPU)");
  m.def("grid_double_backward", &grid_double_backward, "backward of the input gradient (CPU)");
  m.def("rbf_forward", &rbf_forward, "NeuRBF k-nearest kernel features (CPU)");
  m.def("rbf_backward", &rbf_backward, "gradients of the NeuRBF features (CPU)");
}
