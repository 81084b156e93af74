// Fused CPU kernels for volume rendering: occupancy-grid marching and packed compositing.
//
// The PyTorch code in renderers/volume.py is the reference for every function here; the
// formulas below follow it operation for operation where the tests compare bit for bit
// (marching: the same float32 lattice and cell arithmetic, built with -ffp-contract=off so that
// only the multiply-adds that torch.addcmul fuses are fused, with std::fma), and within rounding
// elsewhere (compositing sums run in double).
//
// Threads: at::parallel_for over rays (marching) or over runs of one ray's samples
// (compositing); every output element is written by exactly one thread.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// Candidate steps k_first[r] .. k_first[r] + counts[r] - 1 of ray r are kept when the midpoint's
// level-0 cell coordinate p + q * k (float32, as `OccupancyGrid.lookup_cells`) lies in an occupied
// cell; without a grid every candidate is kept. With `macro` (the grid pooled over block^3 cells
// and dilated by one block, `OccupancyGrid.macro_occupancy`), runs of m steps whose first
// midpoint falls in an unmarked block are skipped whole, as the PyTorch march's coarse pass.
std::vector<torch::Tensor> march_cells(torch::Tensor k_first, torch::Tensor counts, torch::Tensor base,
                                       torch::Tensor pq, torch::Tensor binaries, int64_t rx, int64_t ry,
                                       int64_t rz, double dt, torch::Tensor macro, int64_t block, int64_t m) {
  TORCH_CHECK(k_first.scalar_type() == torch::kInt64 && counts.scalar_type() == torch::kInt64, "int64 steps");
  TORCH_CHECK(base.scalar_type() == torch::kFloat32, "base must be float32");
  const int64_t n = k_first.size(0);
  const bool grid = binaries.numel() > 0;
  k_first = k_first.contiguous();
  counts = counts.contiguous();
  base = base.contiguous();
  const int64_t* kf = k_first.data_ptr<int64_t>();
  const int64_t* cnt = counts.data_ptr<int64_t>();
  const float* b = base.data_ptr<float>();
  const float* g = nullptr;
  const bool* occ = nullptr;
  if (grid) {
    pq = pq.contiguous();
    binaries = binaries.contiguous();
    TORCH_CHECK(pq.scalar_type() == torch::kFloat32 && pq.size(0) == n && pq.size(1) == 6, "pq must be float32 [n, 6]");
    TORCH_CHECK(binaries.scalar_type() == torch::kBool && binaries.numel() == rx * ry * rz, "binaries must be bool [rx*ry*rz]");
    g = pq.data_ptr<float>();
    occ = binaries.data_ptr<bool>();
  }
  const bool coarse = grid && macro.numel() > 0 && m > 0;
  const bool* mac = nullptr;
  int64_t mx = 1, my = 1, mz = 1;
  if (coarse) {
    macro = macro.contiguous();
    TORCH_CHECK(macro.scalar_type() == torch::kBool && macro.dim() == 3, "macro must be bool [mx, my, mz]");
    mac = macro.data_ptr<bool>();
    mx = macro.size(0); my = macro.size(1); mz = macro.size(2);
  }
  const float fb = static_cast<float>(block);
  auto block_marked = [&](int64_t r, float kk) -> bool {
    const float* p = g + 6 * r;
    float bx = std::floor(std::fma(p[3], kk, p[0]) / fb), by = std::floor(std::fma(p[4], kk, p[1]) / fb);
    float bz = std::floor(std::fma(p[5], kk, p[2]) / fb);
    int64_t ix = static_cast<int64_t>(std::min(std::max(bx, 0.0f), static_cast<float>(mx - 1)));
    int64_t iy = static_cast<int64_t>(std::min(std::max(by, 0.0f), static_cast<float>(my - 1)));
    int64_t iz = static_cast<int64_t>(std::min(std::max(bz, 0.0f), static_cast<float>(mz - 1)));
    return mac[(ix * my + iy) * mz + iz];
  };
  const float dtf = static_cast<float>(dt);
  const float fx = static_cast<float>(rx - 1), fy = static_cast<float>(ry - 1), fz = static_cast<float>(rz - 1);

  auto kept = [&](int64_t r, float kk) -> bool {
    if (!grid) return true;
    const float* p = g + 6 * r;
    // torch.addcmul (the twin) rounds p + q * k once, as a fused multiply-add
    float ux = std::fma(p[3], kk, p[0]), uy = std::fma(p[4], kk, p[1]), uz = std::fma(p[5], kk, p[2]);
    float ix = std::min(std::max(std::floor(ux), 0.0f), fx);
    float iy = std::min(std::max(std::floor(uy), 0.0f), fy);
    float iz = std::min(std::max(std::floor(uz), 0.0f), fz);
    int64_t flat = (static_cast<int64_t>(ix) * ry + static_cast<int64_t>(iy)) * rz + static_cast<int64_t>(iz);
    return occ[flat];
  };

  // pass 1: samples kept per ray; pass 2: write them at the ray's offset
  std::vector<int64_t> offsets(n + 1, 0);
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t c = 0;
      for (int64_t j = 0; j < cnt[r]; ++j) {
        if (coarse && j % m == 0 && !block_marked(r, static_cast<float>(kf[r] + j))) {
          j += m - 1;
          continue;
        }
        c += kept(r, static_cast<float>(kf[r] + j));
      }
      offsets[r + 1] = c;
    }
  });
  for (int64_t r = 0; r < n; ++r) offsets[r + 1] += offsets[r];
  const int64_t total = offsets[n];
  auto ray_indices = torch::empty({total}, torch::kInt64);
  auto t_starts = torch::empty({total}, torch::kFloat32);
  auto t_ends = torch::empty({total}, torch::kFloat32);
  int64_t* ri = ray_indices.data_ptr<int64_t>();
  float* ts = t_starts.data_ptr<float>();
  float* te = t_ends.data_ptr<float>();
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t o = offsets[r];
      for (int64_t j = 0; j < cnt[r]; ++j) {
        float kk = static_cast<float>(kf[r] + j);
        if (coarse && j % m == 0 && !block_marked(r, kk)) {
          j += m - 1;
          continue;
        }
        if (!kept(r, kk)) continue;
        float s = b[r] + kk * dtf;
        ri[o] = r;
        ts[o] = s;
        te[o] = s + dtf;
        ++o;
      }
    }
  });
  return {ray_indices, t_starts, t_ends};
}

