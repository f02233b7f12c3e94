// Fused CPU kernels for the diagonal linear recurrence  h_t = a_t ⊙ h_{t-1} + b_t.
//
// Layout [B, L, D], contiguous; `a` is [D] (constant in time) or [B, L, D].
// A complex tensor is read as interleaved (re, im) pairs, so one time step of one batch row is a
// "row" of n = D (real) or 2D (complex) real lanes.
//
// One work item = one batch row × one chunk of lanes, scanned sequentially over time. Each step
// streams one chunk of a row (sequential in memory) through a state buffer that stays in L1, so
// the loop costs one pass over the inputs and outputs: memory bound, not latency bound (a row
// holds many independent recurrences).  Outputs that are far larger than the caches are written
// with non-temporal stores (no read-for-ownership of lines that are only overwritten). A row is
// walked in the direction time moves through memory (falling addresses when the loop runs
// backwards in time): the hardware prefetchers follow a stream that keeps one direction, while
// rising rows visited in falling order left the reverse-time loops latency bound (2-5x slower).
// Big outputs come from a buffer pool (see BufferPool) to avoid page faults.
//
// Backward (forward direction; reverse mirrors it), with g_t = ∂ℓ/∂h_t in PyTorch's conjugate
// convention:
//   δ_t      = g_t + conj(a_{t+1}) δ_{t+1},   δ_L = 0      (a reverse recurrence)
//   ∂ℓ/∂b_t  = δ_t
//   ∂ℓ/∂a_t  = conj(h_{t-1}) δ_t                          (summed over B, L for constant a)
//   ∂ℓ/∂h0   = conj(a_0) δ_0
//
// Ops (torch.ops.ssm_train_scan.*):
//   forward(a, b, h0?, reverse) -> h
//   backward(a, h, h0?, g, reverse, need_grad_a) -> (grad_a, grad_b, grad_h0)
//     grad_a is [B, n] partial sums (one per batch row) for constant a, an empty tensor when not
//     needed; grad_h0 is empty when h0 is None.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
#define SSM_SCAN_SIMD 1
#else
#define SSM_SCAN_SIMD 0
#endif

namespace {

// Outputs larger than this are streamed past the caches.
constexpr int64_t kStreamBytes = int64_t(16) << 20;
// A work item's state buffer (and grad-a accumulator) stays well inside L1.
constexpr int64_t kChunkBytes = 8192;

// ---------------------------------------------------------------------------------------------
// Scalar code: tails of rows, and the whole row when there is no AVX-512. E is T or complex<T>.

template <typename E>
inline E conj_(E x) {
  return x;
}
template <typename T>
inline c10::complex<T> conj_(c10::complex<T> x) {
  return c10::complex<T>(x.real(), -x.imag());
}

template <typename E>
inline void fwd_scalar(const E* a, const E* x, E* h, E* s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const E r = a[i] * s[i] + x[i];
    s[i] = r;
    h[i] = r;
  }
}

