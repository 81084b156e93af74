// NeuRBF's k-nearest radial basis evaluation on the CPU: forward and backward in one pass each.
//
// Semantics are those of fieldstudio.encoders.rbf_kernels.rbf_encode (the PyTorch twin the tests
// hold this against): for each query, its k kernels' values phi_j (ivq / gauss on r^2 with an
// isotropic, diagonal or packed full shape; nlin the N-linear tent), optionally divided by their
// detached sum, expanded channel-wise by sin(phi~ * m_c) (or phi~ itself) and weighted by the
// kernels' C-vectors. The PyTorch path materialises [N, k, C] gathers of the weights and of the
// sinusoids, and autograd scatters them back; here each point's k rows stay in cache.
//
// Threads split the points; the scatters into per-kernel gradients (weights, centres, shapes) go
// to one buffer per thread, summed at the end (kernels are shared by many points).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int kMaxD = 4;
constexpr int kMaxK = 64;
enum Kernel { kIvq = 0, kGauss = 1, kNlin = 2 };
enum Shape { kIso = 0, kDiag = 1, kFull = 2 };

struct Args {
  int64_t n, d, k, C, P;
  int kernel, shape;
  bool normalize;
};

// [d, d] -> slot in the packed upper triangle (row by row), as rbf_kernels.triu_index
inline int packed(int i, int j, int d) {
  if (i > j) std::swap(i, j);
  return i * d - i * (i - 1) / 2 + (j - i);
}

// The channel loops (sin(phi~ m_c), the weighted sum, and in the backward the reduction and the
// weights' scatter) dominate the kernel: N k C of each. For float32 they live in row functions
// built three times through target_clones, AVX-512 and AVX2 copies picked at load time on CPUs
// that have them and a baseline one (the cached build stays portable; AVX-512's wider lanes make
// the 2-D benchmark case 1.4x faster than the AVX2 copy), with a branch-free sin/cos the compiler
// vectorises: arguments reduced to [-pi, pi] by a three-part 2 pi (exact products for
// |arg| < 2^13 * 2 pi) and near-minimax polynomials of degree 13 / 12 on [-pi, pi], |error| <
// 5e-7 in float32 -- the resolution of the float32 argument m * phi~ itself is coarser for the
// large frequencies. float64 uses
// std::sin / std::cos (gradchecks).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FS_CLONES
#endif

// reduce to [-pi, pi]: 1.5 * 2^23 rounds to an integer, 2 pi in three parts keeps k * part exact
static inline __attribute__((always_inline)) float reduce_2pi(float a) {
  const float k = (a * 0.159154943f + 12582912.0f) - 12582912.0f;
  return ((a - k * 6.28125f) - k * 0.0019350051879882812f) - k * 3.019916050561733e-07f;
}

// least-squares fits on Chebyshev nodes over [-pi, pi] (near minimax), degree 13 and 12
static inline __attribute__((always_inline)) float sin_pi(float r, float r2) {
  return r * (0.9999999944747734f + r2 * (-0.16666664570297066f + r2 * (0.008333310293851105f +
         r2 * (-0.00019840151884911405f + r2 * (2.75293954209291e-06f + r2 * (-2.4676492620190162e-08f +
         r2 * 1.3449989412642432e-10f))))));
}
static inline __attribute__((always_inline)) float cos_pi(float r2) {
  return 0.999999989111809f + r2 * (-0.4999998910092855f + r2 * (0.04166648921953376f +
         r2 * (-0.0013887803600814588f + r2 * (2.476988356099203e-05f + r2 * (-2.707903085156783e-07f +
         r2 * 1.7245092347965163e-09f)))));
}

static inline __attribute__((always_inline)) void sincos_f(float a, float& s, float& c) {
  const float r = reduce_2pi(a);
  const float r2 = r * r;
  s = sin_pi(r, r2);
  c = cos_pi(r2);
}

