// Fused CPU kernels for Mamba's selective scan (S6), with the discretisation and the read-out inside:
//
//   h_t,cn = k_t exp(Δ_tc A_cn) h_{t-1},cn + Δ_tc B_tn x_tc,   h_{-1} = h0 (zero if absent)
//   y_tc   = Σ_n C_tn h_t,cn
//
// with k_t = 0 where resets[b, t] (a document starts at t: nothing before t reaches h_t) and 1
// elsewhere. The forward also returns h_last = h_{L-1} ([Bt, E, N], h0 when L = 0).
//
// x, Δ: [Bt, L, E]; A: [E, N]; B, C: [Bt, L, N]; y: [Bt, L, E]. The state h ([Bt, L, E, N] if
// materialised, N times the size of x) never leaves the cache: one work item is one batch row and
// a block of W channels, walking time with its W·N states in a local buffer. The forward keeps the
// state only at the start of every chunk of K steps (h_chunks: [Bt, ceil(L/K), E, N]).
//
// Backward, per work item, chunks in reverse: the chunk's states are recomputed from h_chunks into
// a local buffer, then a reverse loop over its steps (g_t = ∂ℓ/∂y_t, a_t = k_t exp(Δ_t A), which
// is 0 at a reset, so a reset cuts δh_t from δh_{t+1}'s coupling and zeroes the A and Δ terms of
// h_{t-1} below; ĝ = ∂ℓ/∂h_last, zero if absent):
//   δh_t   = C_t g_t + a_{t+1} δh_{t+1}            (∂ℓ/∂h_t, a reverse recurrence; a_L δh_L := ĝ)
//   ∂h0    = a_0 δh_0
//   ∂C_tn  = Σ_c g_tc h_t,cn        ∂B_tn = Σ_c δh_t,cn Δ_tc x_tc      (summed over channels)
//   ∂x_tc  = Σ_n δh_t,cn Δ_tc B_tn
//   ∂Δ_tc  = Σ_n δh_t,cn (A_cn a_t,cn h_{t-1},cn + B_tn x_tc)
//   ∂A_cn  = Σ_t δh_t,cn Δ_tc a_t,cn h_{t-1},cn                          (summed over time, batch)
// Sums over channels are written per channel block ([Bt, L, n_blocks, N]) and over batch rows per
// row ([Bt, E, N]); the caller adds them up, so no two threads write one address.
//
// Ops (torch.ops.ssm_train_selective.*), float32 or float64, all inputs contiguous; h0 [Bt, E, N]
// and resets [Bt, L] (bool) optional, g_last = ∂ℓ/∂h_last [Bt, E, N] optional:
//   forward(x, dt, A, B, C, h0?, resets?, chunk) -> (y, h_chunks, h_last)
//   backward(x, dt, A, B, C, resets?, h_chunks, g, g_last?, chunk)
//     -> (dx, ddt, dA_rows, dB_blocks, dC_blocks, dh0)
// h_chunks[:, 0] is h0 (or zero), so the backward needs no h0 of its own.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int W = 16;  // channels per work item: one AVX-512 register of float32 per state n

// exp(x) in float32, branch-free so that loops over lanes vectorise: x = k ln2 + r with |r| <= ln2/2,
// e^r by a degree-6 Taylor polynomial (relative error < 2e-7 on that range), 2^k by the exponent
// bits. x is clamped to [-87, 88], where 2^k stays a normal float (here x = Δ A <= 0 anyway).
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float k = std::nearbyint(x * 1.44269504088896341f);
  const float r = x - k * 0.693145751953125f - k * 1.42860682030941723212e-6f;  // Cody-Waite ln 2
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k, -126 <= k <= 127
  float two_k;
  std::memcpy(&two_k, &bits, sizeof(float));
  return p * two_k;
}

inline double fast_exp(double x) { return std::exp(x); }  // float64: the reference precision