// One backward step on n elements. a = coefficient row of the step processed before (null on the
// first step, where δ = g); hp = h_{t-1} row (null when it is zero); ga = grad-a row (varying a)
// or accumulator (constant a).
template <typename E, bool kVaryA, bool kGradA>
inline void bwd_scalar(const E* a, const E* g, const E* hp, E* gx, E* ga, E* s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    E d = g[i];
    if (a != nullptr) d = d + conj_(a[i]) * s[i];
    s[i] = d;
    gx[i] = d;
    if (kGradA) {
      const E c = hp != nullptr ? conj_(hp[i]) * d : E(0);
      if (kVaryA) {
        ga[i] = c;
      } else {
        ga[i] = ga[i] + c;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 code on real lanes; complex numbers are (re, im) lane pairs.

#if SSM_SCAN_SIMD
template <typename T>
struct Simd;

template <>
struct Simd<float> {
  using V = __m512;
  static constexpr int64_t W = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void stream(float* p, V v) { _mm512_stream_ps(p, v); }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V x, V y) { return _mm512_add_ps(x, y); }
  static V mul(V x, V y) { return _mm512_mul_ps(x, y); }
  static V fmadd(V x, V y, V z) { return _mm512_fmadd_ps(x, y, z); }
  static V fmaddsub(V x, V y, V z) { return _mm512_fmaddsub_ps(x, y, z); }
  static V fmsubadd(V x, V y, V z) { return _mm512_fmsubadd_ps(x, y, z); }
  static V re(V x) { return _mm512_moveldup_ps(x); }        // (re, re) of each pair
  static V im(V x) { return _mm512_movehdup_ps(x); }        // (im, im)
  static V swap(V x) { return _mm512_permute_ps(x, 0xB1); } // (im, re)
};

template <>
struct Simd<double> {
  using V = __m512d;
  static constexpr int64_t W = 8;
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static void stream(double* p, V v) { _mm512_stream_pd(p, v); }
  static V zero() { return _mm512_setzero_pd(); }
  static V add(V x, V y) { return _mm512_add_pd(x, y); }
  static V mul(V x, V y) { return _mm512_mul_pd(x, y); }
  static V fmadd(V x, V y, V z) { return _mm512_fmadd_pd(x, y, z); }
  static V fmaddsub(V x, V y, V z) { return _mm512_fmaddsub_pd(x, y, z); }
  static V fmsubadd(V x, V y, V z) { return _mm512_fmsubadd_pd(x, y, z); }
  static V re(V x) { return _mm512_movedup_pd(x); }
  static V im(V x) { return _mm512_permute_pd(x, 0xFF); }
  static V swap(V x) { return _mm512_permute_pd(x, 0x55); }
};

// x*y + z, and conj(x)*y (+ z), on real lanes or on (re, im) pairs.
template <typename T, bool kCx>
struct Arith {
  using S = Simd<T>;
  using V = typename S::V;
  static V mul_add(V x, V y, V z) {
    if constexpr (kCx) {
      // (xr yr - xi yi, xr yi + xi yr): fmaddsub subtracts in even lanes, adds in odd ones.
      return S::add(S::fmaddsub(S::re(x), y, S::mul(S::im(x), S::swap(y))), z);
    } else {
      return S::fmadd(x, y, z);
    }
  }
  static V conj_mul(V x, V y) {
    if constexpr (kCx) {
      // (xr yr + xi yi, xr yi - xi yr)
      return S::fmsubadd(S::re(x), y, S::mul(S::im(x), S::swap(y)));
    } else {
      return S::mul(x, y);
    }
  }
  static V conj_mul_add(V x, V y, V z) {
    if constexpr (kCx) {
      return S::add(conj_mul(x, y), z);
    } else {
      return S::fmadd(x, y, z);
    }
  }
};

template <typename T, bool kStream>
inline void put(T* p, typename Simd<T>::V v) {
  if constexpr (kStream) {
    Simd<T>::stream(p, v);
  } else {
    Simd<T>::store(p, v);
  }
}
#endif

// ---------------------------------------------------------------------------------------------
// Work items.

struct Geometry {
  int64_t B, L, n;  // n = real lanes per row
  int64_t chunk;    // lanes per work item (multiple of 64, so pairs and vectors never split)
  int64_t n_chunks;
  bool stream;
};

template <typename T>
Geometry make_geometry(int64_t B, int64_t L, int64_t n, const void* out_ptr) {
  Geometry geo{B, L, n, 0, 0, false};
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t chunk = std::max<int64_t>(64, kChunkBytes / int64_t(sizeof(T)));
  // Enough items to keep every thread busy, but rows not cut finer than 64 lanes.
  const int64_t want_split = (threads + std::max<int64_t>(B, 1) - 1) / std::max<int64_t>(B, 1);
  if (want_split > 1) chunk = std::min(chunk, (n + want_split - 1) / want_split);
  chunk = std::max<int64_t>(64, (chunk + 63) / 64 * 64);
  geo.chunk = chunk;
  geo.n_chunks = n == 0 ? 0 : (n + chunk - 1) / chunk;
  const int64_t bytes = B * L * n * int64_t(sizeof(T));
  geo.stream = SSM_SCAN_SIMD && bytes >= kStreamBytes && (n * int64_t(sizeof(T))) % 64 == 0 &&
               reinterpret_cast<uintptr_t>(out_ptr) % 64 == 0;
  return geo;
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T, bool kCx, bool kVaryA, bool kStream>
void forward_item(const T* a, const T* x, const T* h0, T* h, const Geometry& geo, int64_t bi,
                  int64_t c0, bool reverse) {
  using E = std::conditional_t<kCx, c10::complex<T>, T>;
  const int64_t L = geo.L, n = geo.n;
  const int64_t w = std::min(geo.chunk, n - c0);
  alignas(64) T s[kChunkBytes / sizeof(T) + 64];
  if (h0 != nullptr) {
    std::memcpy(s, h0 + bi * n + c0, w * sizeof(T));
  } else {
    std::fill(s, s + w, T(0));
  }
  const int64_t base = bi * L * n + c0;
#if SSM_SCAN_SIMD
  using S = Simd<T>;
  using Ar = Arith<T, kCx>;
  const int64_t wv = w / S::W * S::W;
#else
  const int64_t wv = 0;
#endif
  for (int64_t i = 0; i < L; ++i) {
    const int64_t t = reverse ? L - 1 - i : i;
    const int64_t off = base + t * n;
    const T* ar = kVaryA ? a + off : a + c0;
    const T* xr = x + off;
    T* hr = h + off;
#if SSM_SCAN_SIMD
    for (int64_t k = 0; k < wv; k += S::W) {
      const int64_t v = reverse ? wv - S::W - k : k;  // walk the row in the direction of time
      const auto r = Ar::mul_add(S::load(ar + v), S::load(s + v), S::load(xr + v));
      S::store(s + v, r);
      put<T, kStream>(hr + v, r);
    }
#endif
    if (wv < w) {
      const int64_t k = kCx ? 2 : 1;
      fwd_scalar<E>(reinterpret_cast<const E*>(ar + wv), reinterpret_cast<const E*>(xr + wv),
                    reinterpret_cast<E*>(hr + wv), reinterpret_cast<E*>(s + wv), (w - wv) / k);
    }
  }
#if SSM_SCAN_SIMD
  if constexpr (kStream) _mm_sfence();
#endif
}

template <typename T, bool kCx, bool kVaryA>
void forward_typed(const at::Tensor& a, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
                   at::Tensor& h, bool reverse) {
  const int64_t B = x.size(0), L = x.size(1), n = x.size(2) * (kCx ? 2 : 1);
  const T* ap = reinterpret_cast<const T*>(a.const_data_ptr());
  const T* xp = reinterpret_cast<const T*>(x.const_data_ptr());
  const T* h0p = h0.has_value() ? reinterpret_cast<const T*>(h0->const_data_ptr()) : nullptr;
  T* hp = reinterpret_cast<T*>(h.mutable_data_ptr());
  const Geometry geo = make_geometry<T>(B, L, n, hp);
  auto run = [&](auto stream_tag) {
    constexpr bool kStream = decltype(stream_tag)::value;
    at::parallel_for(0, B * geo.n_chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        forward_item<T, kCx, kVaryA, kStream>(ap, xp, h0p, hp, geo, item / geo.n_chunks,
                                              (item % geo.n_chunks) * geo.chunk, reverse);
      }
    });
  };
  if (geo.stream) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <typename T, bool kCx, bool kVaryA, bool kGradA, bool kStream>
void backward_item(const T* a, const T* h, const T* h0, const T* g, T* gx, T* ga, T* gh0,
                   const Geometry& geo, int64_t bi, int64_t c0, bool reverse) {
  using E = std::conditional_t<kCx, c10::complex<T>, T>;
  const int64_t L = geo.L, n = geo.n;
  const int64_t w = std::min(geo.chunk, n - c0);
  alignas(64) T s[kChunkBytes / sizeof(T) + 64];    // δ
  alignas(64) T acc[kChunkBytes / sizeof(T) + 64];  // Σ conj(h_{t-1}) δ_t, constant a
  std::fill(s, s + w, T(0));
  if (!kVaryA && kGradA) std::fill(acc, acc + w, T(0));
  const int64_t base = bi * L * n + c0;
  const int64_t dir = reverse ? -1 : 1;              // forward recurrence: h_t from h_{t-dir}
  const int64_t t_first = reverse ? L - 1 : 0;       // first step of the forward recurrence
  const T* h0r = h0 != nullptr ? h0 + bi * n + c0 : nullptr;
#if SSM_SCAN_SIMD
  using S = Simd<T>;
  using Ar = Arith<T, kCx>;
  const int64_t wv = w / S::W * S::W;
#else
  const int64_t wv = 0;
#endif
  for (int64_t i = 0; i < L; ++i) {
    const int64_t t = reverse ? i : L - 1 - i;
    const int64_t off = base + t * n;
    // Coefficient coupling δ_t to δ_{t+dir} (the step processed just before); none at i = 0.
    const T* cr = i == 0 ? nullptr : (kVaryA ? a + off + dir * n : a + c0);
    const T* hpr = t == t_first ? h0r : h + off - dir * n;  // h_{t-dir}, null when zero
    const T* gr = g + off;
    T* gxr = gx + off;
    T* gar = kVaryA ? ga + off : acc;
#if SSM_SCAN_SIMD
    for (int64_t k = 0; k < wv; k += S::W) {
      const int64_t v = reverse ? k : wv - S::W - k;
      auto d = S::load(gr + v);
      if (cr != nullptr) d = Ar::conj_mul_add(S::load(cr + v), S::load(s + v), d);
      S::store(s + v, d);
      put<T, kStream>(gxr + v, d);
      if constexpr (kGradA) {
        if constexpr (kVaryA) {
          put<T, kStream>(gar + v, hpr != nullptr ? Ar::conj_mul(S::load(hpr + v), d) : S::zero());
        } else if (hpr != nullptr) {
          S::store(gar + v, Ar::conj_mul_add(S::load(hpr + v), d, S::load(gar + v)));
        }
      }
    }
#endif
    if (wv < w) {
      const int64_t k = kCx ? 2 : 1;
      bwd_scalar<E, kVaryA, kGradA>(
          reinterpret_cast<const E*>(cr == nullptr ? nullptr : cr + wv),
          reinterpret_cast<const E*>(gr + wv),
          reinterpret_cast<const E*>(hpr == nullptr ? nullptr : hpr + wv),
          reinterpret_cast<E*>(gxr + wv), reinterpret_cast<E*>(gar + wv),
          reinterpret_cast<E*>(s + wv), (w - wv) / k);
    }
  }
  if (!kVaryA && kGradA) std::memcpy(ga + bi * n + c0, acc, w * sizeof(T));
  if (gh0 != nullptr && L > 0) {
    // ∂ℓ/∂h0 = conj(a_{t_first}) δ_{t_first}; s holds δ_{t_first} now.
    const T* ar = kVaryA ? a + base + t_first * n : a + c0;
    E* out = reinterpret_cast<E*>(gh0 + bi * n + c0);
    const E* ae = reinterpret_cast<const E*>(ar);
    const E* se = reinterpret_cast<const E*>(s);
    for (int64_t j = 0; j < w / (kCx ? 2 : 1); ++j) out[j] = conj_(ae[j]) * se[j];
  } else if (gh0 != nullptr) {
    std::fill(gh0 + bi * n + c0, gh0 + bi * n + c0 + w, T(0));
  }
#if SSM_SCAN_SIMD
  if constexpr (kStream) _mm_sfence();
#endif
}

template <typename T, bool kCx, bool kVaryA>
void backward_typed(const at::Tensor& a, const at::Tensor& h, const c10::optional<at::Tensor>& h0,
                    const at::Tensor& g, at::Tensor& gx, at::Tensor& ga, at::Tensor& gh0,
                    bool reverse, bool need_grad_a) {
  const int64_t B = h.size(0), L = h.size(1), n = h.size(2) * (kCx ? 2 : 1);
  auto cp = [](const at::Tensor& x) { return reinterpret_cast<const T*>(x.const_data_ptr()); };
  auto mp = [](at::Tensor& x) { return reinterpret_cast<T*>(x.mutable_data_ptr()); };
  const T* ap = cp(a);
  const T* hp = cp(h);
  const T* gp = cp(g);
  const T* h0p = h0.has_value() ? cp(*h0) : nullptr;
  T* gxp = mp(gx);
  T* gap = need_grad_a ? mp(ga) : nullptr;
  T* gh0p = h0.has_value() ? mp(gh0) : nullptr;
  const Geometry geo = make_geometry<T>(B, L, n, gxp);
  const bool stream = geo.stream && (!need_grad_a || !kVaryA ||
                                     reinterpret_cast<uintptr_t>(gap) % 64 == 0);
  auto run = [&](auto stream_tag, auto grad_a_tag) {
    constexpr bool kStream = decltype(stream_tag)::value;
    constexpr bool kGradA = decltype(grad_a_tag)::value;
    at::parallel_for(0, B * geo.n_chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        backward_item<T, kCx, kVaryA, kGradA, kStream>(ap, hp, h0p, gp, gxp, gap, gh0p, geo,
                                                       item / geo.n_chunks,
                                                       (item % geo.n_chunks) * geo.chunk, reverse);
      }
    });
  };
  if (stream && need_grad_a) run(std::true_type{}, std::true_type{});
  else if (stream) run(std::true_type{}, std::false_type{});
  else if (need_grad_a) run(std::false_type{}, std::true_type{});
  else run(std::false_type{}, std::false_type{});
}


