// Explicit dense grids on the CPU: TensoRF's vector-matrix (VM) product and a trilinear voxel grid.
//
// Semantics are those of the PyTorch twins, which use F.grid_sample(mode="bilinear",
// align_corners=True, padding_mode="zeros"): a coordinate x in [0, 1] lands at x * (r - 1) on an
// axis of r samples; corners outside [0, r - 1] contribute zero. The twins store channels first,
// so one point's C values lie r^2 (or r^3) apart and every corner costs C cache lines; these
// kernels take channel-last tables (the caller passes a contiguous permuted view), where a
// corner is one contiguous row of C values.
//
// * vm_forward(x [N, 3], planes [3, r, r, C], lines [3, r, C]) -> [N, 3, C]: for mode m with plane
//   axes (a, b) and line axis k (modes (0,1,2), (0,2,1), (1,2,0)), the plane is indexed
//   [row = axis b, column = axis a] and out[n, m, c] = P_m,c(x_a, x_b) * L_m,c(x_k).
// * voxel_forward(x [N, 3], grid [r, r, r, C] indexed [z, y, x]) -> [N, C].
// * adam_rows(param, exp_avg, exp_avg_sq [R, C], rows [U], grad [U, C], ...): Adam's step on the
//   given distinct rows only (`fieldstudio.optim.LazyAdam`), in place; PyTorch's index_select /
//   index_copy_ / index_add_ take 3.5x as long on 96k rows of a 96^3 x 28 grid (2.0x on 10k; 2 threads).
//
// Backward passes scatter into the tables. Instead of per-thread copies of the tables (12 MB to
// 100 MB here), the work is split by (mode, channel block): every task walks all points but
// writes only its own block of channels, so no two threads touch one value and the sum over
// points keeps the order of the points (results do not depend on the thread count).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int kModes[3][3] = {{0, 1, 2}, {0, 2, 1}, {1, 2, 0}};

// The two samples around pos = x * (r - 1) and their weights; a weight is zero (and its index
// clamped to a valid one) where the sample falls outside the axis, as grid_sample's zero padding.
template <typename T>
struct Axis {
  int64_t i0, i1;
  T w0, w1;
};

template <typename T>
inline Axis<T> axis_of(T x, int64_t r) {
  const T pos = x * static_cast<T>(r - 1);
  Axis<T> a{0, 0, T(0), T(0)};
  if (!(pos > T(-1) && pos < static_cast<T>(r))) return a;  // also catches NaN
  const T fl = std::floor(pos);
  const int64_t i = static_cast<int64_t>(fl);
  const T f = pos - fl;
  if (i >= 0) { a.i0 = i; a.w0 = T(1) - f; }
  if (i + 1 <= r - 1) { a.i1 = i + 1; a.w1 = f; }
  return a;
}

// Channel blocks such that (modes x blocks) tasks keep every thread busy with a few to spare.
inline int64_t block_size(int64_t C, int64_t modes) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t blocks = std::min<int64_t>(C, std::max<int64_t>(1, (2 * threads + modes - 1) / modes));
  return (C + blocks - 1) / blocks;
}

template <typename T>
void vm_forward_impl(const T* x, const T* planes, const T* lines, T* out, int64_t n, int64_t r, int64_t C) {
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* xp = x + 3 * p;
      for (int m = 0; m < 3; ++m) {
        const Axis<T> A = axis_of(xp[kModes[m][0]], r), B = axis_of(xp[kModes[m][1]], r);
        const Axis<T> K = axis_of(xp[kModes[m][2]], r);
        const T* pm = planes + m * r * r * C;
        const T* p00 = pm + (B.i0 * r + A.i0) * C;
        const T* p01 = pm + (B.i0 * r + A.i1) * C;
        const T* p10 = pm + (B.i1 * r + A.i0) * C;
        const T* p11 = pm + (B.i1 * r + A.i1) * C;
        const T w00 = B.w0 * A.w0, w01 = B.w0 * A.w1, w10 = B.w1 * A.w0, w11 = B.w1 * A.w1;
        const T* l0 = lines + (m * r + K.i0) * C;
        const T* l1 = lines + (m * r + K.i1) * C;
        T* o = out + (p * 3 + m) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const T pv = w00 * p00[c] + w01 * p01[c] + w10 * p10[c] + w11 * p11[c];
          o[c] = pv * (K.w0 * l0[c] + K.w1 * l1[c]);
        }
      }
    }
  });
}