struct Geometry {
  int64_t Bt, L, E, N, K, n_chunks, n_blocks;
};

Geometry geometry(const at::Tensor& x, const at::Tensor& A, int64_t chunk) {
  TORCH_CHECK(x.dim() == 3 && A.dim() == 2 && A.size(0) == x.size(2), "selective_scan: x [B, L, E], A [E, N]");
  TORCH_CHECK(chunk >= 1, "selective_scan: chunk must be >= 1");
  const int64_t L = x.size(1), E = x.size(2);
  return {x.size(0), L, E, A.size(1), chunk, (L + chunk - 1) / chunk, (E + W - 1) / W};
}

// The block's A transposed to [N][W] (lanes past E padded with 0: a = 1, and nothing feeds them).
template <typename T>
void load_A(const T* A, const Geometry& g, int64_t c0, int w, T* Ablk) {
  for (int64_t n = 0; n < g.N; ++n)
    for (int j = 0; j < W; ++j) Ablk[n * W + j] = j < w ? A[(c0 + j) * g.N + n] : T(0);
}

// A [Bt, E, N] state's block (row b, channels c0..c0+w) into the [N][W] lane layout, zero past w or
// when src is null; and back.
template <typename T>
void load_state(const T* src, const Geometry& g, int64_t b, int64_t c0, int w, T* dst) {
  const T* row = src == nullptr ? nullptr : src + (b * g.E + c0) * g.N;
  for (int64_t n = 0; n < g.N; ++n)
    for (int j = 0; j < W; ++j) dst[n * W + j] = row != nullptr && j < w ? row[j * g.N + n] : T(0);
}

template <typename T>
void store_state(const T* src, const Geometry& g, int64_t b, int64_t c0, int w, T* dst) {
  T* row = dst + (b * g.E + c0) * g.N;
  for (int j = 0; j < w; ++j)
    for (int64_t n = 0; n < g.N; ++n) row[j * g.N + n] = src[n * W + j];
}

template <typename T>
void load_lanes(const T* src, int w, T* dst) {
  for (int j = 0; j < W; ++j) dst[j] = j < w ? src[j] : T(0);
}

template <typename T>
void forward_item(const T* x, const T* dt, const T* A, const T* B, const T* C, const T* h0, const bool* resets,
                  T* y, T* hc, T* h_last, const Geometry& g, int64_t b, int64_t blk) {
  const int64_t c0 = blk * W;
  const int w = static_cast<int>(std::min<int64_t>(W, g.E - c0));
  std::vector<T> Ablk(g.N * W), h(g.N * W);
  alignas(64) T xv[W], dtv[W], yv[W];
  load_A(A, g, c0, w, Ablk.data());
  load_state(h0, g, b, c0, w, h.data());
  const bool* rs = resets == nullptr ? nullptr : resets + b * g.L;
  for (int64_t t = 0; t < g.L; ++t) {
    if (t % g.K == 0) {  // the state entering this chunk
      T* dst = hc + ((b * g.n_chunks + t / g.K) * g.E + c0) * g.N;
      for (int j = 0; j < w; ++j)
        for (int64_t n = 0; n < g.N; ++n) dst[j * g.N + n] = h[n * W + j];
    }
    if (rs != nullptr && rs[t]) std::fill(h.begin(), h.end(), T(0));  // a document starts at t
    const int64_t row = (b * g.L + t) * g.E + c0;
    load_lanes(x + row, w, xv);
    load_lanes(dt + row, w, dtv);
    const T* Bt = B + (b * g.L + t) * g.N;
    const T* Ct = C + (b * g.L + t) * g.N;
    for (int j = 0; j < W; ++j) yv[j] = T(0);
    for (int64_t n = 0; n < g.N; ++n) {
      T* hn = h.data() + n * W;
      const T* An = Ablk.data() + n * W;
      const T Bn = Bt[n], Cn = Ct[n];
#pragma omp simd
      for (int j = 0; j < W; ++j) {
        hn[j] = fast_exp(dtv[j] * An[j]) * hn[j] + dtv[j] * Bn * xv[j];
        yv[j] += Cn * hn[j];
      }
    }
    for (int j = 0; j < w; ++j) y[row + j] = yv[j];
  }
  store_state(h.data(), g, b, c0, w, h_last);
}