// ---------------------------------------------------------------------------------------------
// Buffer pool for the big outputs (h, ∂b, ∂a).
//
// A fresh multi-MB tensor is mapped page by page on first touch; on a VM a 4 KiB page fault
// costs about as much as moving 10-20 KiB, so a scan that writes into fresh memory runs several
// times slower than the same scan into touched memory. Freed outputs therefore go back to this
// pool and the next output of the same (rounded) size reuses them, as a training step does
// every iteration. New buffers are 2 MiB aligned and advised as huge pages (fewer faults).
// Idle bytes are capped by $SSM_TRAIN_SCAN_POOL_MB (default: a quarter of physical memory;
// 0 turns the pool off); `empty_cache()` frees the idle buffers.

class BufferPool {
 public:
  static BufferPool& get() {
    static BufferPool* pool = new BufferPool();  // leaked: deleters may run during exit
    return *pool;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    const size_t bytes = size_t(c10::multiply_integers(sizes)) * c10::elementSize(options.dtype().toScalarType());
    if (bytes < kMinBytes || limit_ == 0) return at::empty(sizes, options);
    const size_t rounded = (bytes + kGranule - 1) / kGranule * kGranule;
    void* p = take(rounded);
    if (p == nullptr) p = allocate(rounded);
    return at::from_blob(p, sizes, [rounded](void* q) { BufferPool::get().give(q, rounded); }, options);
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& kv : idle_) std::free(kv.second);
    idle_.clear();
    idle_bytes_ = 0;
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {int64_t(idle_bytes_), int64_t(idle_.size()), int64_t(hits_), int64_t(misses_)};
  }

 private:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static constexpr size_t kGranule = size_t(2) << 20;

  BufferPool() {
    const char* env = std::getenv("SSM_TRAIN_SCAN_POOL_MB");
    if (env != nullptr && *env != '\0') {
      limit_ = size_t(std::max(0LL, std::atoll(env))) << 20;
    } else {
#if defined(__linux__)
      limit_ = size_t(sysconf(_SC_PHYS_PAGES)) * size_t(sysconf(_SC_PAGESIZE)) / 4;
#else
      limit_ = size_t(1) << 30;
#endif
    }
  }

  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = idle_.find(bytes);
    if (it == idle_.end()) {
      ++misses_;
      return nullptr;
    }
    ++hits_;
    void* p = it->second;
    idle_.erase(it);
    idle_bytes_ -= bytes;
    return p;
  }

  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (idle_bytes_ + bytes <= limit_) {
        idle_.emplace(bytes, p);
        idle_bytes_ += bytes;
        return;
      }
    }
    std::free(p);
  }

  static void* allocate(size_t bytes) {
    void* p = nullptr;
    TORCH_CHECK_WITH(OutOfMemoryError, posix_memalign(&p, kGranule, bytes) == 0 && p != nullptr,
                     "ssm_train_scan: out of memory allocating ", bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, bytes, MADV_HUGEPAGE);  // advisory; failure is harmless
#endif
    return p;
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> idle_;
  size_t idle_bytes_ = 0, limit_ = 0, hits_ = 0, misses_ = 0;
};