template <typename T>
void vm_backward_impl(const T* g, const T* x, const T* planes, const T* lines, T* gp, T* gl, int64_t n, int64_t r,
                      int64_t C) {
  const int64_t bs = block_size(C, 3), blocks = (C + bs - 1) / bs;
  at::parallel_for(0, 3 * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int m = static_cast<int>(task / blocks);
      const int64_t c0 = (task % blocks) * bs, c1 = std::min(C, c0 + bs);
      const T* pm = planes + m * r * r * C;
      T* gpm = gp ? gp + m * r * r * C : nullptr;
      for (int64_t p = 0; p < n; ++p) {
        const T* xp = x + 3 * p;
        const Axis<T> A = axis_of(xp[kModes[m][0]], r), B = axis_of(xp[kModes[m][1]], r);
        const Axis<T> K = axis_of(xp[kModes[m][2]], r);
        const int64_t o00 = (B.i0 * r + A.i0) * C, o01 = (B.i0 * r + A.i1) * C;
        const int64_t o10 = (B.i1 * r + A.i0) * C, o11 = (B.i1 * r + A.i1) * C;
        const T w00 = B.w0 * A.w0, w01 = B.w0 * A.w1, w10 = B.w1 * A.w0, w11 = B.w1 * A.w1;
        const int64_t q0 = (m * r + K.i0) * C, q1 = (m * r + K.i1) * C;
        const T* gr = g + (p * 3 + m) * C;
        // corners may coincide (clamped indices carry zero weight), so each write is its own
        // read-modify-write, in the same order as the twin's sum
        for (int64_t c = c0; c < c1; ++c) {
          const T gc = gr[c];
          const T lv = K.w0 * lines[q0 + c] + K.w1 * lines[q1 + c];
          if (gpm) {
            const T gl_ = gc * lv;
            gpm[o00 + c] += w00 * gl_;
            gpm[o01 + c] += w01 * gl_;
            gpm[o10 + c] += w10 * gl_;
            gpm[o11 + c] += w11 * gl_;
          }
          if (gl) {
            const T pv = w00 * pm[o00 + c] + w01 * pm[o01 + c] + w10 * pm[o10 + c] + w11 * pm[o11 + c];
            gl[q0 + c] += K.w0 * gc * pv;
            gl[q1 + c] += K.w1 * gc * pv;
          }
        }
      }
    }
  });
}

template <typename T>
struct Corners3 {
  int64_t off[8];
  T w[8];
};

// grid [r, r, r, C] indexed [z, y, x]: corner (dz, dy, dx) in bit order z, y, x
template <typename T>
inline Corners3<T> corners3(const T* xp, int64_t r, int64_t C) {
  const Axis<T> X = axis_of(xp[0], r), Y = axis_of(xp[1], r), Z = axis_of(xp[2], r);
  Corners3<T> k;
  for (int j = 0; j < 8; ++j) {
    const bool dz = j & 4, dy = j & 2, dx = j & 1;
    k.off[j] = (((dz ? Z.i1 : Z.i0) * r + (dy ? Y.i1 : Y.i0)) * r + (dx ? X.i1 : X.i0)) * C;
    k.w[j] = (dz ? Z.w1 : Z.w0) * (dy ? Y.w1 : Y.w0) * (dx ? X.w1 : X.w0);
  }
  return k;
}

template <typename T>
void voxel_forward_impl(const T* x, const T* grid, T* out, int64_t n, int64_t r, int64_t C) {
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const Corners3<T> k = corners3(x + 3 * p, r, C);
      T* o = out + p * C;
      for (int64_t c = 0; c < C; ++c) o[c] = T(0);
      for (int j = 0; j < 8; ++j) {
        const T* row = grid + k.off[j];
        const T w = k.w[j];
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] += w * row[c];
      }
    }
  });
}

template <typename T>
void voxel_backward_impl(const T* g, const T* x, T* gg, int64_t n, int64_t r, int64_t C) {
  const int64_t bs = block_size(C, 1), blocks = (C + bs - 1) / bs;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c0 = task * bs, c1 = std::min(C, c0 + bs);
      for (int64_t p = 0; p < n; ++p) {
        const Corners3<T> k = corners3(x + 3 * p, r, C);
        const T* gr = g + p * C;
        for (int j = 0; j < 8; ++j) {
          T* row = gg + k.off[j];
          const T w = k.w[j];
          for (int64_t c = c0; c < c1; ++c) row[c] += w * gr[c];
        }
      }
    }
  });
}

void check_points(const torch::Tensor& x, const torch::Tensor& table, const char* what) {
  TORCH_CHECK(x.device().is_cpu() && table.device().is_cpu(), what, ": CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3 && x.is_contiguous(), what, ": x must be a contiguous [N, 3] tensor");
  TORCH_CHECK(table.is_contiguous() && table.scalar_type() == x.scalar_type(), what,
              ": contiguous tables of x's dtype");
}

torch::Tensor vm_forward(torch::Tensor x, torch::Tensor planes, torch::Tensor lines) {
  check_points(x, planes, "vm kernel");
  check_points(x, lines, "vm kernel");
  TORCH_CHECK(planes.dim() == 4 && planes.size(0) == 3 && planes.size(1) == planes.size(2), "vm kernel: planes [3, r, r, C]");
  const int64_t r = planes.size(1), C = planes.size(3);
  TORCH_CHECK(lines.dim() == 3 && lines.size(0) == 3 && lines.size(1) == r && lines.size(2) == C, "vm kernel: lines [3, r, C]");
  auto out = torch::empty({x.size(0), 3, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vm_forward", [&] {
    vm_forward_impl<scalar_t>(x.data_ptr<scalar_t>(), planes.data_ptr<scalar_t>(), lines.data_ptr<scalar_t>(),
                              out.data_ptr<scalar_t>(), x.size(0), r, C);
  });
  return out;
}

std::vector<torch::Tensor> vm_backward(torch::Tensor grad, torch::Tensor x, torch::Tensor planes, torch::Tensor lines,
                                       bool need_planes, bool need_lines) {
  check_points(x, planes, "vm kernel");
  TORCH_CHECK(grad.is_contiguous() && grad.scalar_type() == x.scalar_type(), "vm kernel: contiguous grad");
  const int64_t r = planes.size(1), C = planes.size(3);
  auto gp = need_planes ? torch::zeros_like(planes) : torch::Tensor();
  auto gl = need_lines ? torch::zeros_like(lines) : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vm_backward", [&] {
    vm_backward_impl<scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), planes.data_ptr<scalar_t>(),
                               lines.data_ptr<scalar_t>(), need_planes ? gp.data_ptr<scalar_t>() : nullptr,
                               need_lines ? gl.data_ptr<scalar_t>() : nullptr, x.size(0), r, C);
  });
  return {gp, gl};
}