template <typename T>
void backward_item(const T* x, const T* dt, const T* A, const T* B, const T* C, const bool* resets, const T* hc,
                   const T* gy, const T* g_last, T* dx, T* ddt, T* dA_rows, T* dB_blocks, T* dC_blocks, T* dh0,
                   const Geometry& g, int64_t b, int64_t blk) {
  const int64_t c0 = blk * W, NW = g.N * W;
  const int w = static_cast<int>(std::min<int64_t>(W, g.E - c0));
  std::vector<T> Ablk(NW), dh(NW), dA(NW, T(0));
  load_state(g_last, g, b, c0, w, dh.data());  // δh carried into the last step: ∂ℓ/∂h_last
  const bool* rs = resets == nullptr ? nullptr : resets + b * g.L;
  std::vector<T> hs((g.K + 1) * NW), as(g.K * NW);  // h_{t-1}, h_t of the chunk; a_t of the chunk
  alignas(64) T xv[W], dtv[W], gv[W], dxv[W], ddtv[W];
  load_A(A, g, c0, w, Ablk.data());
  for (int64_t ci = g.n_chunks - 1; ci >= 0; --ci) {
    const int64_t t0 = ci * g.K, t1 = std::min(g.L, t0 + g.K);
    const T* src = hc + ((b * g.n_chunks + ci) * g.E + c0) * g.N;
    for (int64_t n = 0; n < g.N; ++n)
      for (int j = 0; j < W; ++j) hs[n * W + j] = j < w ? src[j * g.N + n] : T(0);
    for (int64_t t = t0; t < t1; ++t) {  // recompute the chunk's states
      const int64_t row = (b * g.L + t) * g.E + c0, s = t - t0;
      load_lanes(x + row, w, xv);
      load_lanes(dt + row, w, dtv);
      const T* Bt = B + (b * g.L + t) * g.N;
      if (rs != nullptr && rs[t]) {  // a reset: a_t = 0, so h_t = Δ_t B_t x_t and δh_{t-1} gets nothing
        for (int64_t n = 0; n < g.N; ++n) {
          T* cur = hs.data() + (s + 1) * NW + n * W;
          T* a = as.data() + s * NW + n * W;
          const T Bn = Bt[n];
#pragma omp simd
          for (int j = 0; j < W; ++j) {
            a[j] = T(0);
            cur[j] = dtv[j] * Bn * xv[j];
          }
        }
        continue;
      }
      for (int64_t n = 0; n < g.N; ++n) {
        const T* prev = hs.data() + s * NW + n * W;
        T* cur = hs.data() + (s + 1) * NW + n * W;
        T* a = as.data() + s * NW + n * W;
        const T* An = Ablk.data() + n * W;
        const T Bn = Bt[n];
#pragma omp simd
        for (int j = 0; j < W; ++j) {
          a[j] = fast_exp(dtv[j] * An[j]);
          cur[j] = a[j] * prev[j] + dtv[j] * Bn * xv[j];
        }
      }
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t row = (b * g.L + t) * g.E + c0, s = t - t0;
      load_lanes(x + row, w, xv);
      load_lanes(dt + row, w, dtv);
      load_lanes(gy + row, w, gv);
      const T* Bt = B + (b * g.L + t) * g.N;
      const T* Ct = C + (b * g.L + t) * g.N;
      T* dBt = dB_blocks + ((b * g.L + t) * g.n_blocks + blk) * g.N;
      T* dCt = dC_blocks + ((b * g.L + t) * g.n_blocks + blk) * g.N;
      for (int j = 0; j < W; ++j) dxv[j] = ddtv[j] = T(0);
      for (int64_t n = 0; n < g.N; ++n) {
        const T* prev = hs.data() + s * NW + n * W;
        const T* cur = hs.data() + (s + 1) * NW + n * W;
        const T* a = as.data() + s * NW + n * W;
        const T* An = Ablk.data() + n * W;
        T* dhn = dh.data() + n * W;
        T* dAn = dA.data() + n * W;
        const T Bn = Bt[n], Cn = Ct[n];
        T sum_C = T(0), sum_B = T(0);
#pragma omp simd reduction(+ : sum_C, sum_B)
        for (int j = 0; j < W; ++j) {
          const T d = dhn[j] + Cn * gv[j];  // δh_t: the carried a_{t+1} δh_{t+1}, plus C_t g_t
          sum_C += gv[j] * cur[j];
          sum_B += d * dtv[j] * xv[j];
          dxv[j] += d * dtv[j] * Bn;
          const T da = d * a[j] * prev[j];  // ∂ℓ/∂(Δ A) at this step (0 at a reset: a = 0)
          ddtv[j] += An[j] * da + d * Bn * xv[j];
          dAn[j] += dtv[j] * da;
          dhn[j] = a[j] * d;
        }
        dCt[n] = sum_C;
        dBt[n] = sum_B;
      }
      for (int j = 0; j < w; ++j) {
        dx[row + j] = dxv[j];
        ddt[row + j] = ddtv[j];
      }
    }
  }
  store_state(dA.data(), g, b, c0, w, dA_rows);
  store_state(dh.data(), g, b, c0, w, dh0);  // a_0 δh_0
}