// acc[c] += w[c] * sin(pt * m[c])
FS_CLONES void row_forward(float pt, const float* m, const float* w, float* acc, int n) {
  for (int c = 0; c < n; ++c) {
    const float r = reduce_2pi(pt * m[c]);
    acc[c] += w[c] * sin_pi(r, r * r);
  }
}

// returns sum_c g[c] w[c] cos(pt m[c]) m[c]; gw[c] += g[c] sin(pt m[c]) when gw is given
FS_CLONES float row_backward(float pt, const float* m, const float* w, const float* g, float* gw, int n) {
  constexpr int kChunk = 64;
  float sn[kChunk], tm[kChunk];
  float part[8] = {};  // eight partial sums: a vectorisable reduction without reassociation flags
  float dpt = 0;
  for (int c0 = 0; c0 < n; c0 += kChunk) {
    const int len = std::min(kChunk, n - c0);
    for (int c = 0; c < len; ++c) {
      float co;
      sincos_f(pt * m[c0 + c], sn[c], co);
      tm[c] = g[c0 + c] * w[c0 + c] * co * m[c0 + c];
    }
    int c = 0;
    for (; c + 8 <= len; c += 8)
      for (int q = 0; q < 8; ++q) part[q] += tm[c + q];
    for (; c < len; ++c) dpt += tm[c];
    if (gw != nullptr)
      for (int q = 0; q < len; ++q) gw[c0 + q] += g[c0 + q] * sn[q];
  }
  for (int q = 0; q < 8; ++q) dpt += part[q];
  return dpt;
}

template <typename scalar_t>
inline void sin_row_forward(scalar_t pt, const scalar_t* m, const scalar_t* w, scalar_t* acc, int n) {
  for (int c = 0; c < n; ++c) acc[c] += w[c] * std::sin(pt * m[c]);
}
template <>
inline void sin_row_forward<float>(float pt, const float* m, const float* w, float* acc, int n) {
  row_forward(pt, m, w, acc, n);
}
template <typename scalar_t>
inline scalar_t sin_row_backward(scalar_t pt, const scalar_t* m, const scalar_t* w, const scalar_t* g, scalar_t* gw,
                                 int n) {
  scalar_t dpt = 0;
  for (int c = 0; c < n; ++c) {
    const scalar_t arg = pt * m[c];
    dpt += g[c] * w[c] * std::cos(arg) * m[c];
    if (gw != nullptr) gw[c] += g[c] * std::sin(arg);
  }
  return dpt;
}
template <>
inline float sin_row_backward<float>(float pt, const float* m, const float* w, const float* g, float* gw, int n) {
  return row_backward(pt, m, w, g, gw, n);
}

// phi for one offset; fills what the backward needs to differentiate it
template <typename scalar_t>
inline scalar_t kernel_value(const scalar_t* diff, const scalar_t* s, const Args& a) {
  const int d = a.d;
  if (a.kernel == kNlin) {
    scalar_t phi = 1;
    for (int q = 0; q < d; ++q) {
      const scalar_t sq = a.shape == kDiag ? s[q] : s[0];
      phi *= std::max(static_cast<scalar_t>(0), static_cast<scalar_t>(1) - std::abs(diff[q]) * sq);
    }
    return phi;
  }
  scalar_t r2 = 0;
  if (a.shape == kIso) {
    for (int q = 0; q < d; ++q) r2 += diff[q] * diff[q];
    r2 *= s[0];
  } else if (a.shape == kDiag) {
    for (int q = 0; q < d; ++q) r2 += diff[q] * diff[q] * s[q];
  } else {
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j) r2 += diff[i] * s[packed(i, j, d)] * diff[j];
  }
  return a.kernel == kIvq ? static_cast<scalar_t>(1) / (static_cast<scalar_t>(1) + r2)
                          : std::exp(static_cast<scalar_t>(-0.5) * r2);
}

