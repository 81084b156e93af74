// Large CPU buffers on transparent huge pages, recycled between training steps.
//
// Why: a hash-grid level is a few MB read and written at random. With 4 KB pages nearly every
// corner lookup misses the TLB (one 2^19-entry level spans 1024 pages), and a fresh gradient or
// output buffer every step pays one page fault per 4 KB (16k faults for a 64 MB table gradient).
// Buffers of 2 MB and more are therefore allocated 2 MB-aligned and advised MADV_HUGEPAGE (a no-op
// where the kernel has no THP), and a freed buffer is kept for the next request of about the same
// size, so the per-step buffers of a training loop stop faulting after the first step. The cache
// is small and bounded (kMaxCached buffers, kMaxCachedBytes in all; least recently freed kept).
#include <torch/extension.h>
#include <sys/mman.h>

#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

namespace {

constexpr size_t kHuge = size_t(2) << 20;
constexpr size_t kMaxCachedBytes = size_t(256) << 20;
constexpr size_t kMaxCached = 8;

// Leaked on purpose: deleters can run during interpreter shutdown, after static destructors.
std::mutex& cache_mutex() {
  static auto* m = new std::mutex();
  return *m;
}
std::vector<std::pair<size_t, void*>>& cache() {
  static auto* c = new std::vector<std::pair<size_t, void*>>();
  return *c;
}
size_t cached_bytes = 0;

void release(void* p, size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    auto& c = cache();
    if (bytes <= kMaxCachedBytes) {
      // make room, dropping the least recently freed buffers first
      while (!c.empty() && (c.size() >= kMaxCached || cached_bytes + bytes > kMaxCachedBytes)) {
        std::free(c.front().second);
        cached_bytes -= c.front().first;
        c.erase(c.begin());
      }
      c.emplace_back(bytes, p);
      cached_bytes += bytes;
      return;
    }
  }
  std::free(p);
}

// A cached buffer of at least `bytes` and at most twice that (the smallest such), or a new one.
std::pair<void*, size_t> acquire(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    auto& c = cache();
    int best = -1;
    for (size_t i = 0; i < c.size(); ++i)
      if (c[i].first >= bytes && c[i].first <= 2 * bytes && (best < 0 || c[i].first < c[best].first)) best = (int)i;
    if (best >= 0) {
      auto hit = c[best];
      c.erase(c.begin() + best);
      cached_bytes -= hit.first;
      return {hit.second, hit.first};
    }
  }
  void* p = std::aligned_alloc(kHuge, bytes);
  if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return {p, bytes};
}

}  // namespace

// An uninitialised CPU tensor; huge-page backed and recycled when it is 2 MB or larger.
torch::Tensor huge_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (bytes < kHuge) return torch::empty(sizes, options);
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  auto got = acquire(rounded);
  const size_t held = got.second;
  return torch::from_blob(got.first, sizes, [held](void* p) { release(p, held); }, options);
}

torch::Tensor huge_zeros(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return huge_empty(sizes, options).zero_();
}
