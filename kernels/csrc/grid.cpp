// Multiresolution grid lookup on the CPU: forward and backward-to-table in one pass each.
//
// Semantics are those of fieldstudio.encoders.grid (tcnn's GridEncoding): position
// p = x * scale_l + 0.5, corner floor(p), coherent prime hash (uint32 XOR of i_k * pi_k, masked to
// the power-of-two table) on hashed levels, a row-major dense index modulo the table size
// otherwise. The PyTorch twin in encoders/grid.py is the oracle the tests hold this against.
//
// Why it is fast: the PyTorch path materialises [N, 2^d] index and weight tensors per level and
// scatters gradients with index_add_; here each point's corners live in registers, and each pass
// runs one level over all points (see kAhead below). Both directions split *levels* across threads
// (the forward also splits a level's points when threads outnumber levels), so in the backward every
// thread accumulates into its own disjoint slice of the table and no atomics are needed.
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

// huge_alloc.cpp: huge-page, recycled buffers for the tables, their gradients and the outputs
torch::Tensor huge_empty(at::IntArrayRef sizes, const at::TensorOptions& options);
torch::Tensor huge_zeros(at::IntArrayRef sizes, const at::TensorOptions& options);

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
// Built axis by axis (corner c has bit k set when it is the upper corner along axis k): each axis
// doubles the set of partial hashes / dense offsets and partial weights, so a 3-D point costs 14
// multiplies and 7 xors or adds instead of 24 and 24, in the same multiplication order as before
// (the weights are bit-identical to the PyTorch twin's products).
template <int D, typename scalar_t>
__attribute__((always_inline)) inline int corners(const scalar_t* x, const LevelInfo& lv, int interp, int64_t* idx,
                                                  scalar_t* w) {
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
  constexpr int C = 1 << D;
  w[0] = 1;
  if (lv.hashed) {
    uint32_t h[C];
    h[0] = 0;
    // fully unrolled, so that h and w live in registers: a partly vectorised loop stores scalars and
    // reloads vectors from the stack, and every such reload stalls on store forwarding
#pragma GCC unroll 4
    for (int k = 0; k < D; ++k) {
      const uint32_t lo = static_cast<uint32_t>(i0[k]) * kPrimes[k], hi = static_cast<uint32_t>(i0[k] + 1) * kPrimes[k];
      const scalar_t wl = static_cast<scalar_t>(1) - f[k], wh = f[k];
#pragma GCC unroll 8
      for (int c = 0; c < (1 << k); ++c) {
        h[c + (1 << k)] = h[c] ^ hi;
        h[c] ^= lo;
        w[c + (1 << k)] = w[c] * wh;
        w[c] *= wl;
      }
    }
    const uint32_t mask = static_cast<uint32_t>(lv.size - 1);
    for (int c = 0; c < C; ++c) idx[c] = lv.offset + static_cast<int64_t>(h[c] & mask);
    return C;
  }
  int64_t o[C];
  o[0] = 0;
  int64_t stride = 1;
#pragma GCC unroll 4
  for (int k = 0; k < D; ++k) {
    const bool on_grid = k < lv.dense_dims;  // axes past dense_dims do not move the index
    const int64_t lo = on_grid ? static_cast<int64_t>(i0[k]) * stride : 0, hi = on_grid ? lo + stride : 0;
    const scalar_t wl = static_cast<scalar_t>(1) - f[k], wh = f[k];
#pragma GCC unroll 8
    for (int c = 0; c < (1 << k); ++c) {
      o[c + (1 << k)] = o[c] + hi;
      o[c] += lo;
      w[c + (1 << k)] = w[c] * wh;
      w[c] *= wl;
    }
    if (on_grid) stride *= lv.resolution;
  }
  for (int c = 0; c < C; ++c) {
    int64_t v = o[c];
    // corners past the last vertex wrap around, as the PyTorch path's remainder does
    if (static_cast<uint64_t>(v) >= static_cast<uint64_t>(lv.size)) {
      v %= lv.size;
      if (v < 0) v += lv.size;
    }
    idx[c] = lv.offset + v;
  }
  return C;
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

// Work is level-major: a worker runs through *all* points on one level before the next, so
// that level's table (a few MB) stays in the core's L2 cache for the whole pass, instead of the
// 16 levels' tables evicting one another every few hundred points (25% faster on 2^19 tables).
// Per-level results go to a [L, n, F] scratch buffer that is transposed once at the end; the
// backward transposes the upstream gradient the same way first. Inside a pass, the corners of
// the point kAhead positions ahead are computed and their rows prefetched while the current
// point is gathered, so that a few dozen random reads are in flight at once.
constexpr int kAhead = 16;  // a power of two (8 and 32 measured the same)

template <int D, typename scalar_t>
struct CornerSet {
  int64_t idx[1 << D];
  scalar_t w[1 << D];
  scalar_t dw[(1 << D) * D];  // dw/dx per corner and axis (backward to the inputs only)
  int n;
};

// Runs body(l, begin, end) over every level and a slice of the points; worker t takes items
// t, t + nt, ... so the cheap coarse levels and the expensive hashed ones are spread over all
// workers. A level is split into point slices only when there are more workers than levels.
template <typename Body>
void over_level_slices(int64_t L, int64_t n, const Body& body) {
  const int64_t nt = std::max<int64_t>(1, at::get_num_threads());
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>((nt + L - 1) / L, (n + 4095) / 4096));
  const int64_t items = L * slices, per = (n + slices - 1) / slices;
  const int64_t workers = std::min(nt, items);
  at::parallel_for(0, workers, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t)
      for (int64_t k = t; k < items; k += workers) {
        const int64_t l = k / slices, s = k % slices;
        const int64_t begin = s * per, end = std::min(n, begin + per);
        if (begin < end) body(l, begin, end);
      }
  });
}