// d phi / d diff (into g_diff) and d phi / d shape (into g_s, P entries), times `up`
template <typename scalar_t>
inline void kernel_grad(const scalar_t* diff, const scalar_t* s, scalar_t phi, scalar_t up, const Args& a,
                        scalar_t* g_diff, scalar_t* g_s) {
  const int d = a.d;
  for (int q = 0; q < d; ++q) g_diff[q] = 0;
  for (int q = 0; q < a.P; ++q) g_s[q] = 0;
  if (a.kernel == kNlin) {
    scalar_t v[kMaxD];
    bool on[kMaxD];
    for (int q = 0; q < d; ++q) {
      const scalar_t sq = a.shape == kDiag ? s[q] : s[0];
      const scalar_t t = static_cast<scalar_t>(1) - std::abs(diff[q]) * sq;
      on[q] = t >= 0;  // clamp(min=0) passes the gradient where t >= 0, as torch does
      v[q] = std::max(static_cast<scalar_t>(0), t);
    }
    for (int q = 0; q < d; ++q) {
      if (!on[q]) continue;
      scalar_t others = up;
      for (int m = 0; m < d; ++m)
        if (m != q) others *= v[m];
      const scalar_t sq = a.shape == kDiag ? s[q] : s[0];
      const scalar_t sign = diff[q] > 0 ? 1 : (diff[q] < 0 ? -1 : 0);
      g_diff[q] = -others * sq * sign;
      g_s[a.shape == kDiag ? q : 0] += -others * std::abs(diff[q]);
    }
    return;
  }
  const scalar_t dr2 = up * (a.kernel == kIvq ? -phi * phi : static_cast<scalar_t>(-0.5) * phi);
  if (a.shape == kIso) {
    scalar_t n2 = 0;
    for (int q = 0; q < d; ++q) {
      n2 += diff[q] * diff[q];
      g_diff[q] = dr2 * 2 * s[0] * diff[q];
    }
    g_s[0] = dr2 * n2;
  } else if (a.shape == kDiag) {
    for (int q = 0; q < d; ++q) {
      g_diff[q] = dr2 * 2 * s[q] * diff[q];
      g_s[q] = dr2 * diff[q] * diff[q];
    }
  } else {
    for (int i = 0; i < d; ++i) {
      scalar_t acc = 0;
      for (int j = 0; j < d; ++j) acc += s[packed(i, j, d)] * diff[j];
      g_diff[i] = dr2 * 2 * acc;
      for (int j = i; j < d; ++j)
        g_s[packed(i, j, d)] = dr2 * (i == j ? diff[i] * diff[i] : 2 * diff[i] * diff[j]);
    }
  }
}

// Values of the k kernels of point i (normalised when asked): fills diff [k, d] and phi [k],
// returns the factor 1 / (sum + 1e-8) (1 without normalisation).
template <typename scalar_t>
inline scalar_t point_kernels(int64_t i, const scalar_t* x, const int64_t* idx, const scalar_t* centres,
                              const scalar_t* shapes, const Args& a, scalar_t* diff, scalar_t* phi) {
  scalar_t sum = 0;
  for (int j = 0; j < a.k; ++j) {
    const int64_t kid = idx[i * a.k + j];
    for (int q = 0; q < a.d; ++q) diff[j * a.d + q] = x[i * a.d + q] - centres[kid * a.d + q];
    phi[j] = kernel_value(diff + j * a.d, shapes + kid * a.P, a);
    sum += phi[j];
  }
  return a.normalize ? sum + static_cast<scalar_t>(1e-8) : static_cast<scalar_t>(1);
}