at::Tensor pooled_empty_like(const at::Tensor& x) { return BufferPool::get().empty(x.sizes(), x.options()); }

// ---------------------------------------------------------------------------------------------
// Checks and dispatch.

void check_inputs(const at::Tensor& a, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
                  const char* what) {
  TORCH_CHECK(x.device().is_cpu(), "ssm_train_scan.", what, ": CPU tensors only, got ", x.device());
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "ssm_train_scan.", what,
              ": expected a contiguous [B, L, D] tensor, got ", x.sizes());
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kComplexFloat ||
                  st == at::kComplexDouble,
              "ssm_train_scan.", what, ": dtype must be float32/64 or complex64/128, got ", st);
  TORCH_CHECK(a.scalar_type() == st && a.is_contiguous() && a.device() == x.device(),
              "ssm_train_scan.", what, ": a must be contiguous with the same dtype and device");
  TORCH_CHECK((a.dim() == 1 && a.size(0) == x.size(2)) || a.sizes() == x.sizes(),
              "ssm_train_scan.", what, ": a must be [D] or [B, L, D], got ", a.sizes());
  if (h0.has_value()) {
    TORCH_CHECK(h0->scalar_type() == st && h0->is_contiguous() && h0->dim() == 2 &&
                    h0->size(0) == x.size(0) && h0->size(1) == x.size(2),
                "ssm_train_scan.", what, ": h0 must be a contiguous [B, D] tensor of the same dtype");
  }
}