torch::Tensor voxel_forward(torch::Tensor x, torch::Tensor grid) {
  check_points(x, grid, "voxel kernel");
  TORCH_CHECK(grid.dim() == 4 && grid.size(0) == grid.size(1) && grid.size(1) == grid.size(2), "voxel kernel: grid [r, r, r, C]");
  const int64_t r = grid.size(0), C = grid.size(3);
  auto out = torch::empty({x.size(0), C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "voxel_forward", [&] {
    voxel_forward_impl<scalar_t>(x.data_ptr<scalar_t>(), grid.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                 x.size(0), r, C);
  });
  return out;
}

torch::Tensor voxel_backward(torch::Tensor grad, torch::Tensor x, torch::Tensor grid) {
  check_points(x, grid, "voxel kernel");
  TORCH_CHECK(grad.is_contiguous() && grad.scalar_type() == x.scalar_type(), "voxel kernel: contiguous grad");
  const int64_t r = grid.size(0), C = grid.size(3);
  auto gg = torch::zeros_like(grid);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "voxel_backward", [&] {
    voxel_backward_impl<scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gg.data_ptr<scalar_t>(),
                                  x.size(0), r, C);
  });
  return gg;
}

template <typename T>
void adam_rows_impl(T* p, T* m, T* v, const int64_t* rows, const T* g, int64_t n, int64_t C, T lr, T b1, T b2,
                    T eps, T bc1, T bc2) {
  const T step = lr / bc1, inv_bc2 = T(1) / bc2;
  at::parallel_for(0, n, 512, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t o = rows[i] * C;
      const T* gi = g + i * C;
      for (int64_t c = 0; c < C; ++c) {
        const T gc = gi[c];
        const T mc = m[o + c] + (gc - m[o + c]) * (T(1) - b1);  // lerp, as the twin
        const T vc = v[o + c] * b2 + (T(1) - b2) * gc * gc;
        m[o + c] = mc;
        v[o + c] = vc;
        p[o + c] -= step * (mc / (std::sqrt(vc * inv_bc2) + eps));
      }
    }
  });
}

void adam_rows(torch::Tensor p, torch::Tensor m, torch::Tensor v, torch::Tensor rows, torch::Tensor g, double lr,
               double b1, double b2, double eps, double bc1, double bc2) {
  TORCH_CHECK(p.device().is_cpu() && p.dim() == 2 && p.is_contiguous() && m.is_contiguous() && v.is_contiguous()
              && g.is_contiguous() && rows.is_contiguous(), "adam_rows: contiguous CPU tensors");
  TORCH_CHECK(m.sizes() == p.sizes() && v.sizes() == p.sizes() && g.dim() == 2 && g.size(1) == p.size(1)
              && rows.dim() == 1 && rows.size(0) == g.size(0) && rows.scalar_type() == torch::kLong
              && m.scalar_type() == p.scalar_type() && v.scalar_type() == p.scalar_type()
              && g.scalar_type() == p.scalar_type(), "adam_rows: shapes [R, C] x 3, rows [U] (int64), grad [U, C]");
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "adam_rows", [&] {
    adam_rows_impl<scalar_t>(p.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                             rows.data_ptr<int64_t>(), g.data_ptr<scalar_t>(), rows.size(0), p.size(1),
                             scalar_t(lr), scalar_t(b1), scalar_t(b2), scalar_t(eps), scalar_t(bc1), scalar_t(bc2));
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("vm_forward", &vm_forward, "TensoRF VM plane x line features (CPU)");
  m.def("vm_backward", &vm_backward, "gradients of the VM features to planes and lines (CPU)");
  m.def("voxel_forward", &voxel_forward, "trilinear dense voxel grid lookup (CPU)");
  m.def("voxel_backward", &voxel_backward, "gradient of the voxel lookup to the grid (CPU)");
  m.def("adam_rows", &adam_rows, "Adam's step on distinct rows of a [R, C] parameter, in place (CPU)");
}