void check_inputs(const std::vector<at::Tensor>& ts) {
  for (const auto& t : ts) {
    TORCH_CHECK(t.device().is_cpu(), "selective_scan (cpp): CPU tensors only");
    TORCH_CHECK(t.is_contiguous(), "selective_scan (cpp): inputs must be contiguous");
    TORCH_CHECK(t.scalar_type() == ts[0].scalar_type(), "selective_scan (cpp): inputs must share one dtype");
  }
  TORCH_CHECK(ts[0].scalar_type() == at::kFloat || ts[0].scalar_type() == at::kDouble,
              "selective_scan (cpp): float32 or float64");
}

// The optional [Bt, E, N] state `name` (h0, g_last) checked against x, or null.
template <typename T>
const T* optional_state(const c10::optional<at::Tensor>& t, const at::Tensor& x, const Geometry& g, const char* name) {
  if (!t.has_value() || !t->defined()) return nullptr;
  check_inputs({x, *t});
  TORCH_CHECK(t->dim() == 3 && t->size(0) == g.Bt && t->size(1) == g.E && t->size(2) == g.N, "selective_scan (cpp): ",
              name, " must be [B, E, N] = [", g.Bt, ", ", g.E, ", ", g.N, "], got ", t->sizes());
  return t->data_ptr<T>();
}