// Runs of equal ray index: [starts[i], starts[i + 1]); `sorted` tells whether every ray has one run.
std::vector<int64_t> runs_of(const int64_t* ri, int64_t n, bool& sorted) {
  std::vector<int64_t> starts;
  sorted = true;
  for (int64_t i = 0; i < n; ++i) {
    if (i == 0 || ri[i] != ri[i - 1]) {
      if (i > 0 && ri[i] < ri[i - 1]) sorted = false;
      starts.push_back(i);
    }
  }
  starts.push_back(n);
  return starts;
}

template <typename F>
void over_runs(const std::vector<int64_t>& starts, bool parallel, F fn) {
  const int64_t n_runs = static_cast<int64_t>(starts.size()) - 1;
  if (parallel) {
    at::parallel_for(0, n_runs, 64, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) fn(starts[k], starts[k + 1]);
    });
  } else {  // a ray split over several runs accumulates into one output row: no threads
    for (int64_t k = 0; k < n_runs; ++k) fn(starts[k], starts[k + 1]);
  }
}

// Transmittance, alpha and weight per sample, and per ray sum w * rgb, sum w, sum w * t_mid.
// rgbs may be empty (then only the per-sample quantities and the sums of w, w * t_mid).
std::vector<torch::Tensor> composite_forward(torch::Tensor sigmas, torch::Tensor rgbs, torch::Tensor t_starts,
                                             torch::Tensor t_ends, torch::Tensor ray_indices, int64_t n_rays) {
  sigmas = sigmas.contiguous();
  t_starts = t_starts.contiguous().to(sigmas.scalar_type());
  t_ends = t_ends.contiguous().to(sigmas.scalar_type());
  ray_indices = ray_indices.contiguous();
  const bool with_rgb = rgbs.numel() > 0;
  if (with_rgb) rgbs = rgbs.contiguous().to(sigmas.scalar_type());
  const int64_t n = sigmas.size(0);
  auto opts = sigmas.options();
  auto trans = torch::empty({n}, opts), alphas = torch::empty({n}, opts), weights = torch::empty({n}, opts);
  auto colors = torch::zeros({n_rays, 3}, opts), opacity = torch::zeros({n_rays, 1}, opts);
  auto depth = torch::zeros({n_rays, 1}, opts);
  const int64_t* ri = ray_indices.data_ptr<int64_t>();
  bool sorted;
  auto starts = runs_of(ri, n, sorted);
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "composite_forward", [&] {
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    const scalar_t* t0 = t_starts.data_ptr<scalar_t>();
    const scalar_t* t1 = t_ends.data_ptr<scalar_t>();
    const scalar_t* rgb = with_rgb ? rgbs.data_ptr<scalar_t>() : nullptr;
    scalar_t* T = trans.data_ptr<scalar_t>();
    scalar_t* A = alphas.data_ptr<scalar_t>();
    scalar_t* W = weights.data_ptr<scalar_t>();
    scalar_t* C = colors.data_ptr<scalar_t>();
    scalar_t* O = opacity.data_ptr<scalar_t>();
    scalar_t* D = depth.data_ptr<scalar_t>();
    over_runs(starts, sorted, [&](int64_t a, int64_t b) {
      double acc = 0.0, c0 = 0.0, c1 = 0.0, c2 = 0.0, o = 0.0, d = 0.0;
      for (int64_t i = a; i < b; ++i) {
        scalar_t s = std::min(sg[i] * (t1[i] - t0[i]), scalar_t(1e4));  // as the twin: inf density stays finite
        scalar_t t = std::exp(-static_cast<scalar_t>(acc));
        scalar_t al = -std::expm1(-s);
        scalar_t w = t * al;
        T[i] = t;
        A[i] = al;
        W[i] = w;
        acc += static_cast<double>(s);
        o += w;
        d += static_cast<double>(w) * (0.5 * (static_cast<double>(t0[i]) + t1[i]));
        if (with_rgb) {
          c0 += static_cast<double>(w) * rgb[3 * i];
          c1 += static_cast<double>(w) * rgb[3 * i + 1];
          c2 += static_cast<double>(w) * rgb[3 * i + 2];
        }
      }
      const int64_t r = ri[a];
      C[3 * r] += c0;
      C[3 * r + 1] += c1;
      C[3 * r + 2] += c2;
      O[r] += o;
      D[r] += d;
    });
  });
  return {weights, trans, alphas, colors, opacity, depth};
}