// [n, L*F] <-> [L, n, F], split over points.
template <int F, typename scalar_t>
void to_level_major(const scalar_t* src, scalar_t* dst, int64_t n, int64_t L) {
  at::parallel_for(0, n, 1 << 12, [&](int64_t b, int64_t e) {
    for (int64_t l = 0; l < L; ++l)
      for (int64_t i = b; i < e; ++i)
        for (int f = 0; f < F; ++f) dst[(l * n + i) * F + f] = src[(i * L + l) * F + f];
  });
}

template <int F, typename scalar_t>
void to_point_major(const scalar_t* src, scalar_t* dst, int64_t n, int64_t L) {
  at::parallel_for(0, n, 1 << 12, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      for (int64_t l = 0; l < L; ++l)
        for (int f = 0; f < F; ++f) dst[(i * L + l) * F + f] = src[(l * n + i) * F + f];
  });
}

template <int D, int F, typename scalar_t>
void forward_impl(const scalar_t* x, const scalar_t* table, scalar_t* out, scalar_t* scratch, int64_t n,
                  const std::vector<LevelInfo>& levels, int interp) {
  const int64_t L = levels.size();
  over_level_slices(L, n, [&](int64_t l, int64_t begin, int64_t end) {
    const LevelInfo& lv = levels[l];
    CornerSet<D, scalar_t> ring[kAhead];
    auto fetch = [&](int64_t i, CornerSet<D, scalar_t>& cs) {
      cs.n = corners<D>(x + i * D, lv, interp, cs.idx, cs.w);
      for (int c = 0; c < cs.n; ++c) __builtin_prefetch(table + cs.idx[c] * F);
    };
    for (int64_t i = begin; i < std::min(end, begin + kAhead); ++i) fetch(i, ring[(i - begin) & (kAhead - 1)]);
    scalar_t* o = scratch + l * n * F;
    for (int64_t i = begin; i < end; ++i) {
      CornerSet<D, scalar_t>& cs = ring[(i - begin) & (kAhead - 1)];
      scalar_t acc[F] = {};
      for (int c = 0; c < cs.n; ++c) {
        const scalar_t* row = table + cs.idx[c] * F;
        for (int f = 0; f < F; ++f) acc[f] += cs.w[c] * row[f];
      }
      for (int f = 0; f < F; ++f) o[i * F + f] = acc[f];
      if (i + kAhead < end) fetch(i + kAhead, cs);
    }
  });
  to_point_major<F>(scratch, out, n, L);
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
// (g . row) * dw/dx), one pass over the corners for both. g_lm is the upstream gradient in
// level-major order [L, n, F].
template <int D, int F, typename scalar_t>
void backward_impl(const scalar_t* x, const scalar_t* table, const scalar_t* g_lm, scalar_t* grad_table,
                   scalar_t* grad_x, int64_t n, const std::vector<LevelInfo>& levels, int interp, bool zero_levels) {
  const int64_t L = levels.size();
  const bool want_x = grad_x != nullptr && interp != kNearest;
  over_levels<scalar_t>(L, n, D, want_x ? grad_x : nullptr, [&](int64_t t, int64_t nt, scalar_t* gx) {
    // the gradient buffer arrives uninitialised: each worker clears the slices of the levels it
    // owns, which is also the first touch of those pages (no separate pass over the whole table)
    if (grad_table != nullptr && zero_levels)
      for (int64_t l = t; l < L; l += nt)
        std::fill(grad_table + levels[l].offset * F, grad_table + (levels[l].offset + levels[l].size) * F, scalar_t(0));
    for (int64_t l = t; l < L; l += nt) {
      const LevelInfo& lv = levels[l];
      CornerSet<D, scalar_t> ring[kAhead];
      auto fetch = [&](int64_t i, CornerSet<D, scalar_t>& cs) {
        if (!want_x) {
          cs.n = corners<D>(x + i * D, lv, interp, cs.idx, cs.w);
        } else {
          int32_t i0[D];
          scalar_t f[D], df[D], ddf[D];
          geometry<D>(x + i * D, lv, interp, i0, f, df, ddf);
          cs.n = 1 << D;
          for (int c = 0; c < cs.n; ++c) {
            cs.idx[c] = corner_of<D>(i0, c, lv);
            cs.w[c] = corner_weight<D>(c, f, df, cs.dw + c * D);
            __builtin_prefetch(table + cs.idx[c] * F);
          }
        }
        if (grad_table != nullptr)
          for (int c = 0; c < cs.n; ++c) __builtin_prefetch(grad_table + cs.idx[c] * F, 1);
      };
      for (int64_t i = 0; i < std::min<int64_t>(n, kAhead); ++i) fetch(i, ring[i & (kAhead - 1)]);
      const scalar_t* gl = g_lm + l * n * F;
      for (int64_t i = 0; i < n; ++i) {
        CornerSet<D, scalar_t>& cs = ring[i & (kAhead - 1)];
        const scalar_t* g = gl + i * F;
        scalar_t acc[D] = {};
        for (int c = 0; c < cs.n; ++c) {
          if (grad_table != nullptr) {
            scalar_t* row = grad_table + cs.idx[c] * F;
            for (int q = 0; q < F; ++q) row[q] += cs.w[c] * g[q];
          }
          if (want_x) {
            const scalar_t* row = table + cs.idx[c] * F;
            scalar_t h = 0;
            for (int q = 0; q < F; ++q) h += g[q] * row[q];
            for (int k = 0; k < D; ++k) acc[k] += h * cs.dw[c * D + k];
          }
        }
        if (want_x)
          for (int k = 0; k < D; ++k) gx[i * D + k] += acc[k];
        if (i + kAhead < n) fetch(i + kAhead, cs);
      }
    }
  });
}

// The second-order pass runs in blocks of points, level after level inside a block.
constexpr int64_t kBlock = 512;

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
  auto out = huge_empty({n, L * n_feats}, x.options());
  auto scratch = huge_empty({L, n, n_feats}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grid_forward", [&] {
    DISPATCH_DIMS(x.size(1), DISPATCH_FEATS(n_feats, forward_impl<D, F, scalar_t>(
        x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), scratch.data_ptr<scalar_t>(),
        n, levels, (int)interp)));
  });
  return out;
}