const bool* optional_resets(const c10::optional<at::Tensor>& r, const Geometry& g) {
  if (!r.has_value() || !r->defined()) return nullptr;
  TORCH_CHECK(r->device().is_cpu() && r->is_contiguous() && r->scalar_type() == at::kBool,
              "selective_scan (cpp): resets must be a contiguous bool CPU tensor");
  TORCH_CHECK(r->dim() == 2 && r->size(0) == g.Bt && r->size(1) == g.L, "selective_scan (cpp): resets must be [B, L] = [",
              g.Bt, ", ", g.L, "], got ", r->sizes());
  return r->data_ptr<bool>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> selective_forward(
    const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const c10::optional<at::Tensor>& h0, const c10::optional<at::Tensor>& resets, int64_t chunk) {
  check_inputs({x, dt, A, B, C});
  const Geometry g = geometry(x, A, chunk);
  auto y = at::empty_like(x);
  auto hc = at::empty({g.Bt, g.n_chunks, g.E, g.N}, x.options());
  auto h_last = at::empty({g.Bt, g.E, g.N}, x.options());
  const bool* prs = optional_resets(resets, g);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "selective_forward", [&] {
    const scalar_t *px = x.data_ptr<scalar_t>(), *pdt = dt.data_ptr<scalar_t>(), *pA = A.data_ptr<scalar_t>(),
                   *pB = B.data_ptr<scalar_t>(), *pC = C.data_ptr<scalar_t>(),
                   *ph0 = optional_state<scalar_t>(h0, x, g, "h0");
    scalar_t *py = y.data_ptr<scalar_t>(), *phc = hc.data_ptr<scalar_t>(), *plast = h_last.data_ptr<scalar_t>();
    at::parallel_for(0, g.Bt * g.n_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        forward_item(px, pdt, pA, pB, pC, ph0, prs, py, phc, plast, g, i / g.n_blocks, i % g.n_blocks);
    });
  });
  return {y, hc, h_last};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> selective_backward(
    const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const c10::optional<at::Tensor>& resets, const at::Tensor& hc, const at::Tensor& gy,
    const c10::optional<at::Tensor>& g_last, int64_t chunk) {
  check_inputs({x, dt, A, B, C, hc, gy});
  const Geometry g = geometry(x, A, chunk);
  TORCH_CHECK(hc.dim() == 4 && hc.size(0) == g.Bt && hc.size(1) == g.n_chunks && hc.size(2) == g.E &&
                  hc.size(3) == g.N, "selective_scan (cpp): h_chunks must be [B, ceil(L/chunk), E, N]");
  TORCH_CHECK(gy.sizes() == x.sizes(), "selective_scan (cpp): g must be shaped like x");
  auto dx = at::empty_like(x), ddt = at::empty_like(x);
  auto dA_rows = at::empty({g.Bt, g.E, g.N}, x.options());
  auto dB_blocks = at::empty({g.Bt, g.L, g.n_blocks, g.N}, x.options());
  auto dC_blocks = at::empty({g.Bt, g.L, g.n_blocks, g.N}, x.options());
  auto dh0 = at::empty({g.Bt, g.E, g.N}, x.options());
  const bool* prs = optional_resets(resets, g);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "selective_backward", [&] {
    const scalar_t *px = x.data_ptr<scalar_t>(), *pdt = dt.data_ptr<scalar_t>(), *pA = A.data_ptr<scalar_t>(),
                   *pB = B.data_ptr<scalar_t>(), *pC = C.data_ptr<scalar_t>(), *phc = hc.data_ptr<scalar_t>(),
                   *pg = gy.data_ptr<scalar_t>(), *pgl = optional_state<scalar_t>(g_last, x, g, "g_last");
    scalar_t *pdx = dx.data_ptr<scalar_t>(), *pddt = ddt.data_ptr<scalar_t>(), *pdA = dA_rows.data_ptr<scalar_t>(),
             *pdB = dB_blocks.data_ptr<scalar_t>(), *pdC = dC_blocks.data_ptr<scalar_t>(),
             *pdh0 = dh0.data_ptr<scalar_t>();
    at::parallel_for(0, g.Bt * g.n_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        backward_item(px, pdt, pA, pB, pC, prs, phc, pg, pgl, pdx, pddt, pdA, pdB, pdC, pdh0, g, i / g.n_blocks,
                      i % g.n_blocks);
    });
  });
  return {dx, ddt, dA_rows, dB_blocks, dC_blocks, dh0};
}

}  // namespace

TORCH_LIBRARY(ssm_train_selective, m) {
  m.def("forward(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? h0, Tensor? resets, int chunk)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("backward(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? resets, Tensor h_chunks, Tensor g,"
        " Tensor? g_last, int chunk) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ssm_train_selective, CPU, m) {
  m.impl("forward", &selective_forward);
  m.impl("backward", &selective_backward);
}