// Gradients w.r.t. sigmas and rgbs of L(w, T, a, colors, opacity, depth) given the incoming
// gradients (any of the per-sample ones may be empty: zero). With s_i = sigma_i * delta_i,
//   dL/ds_k = gw_k T_k (1 - a_k) + gA_k (1 - a_k) - sum_{i > k, same ray} (gw_i w_i + gT_i T_i),
//   gw_i = gW_i + gC . rgb_i + gO + gD t_mid_i,   dL/drgb_i = gC w_i.
std::vector<torch::Tensor> composite_backward(torch::Tensor g_weights, torch::Tensor g_trans, torch::Tensor g_alphas,
                                              torch::Tensor g_colors, torch::Tensor g_opacity, torch::Tensor g_depth,
                                              torch::Tensor sigmas, torch::Tensor rgbs, torch::Tensor t_starts,
                                              torch::Tensor t_ends, torch::Tensor ray_indices, torch::Tensor weights,
                                              torch::Tensor trans, torch::Tensor alphas) {
  const auto st = sigmas.scalar_type();
  auto prep = [&](torch::Tensor t) { return t.numel() ? t.contiguous().to(st) : t; };
  g_weights = prep(g_weights); g_trans = prep(g_trans); g_alphas = prep(g_alphas);
  g_colors = prep(g_colors); g_opacity = prep(g_opacity); g_depth = prep(g_depth);
  sigmas = sigmas.contiguous();
  t_starts = t_starts.contiguous().to(st);
  t_ends = t_ends.contiguous().to(st);
  ray_indices = ray_indices.contiguous();
  weights = weights.contiguous(); trans = trans.contiguous(); alphas = alphas.contiguous();
  const bool with_rgb = rgbs.numel() > 0;
  if (with_rgb) rgbs = rgbs.contiguous().to(st);
  const int64_t n = sigmas.size(0);
  auto g_sigmas = torch::zeros({n}, sigmas.options());
  auto g_rgbs = with_rgb ? torch::zeros({n, 3}, sigmas.options()) : torch::empty({0}, sigmas.options());
  const int64_t* ri = ray_indices.data_ptr<int64_t>();
  bool sorted;
  auto starts = runs_of(ri, n, sorted);
  AT_DISPATCH_FLOATING_TYPES(st, "composite_backward", [&] {
    auto ptr = [](torch::Tensor& t) -> const scalar_t* { return t.numel() ? t.data_ptr<scalar_t>() : nullptr; };
    const scalar_t *gW = ptr(g_weights), *gT = ptr(g_trans), *gA = ptr(g_alphas);
    const scalar_t *gC = ptr(g_colors), *gO = ptr(g_opacity), *gD = ptr(g_depth);
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    const scalar_t* t0 = t_starts.data_ptr<scalar_t>();
    const scalar_t* t1 = t_ends.data_ptr<scalar_t>();
    const scalar_t* rgb = with_rgb ? rgbs.data_ptr<scalar_t>() : nullptr;
    const scalar_t* W = weights.data_ptr<scalar_t>();
    const scalar_t* T = trans.data_ptr<scalar_t>();
    const scalar_t* A = alphas.data_ptr<scalar_t>();
    scalar_t* gS = g_sigmas.data_ptr<scalar_t>();
    scalar_t* gR = with_rgb ? g_rgbs.data_ptr<scalar_t>() : nullptr;
    // the sums over the rays (gC, gO, gD) are read-only here: runs never write shared rows
    over_runs(starts, true, [&](int64_t a, int64_t b) {
      const int64_t r = ri[a];
      double suffix = 0.0;  // sum over later samples of the ray of gw_i w_i + gT_i T_i
      for (int64_t i = b - 1; i >= a; --i) {
        double gw = gW ? static_cast<double>(gW[i]) : 0.0;
        if (gO) gw += gO[r];
        if (gD) gw += static_cast<double>(gD[r]) * 0.5 * (static_cast<double>(t0[i]) + t1[i]);
        if (gC && with_rgb) {
          gw += static_cast<double>(gC[3 * r]) * rgb[3 * i] + static_cast<double>(gC[3 * r + 1]) * rgb[3 * i + 1] +
                static_cast<double>(gC[3 * r + 2]) * rgb[3 * i + 2];
          gR[3 * i] = gC[3 * r] * W[i];
          gR[3 * i + 1] = gC[3 * r + 1] * W[i];
          gR[3 * i + 2] = gC[3 * r + 2] * W[i];
        }
        const double one_minus_a = 1.0 - static_cast<double>(A[i]);
        double gs = gw * T[i] * one_minus_a - suffix;
        if (gA) gs += static_cast<double>(gA[i]) * one_minus_a;
        suffix += gw * W[i] + (gT ? static_cast<double>(gT[i]) * T[i] : 0.0);
        const scalar_t delta = t1[i] - t0[i];
        // the clamp of the optical thickness at 1e4 passes no gradient beyond it (as the twin)
        gS[i] = (sg[i] * delta <= scalar_t(1e4)) ? static_cast<scalar_t>(gs * delta) : scalar_t(0);
      }
    });
  });
  return {g_sigmas, g_rgbs};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("march_cells", &march_cells, "packed samples of a single-level occupancy grid (fused)");
  m.def("composite_forward", &composite_forward, "packed transmittance, weights and per-ray sums (fused)");
  m.def("composite_backward", &composite_backward, "gradients of composite_forward (fused)");
}