std::vector<torch::Tensor> grid_backward(torch::Tensor x, torch::Tensor params, torch::Tensor grad_out,
                                         torch::Tensor scales, torch::Tensor ints, int64_t n_feats, int64_t interp,
                                         bool need_table, bool need_x) {
  check(x, params);
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == x.scalar_type(), "grid kernel: contiguous grad");
  const auto levels = unpack_levels(scales, ints);
  // the levels tile the table (offsets are running sums of sizes): then the workers clear it level
  // by level; any other layout is cleared here first
  int64_t tiled = 0;
  for (const auto& lv : levels) tiled = (lv.offset == tiled) ? tiled + lv.size : -1;
  const bool zero_levels = tiled >= 0 && tiled * n_feats == params.numel();
  auto grad_table = need_table ? huge_empty({params.numel()}, x.options()) : torch::empty({0}, x.options());
  if (need_table && !zero_levels) grad_table.zero_();
  auto grad_x = need_x ? huge_zeros(x.sizes(), x.options()) : torch::empty({0}, x.options());
  const int64_t n = x.size(0), L = levels.size();
  auto g_lm = huge_empty({L, n, n_feats}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grid_backward", [&] {
    DISPATCH_FEATS(n_feats, to_level_major<F>(grad_out.data_ptr<scalar_t>(), g_lm.data_ptr<scalar_t>(), n, L));
    DISPATCH_DIMS(x.size(1), DISPATCH_FEATS(n_feats, backward_impl<D, F, scalar_t>(
        x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(), g_lm.data_ptr<scalar_t>(),
        need_table ? grad_table.data_ptr<scalar_t>() : nullptr, need_x ? grad_x.data_ptr<scalar_t>() : nullptr,
        x.size(0), levels, (int)interp, zero_levels)));
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
  auto d_table = need_table ? huge_zeros({params.numel()}, x.options()) : torch::empty({0}, x.options());
  auto d_g = need_g ? huge_zeros(grad_out.sizes(), x.options()) : torch::empty({0}, x.options());
  auto d_x = need_x ? huge_zeros(x.sizes(), x.options()) : torch::empty({0}, x.options());
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

// A copy of t in a huge-page buffer (the grid tables: random reads stop missing the TLB).
torch::Tensor huge_copy(torch::Tensor t) {
  return huge_empty(t.sizes(), t.options()).copy_(t);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("huge_copy", &huge_copy, "a copy of a CPU tensor in a huge-page backed buffer");
  m.def("grid_forward", &grid_forward, "multiresolution grid lookup (CPU)");
  m.def("grid_backward", &grid_backward, "gradients of the lookup to the table and/or the inputs (CPU)");
  m.def("grid_double_backward", &grid_double_backward, "backward of the input gradient (CPU)");
  m.def("rbf_forward", &rbf_forward, "NeuRBF k-nearest kernel features (CPU)");
  m.def("rbf_backward", &rbf_backward, "gradients of the NeuRBF features (CPU)");
}