template <typename scalar_t>
void forward_impl(const scalar_t* x, const int64_t* idx, const scalar_t* centres, const scalar_t* shapes,
                  const scalar_t* weights, const scalar_t* freqs, scalar_t* out, const Args& a) {
  at::parallel_for(0, a.n, 256, [&](int64_t begin, int64_t end) {
    scalar_t diff[kMaxK * kMaxD], phi[kMaxK];
    std::vector<scalar_t> acc(a.C);
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t den = point_kernels(i, x, idx, centres, shapes, a, diff, phi);
      std::fill(acc.begin(), acc.end(), static_cast<scalar_t>(0));
      for (int j = 0; j < a.k; ++j) {
        const scalar_t pt = phi[j] / den;  // a division, as the twin: sin(pt * 4096) amplifies rounding
        const scalar_t* w = weights + idx[i * a.k + j] * a.C;
        if (freqs != nullptr) {
          sin_row_forward<scalar_t>(pt, freqs, w, acc.data(), a.C);
        } else {
          for (int c = 0; c < a.C; ++c) acc[c] += w[c] * pt;
        }
      }
      std::copy(acc.begin(), acc.end(), out + i * a.C);
    }
  });
}

template <typename scalar_t>
void backward_impl(const scalar_t* x, const int64_t* idx, const scalar_t* centres, const scalar_t* shapes,
                   const scalar_t* weights, const scalar_t* freqs, const scalar_t* grad_out, scalar_t* gx,
                   scalar_t* g_centres, scalar_t* g_shapes, scalar_t* g_weights, int64_t n_kernels, const Args& a) {
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (a.n + 255) / 256));
  // per-thread copies of the per-kernel gradients beyond the first thread's (the outputs)
  const int64_t per = (g_centres ? n_kernels * a.d : 0) + (g_shapes ? n_kernels * a.P : 0) +
                      (g_weights ? n_kernels * a.C : 0);
  std::vector<scalar_t> parts((nt - 1) * per, static_cast<scalar_t>(0));
  at::parallel_for(0, nt, 1, [&](int64_t tb, int64_t te) {
    scalar_t diff[kMaxK * kMaxD], phi[kMaxK], g_diff[kMaxD], g_s[kMaxD * (kMaxD + 1) / 2];
    for (int64_t t = tb; t < te; ++t) {
      scalar_t* base = t == 0 ? nullptr : parts.data() + (t - 1) * per;
      scalar_t* gc = g_centres ? (t == 0 ? g_centres : base) : nullptr;
      scalar_t* gs = g_shapes ? (t == 0 ? g_shapes : base + (g_centres ? n_kernels * a.d : 0)) : nullptr;
      scalar_t* gw = g_weights ? (t == 0 ? g_weights
                                         : base + (g_centres ? n_kernels * a.d : 0) + (g_shapes ? n_kernels * a.P : 0))
                               : nullptr;
      const int64_t i0 = a.n * t / nt, i1 = a.n * (t + 1) / nt;
      for (int64_t i = i0; i < i1; ++i) {
        const scalar_t den = point_kernels(i, x, idx, centres, shapes, a, diff, phi);
        const scalar_t* g = grad_out + i * a.C;
        for (int j = 0; j < a.k; ++j) {
          const int64_t kid = idx[i * a.k + j];
          const scalar_t pt = phi[j] / den;
          const scalar_t* w = weights + kid * a.C;
          scalar_t dpt = 0;
          if (freqs != nullptr) {
            dpt = sin_row_backward<scalar_t>(pt, freqs, w, g, gw != nullptr ? gw + kid * a.C : nullptr, a.C);
          } else {
            for (int c = 0; c < a.C; ++c) dpt += g[c] * w[c];
            if (gw != nullptr)
              for (int c = 0; c < a.C; ++c) gw[kid * a.C + c] += g[c] * pt;
          }
          if (gx == nullptr && gc == nullptr && gs == nullptr) continue;
          // the denominator is detached: phi~ = phi / den passes dpt / den to phi
          kernel_grad(diff + j * a.d, shapes + kid * a.P, phi[j], dpt / den, a, g_diff, g_s);
          for (int q = 0; q < a.d; ++q) {
            if (gx != nullptr) gx[i * a.d + q] += g_diff[q];
            if (gc != nullptr) gc[kid * a.d + q] -= g_diff[q];
          }
          if (gs != nullptr)
            for (int q = 0; q < a.P; ++q) gs[kid * a.P + q] += g_s[q];
        }
      }
    }
  });
  if (nt > 1) {
    at::parallel_for(0, per, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t t = 1; t < nt; ++t) {
        const scalar_t* p = parts.data() + (t - 1) * per;
        for (int64_t j = b; j < e; ++j) {
          // the part's layout is [centres | shapes | weights], each present only when asked
          int64_t off = j;
          if (g_centres) {
            if (off < n_kernels * a.d) { g_centres[off] += p[j]; continue; }
            off -= n_kernels * a.d;
          }
          if (g_shapes) {
            if (off < n_kernels * a.P) { g_shapes[off] += p[j]; continue; }
            off -= n_kernels * a.P;
          }
          g_weights[off] += p[j];
        }
      }
    });
  }
}