template <typename F>
void dispatch(at::ScalarType st, bool vary_a, F&& f) {
  auto with_vary = [&](auto type_tag, auto cx_tag) {
    if (vary_a) f(type_tag, cx_tag, std::true_type{});
    else f(type_tag, cx_tag, std::false_type{});
  };
  switch (st) {
    case at::kFloat: with_vary(float{}, std::false_type{}); break;
    case at::kDouble: with_vary(double{}, std::false_type{}); break;
    case at::kComplexFloat: with_vary(float{}, std::true_type{}); break;
    case at::kComplexDouble: with_vary(double{}, std::true_type{}); break;
    default: TORCH_CHECK(false, "ssm_train_scan: unsupported dtype ", st);
  }
}

at::Tensor scan_forward(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& h0,
                        bool reverse) {
  check_inputs(a, b, h0, "forward");
  at::Tensor h = pooled_empty_like(b);
  const bool vary_a = a.dim() == 3;
  dispatch(b.scalar_type(), vary_a, [&](auto type_tag, auto cx_tag, auto vary_tag) {
    using T = decltype(type_tag);
    forward_typed<T, decltype(cx_tag)::value, decltype(vary_tag)::value>(a, b, h0, h, reverse);
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_backward(
    const at::Tensor& a, const at::Tensor& h, const c10::optional<at::Tensor>& h0,
    const at::Tensor& g, bool reverse, bool need_grad_a) {
  check_inputs(a, h, h0, "backward");
  TORCH_CHECK(g.sizes() == h.sizes() && g.scalar_type() == h.scalar_type() && g.is_contiguous(),
              "ssm_train_scan.backward: grad must be contiguous and like h");
  const bool vary_a = a.dim() == 3;
  at::Tensor gx = pooled_empty_like(h);
  at::Tensor ga = !need_grad_a ? at::empty({0}, h.options())
                  : vary_a     ? pooled_empty_like(h)
                               : at::empty({h.size(0), h.size(2)}, h.options());
  at::Tensor gh0 = h0.has_value() ? at::empty_like(*h0) : at::empty({0}, h.options());
  dispatch(h.scalar_type(), vary_a, [&](auto type_tag, auto cx_tag, auto vary_tag) {
    using T = decltype(type_tag);
    backward_typed<T, decltype(cx_tag)::value, decltype(vary_tag)::value>(a, h, h0, g, gx, ga, gh0,
                                                                         reverse, need_grad_a);
  });
  return {ga, gx, gh0};
}

bool has_simd() { return SSM_SCAN_SIMD; }
void empty_cache() { BufferPool::get().empty_cache(); }
std::vector<int64_t> pool_stats() { return BufferPool::get().stats(); }

}  // namespace

TORCH_LIBRARY(ssm_train_scan, m) {
  m.def("forward(Tensor a, Tensor b, Tensor? h0, bool reverse) -> Tensor");
  m.def("backward(Tensor a, Tensor h, Tensor? h0, Tensor g, bool reverse, bool need_grad_a)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("has_simd() -> bool", &has_simd);
  m.def("empty_cache() -> ()", &empty_cache);
  m.def("pool_stats() -> int[]", &pool_stats);
}

TORCH_LIBRARY_IMPL(ssm_train_scan, CPU, m) {
  m.impl("forward", &scan_forward);
  m.impl("backward", &scan_backward);
}