Args make_args(const torch::Tensor& x, const torch::Tensor& idx, const torch::Tensor& shapes,
               const torch::Tensor& weights, int64_t kernel, int64_t shape, bool normalize) {
  TORCH_CHECK(x.dim() == 2 && idx.dim() == 2 && idx.size(0) == x.size(0), "rbf kernel: x [N, d], idx [N, k]");
  TORCH_CHECK(x.size(1) >= 1 && x.size(1) <= kMaxD, "rbf kernel: 1 to 4 input dims");
  TORCH_CHECK(idx.size(1) >= 1 && idx.size(1) <= kMaxK, "rbf kernel: 1 to 64 neighbours");
  TORCH_CHECK(idx.scalar_type() == torch::kInt64, "rbf kernel: int64 neighbour indices");
  return Args{x.size(0), x.size(1), idx.size(1), weights.size(1), shapes.size(1), (int)kernel, (int)shape, normalize};
}

}  // namespace

torch::Tensor rbf_forward(torch::Tensor x, torch::Tensor idx, torch::Tensor centres, torch::Tensor shapes,
                          torch::Tensor weights, torch::Tensor freqs, int64_t kernel, int64_t shape, bool normalize) {
  const Args a = make_args(x, idx, shapes, weights, kernel, shape, normalize);
  auto out = torch::empty({a.n, a.C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rbf_forward", [&] {
    forward_impl<scalar_t>(x.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), centres.data_ptr<scalar_t>(),
                           shapes.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
                           freqs.numel() ? freqs.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), a);
  });
  return out;
}

std::vector<torch::Tensor> rbf_backward(torch::Tensor grad_out, torch::Tensor x, torch::Tensor idx,
                                        torch::Tensor centres, torch::Tensor shapes, torch::Tensor weights,
                                        torch::Tensor freqs, int64_t kernel, int64_t shape, bool normalize,
                                        bool need_x, bool need_centres, bool need_shapes, bool need_weights) {
  const Args a = make_args(x, idx, shapes, weights, kernel, shape, normalize);
  auto none = torch::empty({0}, x.options());
  auto gx = need_x ? torch::zeros_like(x) : none;
  auto gc = need_centres ? torch::zeros_like(centres) : none;
  auto gs = need_shapes ? torch::zeros_like(shapes) : none;
  auto gw = need_weights ? torch::zeros_like(weights) : none;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rbf_backward", [&] {
    backward_impl<scalar_t>(x.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), centres.data_ptr<scalar_t>(),
                            shapes.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
                            freqs.numel() ? freqs.data_ptr<scalar_t>() : nullptr, grad_out.data_ptr<scalar_t>(),
                            need_x ? gx.data_ptr<scalar_t>() : nullptr, need_centres ? gc.data_ptr<scalar_t>() : nullptr,
                            need_shapes ? gs.data_ptr<scalar_t>() : nullptr,
                            need_weights ? gw.data_ptr<scalar_t>() : nullptr, centres.size(0), a);
  });
  return {gx, gc, gs, gw};
}
