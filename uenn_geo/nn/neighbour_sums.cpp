// The neighbour sums of the vector graph layer (Ma & Chan, sec. 4, eqs. 29-31) in one pass
// over the edges, for inference on the CPU (no autograd): uenn_geo/nn/kernels.py builds and
// registers it, uenn_geo/nn/conv.py (VectorGaussianConv.neighbour_sums) defines the numbers.
//
//   h[i, r, b, w] = sum_j e_ij^b feat_ij[r, w]
//   e_ij^b = exp(max(-eta_b (r_ij - rs_b)^2, -60)) f_c(r_ij)                       (eq. 31)
//   feat_ij rows: n vector rows [u_k v_j, x_jk, (u_k p), (u_k q), (u_k q^2)] and a scalar
//                 row [v_j, q, (p^2), (q^2), (q^3)], with u = r_ij / |r_ij|, q = u . x_j,
//                 p = u . x_i (the columns in brackets: centre_vectors, bond_vectors,
//                 bond_cubes).
//
// The plain PyTorch path forms e (E x B) and feat (E x R W) in memory, lays them out in
// chunks and multiplies them with torch.bmm. Here each atom's edges are gathered into small
// buffers that stay in the cache and multiplied by a register-blocked kernel; nothing of size
// E x B is written. Edges of one centre should be consecutive (Edges.chunked, or any list
// sorted by centre); other orders give the same sums on one thread. A list sorted by centre
// is split among torch's threads into ranges of whole centres (at::parallel_for: OpenMP).
//
// Precision: in float32 the Gaussians' exp is ATen's exp_u20 (within 20 ulp, ~2e-6 relative,
// the polynomial PyTorch's own fused CPU kernels use; about twice as fast as the 1-ulp exp):
// the sums stay within float32 round-off of the plain path (tests/nn/test_kernels.py). In
// float64 it is the correctly rounded exp (exp_u20 is exp there).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__GNUC__)
#define UENN_INLINE __attribute__((always_inline)) inline  // per-edge helpers in hot loops
#else
#define UENN_INLINE inline
#endif

namespace {

using at::vec::Vectorized;

int64_t round_up(int64_t a, int64_t m) { return (a + m - 1) / m * m; }

// The sum of a vector's lanes, by halves (a tree of depth log2 L, not a chain of L adds).
template <typename T>
UENN_INLINE T lane_sum(const Vectorized<T>& v) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same<T, float>::value) return v.reduce_add();  // shuffles in registers
#endif
  constexpr int64_t L = Vectorized<T>::size();
  T lanes[L];
  v.store(lanes);
  for (int64_t w = L / 2; w >= 1; w /= 2)
    for (int64_t l = 0; l < w; ++l) lanes[l] += lanes[l + w];
  return lanes[0];
}

template <typename T, bool A_ROWS = false, bool ASSIGN = false>
void gemm_tn_ld(const T* A, int64_t lda, const T* Bm, int64_t ldb, T* C, int64_t ldc, int64_t K,
                int64_t Pp, int64_t Qp);

// C (Pp x Qp) += A^T Bm over K rows; A is K x Pp, Bm is K x Qp (row-major), Pp a multiple of
// 4 and Qp of the vector length: 4 x 2 vectors of accumulators in registers.
template <typename T>
void gemm_tn(const T* A, const T* Bm, T* C, int64_t K, int64_t Pp, int64_t Qp) {
  gemm_tn_ld<T>(A, Pp, Bm, Qp, C, Qp, K, Pp, Qp);
}

// The same with leading dimensions: A[k * lda + p], Bm[k * ldb + q], C[p * ldc + q].
template <typename T, bool A_ROWS, bool ASSIGN>
void gemm_tn_ld(const T* A, int64_t lda, const T* Bm, int64_t ldb, T* C, int64_t ldc, int64_t K,
                int64_t Pp, int64_t Qp) {
  // A_ROWS: A[p * lda + k] (C = A Bm) instead of A[k * lda + p] (C = A^T Bm);
  // ASSIGN: C = product instead of C += product
  const int64_t sp = A_ROWS ? lda : 1, sk = A_ROWS ? 1 : lda;
  using V = Vectorized<T>;
  const int64_t L = V::size();
  for (int64_t p0 = 0; p0 < Pp; p0 += 4) {
    int64_t q0 = 0;
    for (; q0 + 2 * L <= Qp; q0 += 2 * L) {
      V c00(0), c01(0), c10(0), c11(0), c20(0), c21(0), c30(0), c31(0);
      for (int64_t k = 0; k < K; ++k) {
        const V b0 = V::loadu(Bm + k * ldb + q0), b1 = V::loadu(Bm + k * ldb + q0 + L);
        const T* a = A + k * sk + p0 * sp;
        const V a0(a[0]), a1(a[sp]), a2(a[2 * sp]), a3(a[3 * sp]);
        c00 = at::vec::fmadd(a0, b0, c00);
        c01 = at::vec::fmadd(a0, b1, c01);
        c10 = at::vec::fmadd(a1, b0, c10);
        c11 = at::vec::fmadd(a1, b1, c11);
        c20 = at::vec::fmadd(a2, b0, c20);
        c21 = at::vec::fmadd(a2, b1, c21);
        c30 = at::vec::fmadd(a3, b0, c30);
        c31 = at::vec::fmadd(a3, b1, c31);
      }
      const V acc[4][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
      for (int64_t p = 0; p < 4; ++p) {
        T* c = C + (p0 + p) * ldc + q0;
        (ASSIGN ? acc[p][0] : V::loadu(c) + acc[p][0]).store(c);
        (ASSIGN ? acc[p][1] : V::loadu(c + L) + acc[p][1]).store(c + L);
      }
    }
    for (; q0 < Qp; q0 += L) {
      V c0(0), c1(0), c2(0), c3(0);
      for (int64_t k = 0; k < K; ++k) {
        const V b0 = V::loadu(Bm + k * ldb + q0);
        const T* a = A + k * sk + p0 * sp;
        c0 = at::vec::fmadd(V(a[0]), b0, c0);
        c1 = at::vec::fmadd(V(a[sp]), b0, c1);
        c2 = at::vec::fmadd(V(a[2 * sp]), b0, c2);
        c3 = at::vec::fmadd(V(a[3 * sp]), b0, c3);
      }
      const V acc[4] = {c0, c1, c2, c3};
      for (int64_t p = 0; p < 4; ++p) {
        T* c = C + (p0 + p) * ldc + q0;
        (ASSIGN ? acc[p] : V::loadu(c) + acc[p]).store(c);
      }
    }
  }
}

struct Layout {
  int64_t F, Fv, B, W, R;
  int64_t Fp, Fvp;  // F and Fv rounded up to the vector length: rows of v and x as the kernels read them
  bool vec_rows, sca_row, centre_vectors, bond_vectors, bond_cubes;
};

// The projections of an edge: q_c = u . x_jc (along) and p_c = u . x_ic (proj, centre_vectors).
// x_j and x_i are zero-padded rows (3, Fvp); so are along and proj.
template <typename T>
UENN_INLINE void projections(const Layout& s, const T* u, const T* xj, const T* xi, T* along, T* proj) {
  using V = Vectorized<T>;
  const int64_t Fvp = s.Fvp;
  const V u0(u[0]), u1(u[1]), u2(u[2]);
  for (int64_t c = 0; c < Fvp; c += V::size()) {
    (u0 * V::loadu(xj + c) + u1 * V::loadu(xj + Fvp + c) + u2 * V::loadu(xj + 2 * Fvp + c)).store(along + c);
    if (s.centre_vectors)
      (u0 * V::loadu(xi + c) + u1 * V::loadu(xi + Fvp + c) + u2 * V::loadu(xi + 2 * Fvp + c)).store(proj + c);
  }
}

// The rows feat_ij (R x W, row-major) of one edge: n vector rows [u_a v_j, x_ja, (u_a p),
// (u_a q), (u_a q^2)] and the scalar row [v_j, q, (p^2), (q^2), (q^3)]
// (VectorGaussianConv.message). Each
// segment is stored as whole vectors from zero-padded inputs: the lanes past its end are zeros
// that land in the next segment (stored after it) or past the last row, where feat needs
// a vector's length of room.
template <typename T>
UENN_INLINE void feature_rows(const Layout& s, const T* u, const T* vj, const T* xj, const T* along,
                              const T* proj, T* feat) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t F = s.F, Fv = s.Fv, Fp = s.Fp, Fvp = s.Fvp, W = s.W;
  auto put = [](T* dst, const T* src, const V& scale, int64_t np) {
    for (int64_t c = 0; c < np; c += L) (scale * V::loadu(src + c)).store(dst + c);
  };
  auto put_square = [](T* dst, const T* src, int64_t np) {
    for (int64_t c = 0; c < np; c += L) {
      const V a = V::loadu(src + c);
      (a * a).store(dst + c);
    }
  };
  auto put_cube = [](T* dst, const T* src, const V& scale, int64_t np) {  // scale a^2
    for (int64_t c = 0; c < np; c += L) {
      const V a = V::loadu(src + c);
      (scale * a * a).store(dst + c);
    }
  };
  const V one(T(1));
  int64_t row = 0;
  if (s.vec_rows) {
    for (int64_t a = 0; a < 3; ++a, ++row) {
      T* f = feat + row * W;
      const V ua(u[a]);
      put(f, vj, ua, Fp);
      int64_t o = F;
      if (Fv) {
        put(f + o, xj + a * Fvp, one, Fvp);
        o += Fv;
        if (s.centre_vectors) {
          put(f + o, proj, ua, Fvp);
          o += Fv;
        }
        if (s.bond_vectors) {
          put(f + o, along, ua, Fvp);
          o += Fv;
        }
        if (s.bond_cubes) put_cube(f + o, along, ua, Fvp);
      }
    }
  }
  if (s.sca_row) {
    T* f = feat + row * W;
    put(f, vj, one, Fp);
    int64_t o = F;
    if (Fv) {
      put(f + o, along, one, Fvp);
      o += Fv;
      if (s.centre_vectors) {
        put_square(f + o, proj, Fvp);
        o += Fv;
      }
      if (s.bond_vectors) {
        put_square(f + o, along, Fvp);
        o += Fv;
      }
      if (s.bond_cubes) {
        for (int64_t c = 0; c < Fvp; c += L) {
          const V a = V::loadu(along + c);
          (a * a * a).store(f + o + c);
        }
      }
    }
  }
}

// The geometry of edge k: false for a pair that contributes nothing (zero length, or at or
// beyond the cutoff); else r, the unit vector u, f_c and its slope.
template <typename T>
UENN_INLINE bool edge_geometry(const T* pos, const T* shifts, int64_t k, int64_t i, int64_t j, T cutoff,
                   T eps, T& r, T* u, T& fc, T& dfc) {
  T d[3];
  for (int c = 0; c < 3; ++c) d[c] = pos[3 * j + c] - pos[3 * i + c] + (shifts ? shifts[3 * k + c] : T(0));
  const T r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
  if (!(r2 > 0)) return false;  // a zero-length edge (i = j) contributes nothing (eq. 31)
  r = std::sqrt(r2);
  const T xr = r / cutoff;
  if (xr >= 1) return false;  // f_c = 0 with its derivatives
  const T y = 1 - xr;
  fc = y * y * y * (1 + xr * (3 + 6 * xr));
  dfc = -30 * xr * xr * y * y / cutoff;
  const T inv = 1 / std::max(r, eps);
  for (int c = 0; c < 3; ++c) u[c] = d[c] * inv;
  return true;
}

// The sums of the edges [begin, end) into out (N, R, B, W), on the calling thread.
template <typename T>
void sums_range(const T* pos, const int64_t* centre, const int64_t* nbr, const T* shifts,
                const T* v, const T* x, const T* rs, const T* eta, T cutoff, T eps,
                const Layout& s, int64_t begin, int64_t end, T* out) {
  using V = Vectorized<T>;
  const int64_t L = V::size();
  const int64_t F = s.F, Fv = s.Fv, B = s.B, W = s.W, R = s.R, RW = R * W;
  // The wider of B and R W is vectorised, the other blocked by four.
  const bool basis_wide = B > RW;
  const int64_t Pp = round_up(basis_wide ? RW : B, 4), Qp = round_up(basis_wide ? B : RW, L);
  const int64_t e_stride = basis_wide ? Qp : Pp, f_stride = basis_wide ? Pp : Qp;
  const int64_t kmax = 128;  // edges buffered per product
  std::vector<T> ebuf(kmax * e_stride, T(0)), fbuf(kmax * f_stride + L, T(0)), cbuf(Pp * Qp);
  std::vector<T> along(s.Fvp, T(0)), proj(s.Fvp, T(0));
  const int64_t Bv = round_up(B, L);
  std::vector<T> rs_pad(Bv, T(0)), eta_pad(Bv, T(0));
  std::copy(rs, rs + B, rs_pad.begin());
  std::copy(eta, eta + B, eta_pad.begin());
  // Gaussians far from r_ij sit at the clamp exp(-60) of eq. 31's evaluation; a block of
  // them all below `skip` takes that value without exp (float: below exp(-25), 1e-11).
  const V clamp(T(-60)), skip(std::is_same<T, float>::value ? T(-25) : T(-60));
  const V clamped(std::exp(T(-60))), zero(T(0));
  const int all_lanes = (1 << L) - 1;

  auto flush = [&](int64_t i, int64_t K) {
    if (K == 0) return;
    std::fill(cbuf.begin(), cbuf.end(), T(0));
    if (basis_wide) {
      gemm_tn<T>(fbuf.data(), ebuf.data(), cbuf.data(), K, Pp, Qp);
    } else {
      gemm_tn<T>(ebuf.data(), fbuf.data(), cbuf.data(), K, Pp, Qp);
    }
    T* o = out + i * R * B * W;  // (R, B, W) from the product's (R W, B) or (B, R W)
    if (basis_wide) {
      for (int64_t r = 0; r < R; ++r)
        for (int64_t w = 0; w < W; ++w) {
          const T* c = cbuf.data() + (r * W + w) * Qp;
          T* ob = o + r * B * W + w;
          for (int64_t b = 0; b < B; ++b) ob[b * W] += c[b];
        }
    } else {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t r = 0; r < R; ++r) {
          const T* c = cbuf.data() + b * Qp + r * W;
          T* ob = o + (r * B + b) * W;
          for (int64_t w = 0; w < W; ++w) ob[w] += c[w];
        }
    }
  };

  int64_t current = -1, K = 0;
  for (int64_t k = begin; k < end; ++k) {
    const int64_t i = centre[k], j = nbr[k];
    if (i != current || K == kmax) {
      flush(current, K);
      current = i;
      K = 0;
    }
    T r, u[3], fc, dfc;
    if (!edge_geometry(pos, shifts, k, i, j, cutoff, eps, r, u, fc, dfc)) continue;

    T* e = ebuf.data() + K * e_stride;
    const V vr(r), vfc(fc);
    for (int64_t b = 0; b < B; b += L) {
      const V t = vr - V::loadu(rs_pad.data() + b);
      const V a = at::vec::maximum(zero - V::loadu(eta_pad.data() + b) * t * t, clamp);
      const V val = ((a >= skip).zero_mask() == all_lanes) ? clamped * vfc : a.exp_u20() * vfc;
      if (b + L <= e_stride) {
        val.store(e + b);
      } else {
        val.store(e + b, e_stride - b);
      }
    }
    for (int64_t b = B; b < e_stride; ++b) e[b] = 0;

    T* feat = fbuf.data() + K * f_stride;
    const T* xj = x ? x + j * 3 * s.Fvp : nullptr;  // (3, Fvp)
    const T* xi = x ? x + i * 3 * s.Fvp : nullptr;
    if (x) projections(s, u, xj, xi, along.data(), proj.data());
    feature_rows(s, u, v + j * s.Fp, xj, along.data(), proj.data(), feat);
    for (int64_t c = RW; c < f_stride; ++c) feat[c] = 0;
    ++K;
  }
  flush(current, K);
}

// The backward of the sums over the edges [begin, end): the gradients of positions, shifts
// and node features v, x for the gradient G (N, R, B, W) of the sums, added into gpos, gv, gx
// (neighbours' rows are scattered to: one thread per set of those) and written into gshift.
// Per atom, dL/de (K x B) and dL/dfeat (K x R W) are two products with G_i; then the chain
// rule through eq. 31, the unit vectors and the projections, edge by edge.
template <typename T>
void sums_backward(const T* G, const T* pos, const int64_t* centre, const int64_t* nbr,
                   const T* shifts, const T* v, const T* x, const T* rs, const T* eta, T cutoff,
                   T eps, const Layout& s, int64_t begin, int64_t end, T* gpos, T* gshift, T* gv,
                   T* gx) {
  using V = Vectorized<T>;
  const int64_t L = V::size();
  const int64_t F = s.F, Fv = s.Fv, B = s.B, W = s.W, R = s.R, RW = R * W;
  const int64_t kmax = 128, Bq = round_up(B, L), RWq = round_up(RW, L);
  const int64_t srow = s.vec_rows ? 3 : 0;  // the scalar row's index
  std::vector<T> Mb(B * RWq, T(0)), Mt(RW * Bq, T(0));  // G_i as (B, R W) and (R W, B)
  const int64_t RWp = round_up(RW, 4), Fp = s.Fp, Fvp = s.Fvp;
  std::vector<T> eb(kmax * Bq), de(kmax * Bq), fb(kmax * RWp + L);  // e, de/dr, feat per edge
  std::vector<T> rs_pad(Bq, T(0)), eta_pad(Bq, T(0));
  std::copy(rs, rs + B, rs_pad.begin());
  std::copy(eta, eta + B, eta_pad.begin());
  std::vector<T> Gf(kmax * RWq + L, T(0)), Ge(kmax * Bq);  // + L: whole vectors read past a row
  struct EdgeData {
    int64_t k, j;
    T u[3], r, inv_r, fc, dfc;
  };
  std::vector<EdgeData> ed(kmax);
  std::vector<T> along(Fvp, T(0)), proj(Fvp, T(0)), gq(Fvp), gp(Fvp), along2(Fvp, T(0));
  const V skip(std::is_same<T, float>::value ? T(-25) : T(-60)), clamped(std::exp(T(-60)));
  const int all_lanes = (1 << L) - 1;

  // y[0:np] += a x[0:np], np a multiple of L. The padded rows of v and x are zero and those
  // of gv, gx, gq, gp are scratch: whole vectors past a segment of x (the next segment of a
  // row of dL/dfeat) add nothing where they meet zeros and are dropped where they are stored.
  auto axpy = [&](T* y, const T* xs, T a, int64_t np) {
    const V va(a);
    for (int64_t c = 0; c < np; c += L) at::vec::fmadd(va, V::loadu(xs + c), V::loadu(y + c)).store(y + c);
  };
  auto flush = [&](int64_t i, int64_t K) {
    if (K == 0) return;
    const int64_t K4 = round_up(K, 4);
    const T* Gi = G + i * R * B * W;
    // G_i (R, B, W) as Mb (B, R W) and Mt (R W, B): runs of W, and of B with stride W
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < R; ++r) std::copy_n(Gi + (r * B + b) * W, W, Mb.data() + b * RWq + r * W);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t w = 0; w < W; ++w) {
        const T* g = Gi + r * B * W + w;
        T* m = Mt.data() + (r * W + w) * Bq;
        for (int64_t b = 0; b < B; ++b) m[b] = g[b * W];
      }
    std::fill(eb.begin() + K * Bq, eb.begin() + K4 * Bq, T(0));
    std::fill(fb.begin() + K * RWp, fb.begin() + K4 * RWp, T(0));
    gemm_tn_ld<T, true, true>(eb.data(), Bq, Mb.data(), RWq, Gf.data(), RWq, B, K4, RWq);  // dL/dfeat
    gemm_tn_ld<T, true, true>(fb.data(), RWp, Mt.data(), Bq, Ge.data(), Bq, RW, K4, Bq);   // dL/de
    for (int64_t p = 0; p < K; ++p) {
      const EdgeData& d = ed[p];
      const int64_t j = d.j;
      const T* u = d.u;
      const T* gf = Gf.data() + p * RWq;
      const T* ge = Ge.data() + p * Bq;
      // dL/dr through e_b = exp(max(-eta_b (r - rs_b)^2, -60)) f_c(r)
      V acc(0);
      for (int64_t b = 0; b < Bq; b += L) acc = at::vec::fmadd(V::loadu(ge + b), V::loadu(de.data() + p * Bq + b), acc);
      const T gr = lane_sum(acc);
      const T* vj = v + j * Fp;
      const T* xj = x ? x + j * 3 * Fvp : nullptr;
      const T* xi = x ? x + i * 3 * Fvp : nullptr;
      if (x) projections(s, u, xj, xi, along.data(), proj.data());
      if (s.bond_cubes)
        for (int64_t c = 0; c < Fvp; ++c) along2[c] = along[c] * along[c];
      std::fill(gq.begin(), gq.end(), T(0));
      std::fill(gp.begin(), gp.end(), T(0));
      // dL/du_a collects dot products: one vector accumulator per a
      V uacc[3] = {V(0), V(0), V(0)};
      auto dot_into = [&](int64_t a, const T* p1, const T* p2, int64_t np) {
        for (int64_t c = 0; c < np; c += L) uacc[a] = at::vec::fmadd(V::loadu(p1 + c), V::loadu(p2 + c), uacc[a]);
      };
      // y += a x z (a = 2: the squared projections of the scalar row; 2 u_a and 3: the
      // order-three columns)
      auto axpyz = [&](T* y, const T* xs, const T* z, T a, int64_t np) {
        const V va(a);
        for (int64_t c = 0; c < np; c += L)
          at::vec::fmadd(va * V::loadu(xs + c), V::loadu(z + c), V::loadu(y + c)).store(y + c);
      };
      T* gvj = gv + j * Fp;
      T* gxj = x ? gx + j * 3 * Fvp : nullptr;
      if (s.vec_rows) {
        for (int64_t a = 0; a < 3; ++a) {
          const T* f = gf + a * W;
          axpy(gvj, f, u[a], Fp);
          dot_into(a, f, vj, Fp);
          int64_t o = F;
          if (Fv) {
            axpy(gxj + a * Fvp, f + o, T(1), Fvp);
            o += Fv;
            if (s.centre_vectors) {
              dot_into(a, f + o, proj.data(), Fvp);
              axpy(gp.data(), f + o, u[a], Fvp);
              o += Fv;
            }
            if (s.bond_vectors) {
              dot_into(a, f + o, along.data(), Fvp);
              axpy(gq.data(), f + o, u[a], Fvp);
              o += Fv;
            }
            if (s.bond_cubes) {  // u_a q^2
              dot_into(a, f + o, along2.data(), Fvp);
              axpyz(gq.data(), f + o, along.data(), 2 * u[a], Fvp);
            }
          }
        }
      }
      if (s.sca_row) {
        const T* f = gf + srow * W;
        axpy(gvj, f, T(1), Fp);
        int64_t o = F;
        if (Fv) {
          axpy(gq.data(), f + o, T(1), Fvp);
          o += Fv;
          if (s.centre_vectors) {
            axpyz(gp.data(), f + o, proj.data(), T(2), Fvp);
            o += Fv;
          }
          if (s.bond_vectors) {
            axpyz(gq.data(), f + o, along.data(), T(2), Fvp);
            o += Fv;
          }
          if (s.bond_cubes) axpyz(gq.data(), f + o, along2.data(), T(3), Fvp);  // q^3
        }
      }
      if (Fv) {
        for (int64_t a = 0; a < 3; ++a) {
          axpy(gxj + a * Fvp, gq.data(), u[a], Fvp);
          dot_into(a, gq.data(), xj + a * Fvp, Fvp);
          if (s.centre_vectors) {
            axpy(gx + (i * 3 + a) * Fvp, gp.data(), u[a], Fvp);
            dot_into(a, gp.data(), xi + a * Fvp, Fvp);
          }
        }
      }
      T gu[3];
      for (int64_t a = 0; a < 3; ++a) gu[a] = lane_sum(uacc[a]);
      // u = d / max(r, eps), r = |d|
      T gd[3];
      if (d.r > eps) {
        const T ug = u[0] * gu[0] + u[1] * gu[1] + u[2] * gu[2];
        for (int a = 0; a < 3; ++a) gd[a] = (gu[a] - u[a] * ug) * d.inv_r + u[a] * gr;
      } else {
        for (int a = 0; a < 3; ++a) gd[a] = gu[a] / eps + u[a] * eps / d.r * gr;
      }
      for (int a = 0; a < 3; ++a) {
        gpos[3 * i + a] -= gd[a];
        gpos[3 * j + a] += gd[a];
        if (gshift) gshift[3 * d.k + a] = gd[a];
      }
    }
  };

  int64_t current = -1, K = 0;
  for (int64_t k = begin; k < end; ++k) {
    const int64_t i = centre[k], j = nbr[k];
    if (i != current || K == kmax) {
      flush(current, K);
      current = i;
      K = 0;
    }
    EdgeData& e = ed[K];
    if (!edge_geometry(pos, shifts, k, i, j, cutoff, eps, e.r, e.u, e.fc, e.dfc)) continue;
    e.k = k;
    e.j = j;
    const T r = e.r;
    e.inv_r = 1 / r;
    {  // e_b and de_b/dr (the clamp at -60 has slope zero), padding lanes zero
      const V vr(r), vfc(e.fc), vdfc(e.dfc), lo(T(-60)), zero(T(0)), two(T(2));
      for (int64_t b = 0; b < Bq; b += L) {
        const V eta_b = V::loadu(eta_pad.data() + b);
        const V t = vr - V::loadu(rs_pad.data() + b);
        const V a = zero - eta_b * t * t;
        const V valid = V::blendv(zero, V(T(1)), eta_b > zero);
        if ((a >= skip).zero_mask() == all_lanes) {  // far from r: the clamp's value, as forward
          (clamped * vfc * valid).store(eb.data() + K * Bq + b);
          (clamped * vdfc * valid).store(de.data() + K * Bq + b);
          continue;
        }
        const V g = at::vec::maximum(a, lo).exp_u20();
        const V slope = V::blendv(zero, zero - two * eta_b * t * vfc, a > lo);
        (g * vfc * valid).store(eb.data() + K * Bq + b);
        (g * (vdfc + slope) * valid).store(de.data() + K * Bq + b);
      }
    }
    // feat as in the forward pass
    const T* xj = x ? x + j * 3 * Fvp : nullptr;
    const T* xi = x ? x + i * 3 * Fvp : nullptr;
    if (x) projections(s, e.u, xj, xi, along.data(), proj.data());
    T* frow = fb.data() + K * RWp;
    feature_rows(s, e.u, v + j * Fp, xj, along.data(), proj.data(), frow);
    for (int64_t c = RW; c < RWp; ++c) frow[c] = 0;
    ++K;
  }
  flush(current, K);
}

// The inputs, contiguous and in the dtype of pos, and their layout.
struct Inputs {
  torch::Tensor pos, index, v, x, shifts, rs, eta;
  Layout s;
};

Inputs prepare(torch::Tensor pos, torch::Tensor index, c10::optional<torch::Tensor> shifts,
               torch::Tensor v, c10::optional<torch::Tensor> x, torch::Tensor rs,
               torch::Tensor eta, bool vec_rows, bool sca_row, bool centre_vectors,
               bool bond_vectors, bool bond_cubes) {
  TORCH_CHECK(pos.dim() == 2 && pos.size(1) == 3, "neighbour_sums: pos must be (N, 3)");
  TORCH_CHECK(index.dim() == 2 && index.size(0) == 2 && index.scalar_type() == torch::kLong,
              "neighbour_sums: index must be a (2, E) long tensor");
  TORCH_CHECK(vec_rows || sca_row, "neighbour_sums: no output rows");
  // the kernels read whole rows of v and x for every atom, and a shift for every edge
  const int64_t N = pos.size(0), E = index.size(1);
  TORCH_CHECK(v.dim() == 2 && v.size(0) == N, "neighbour_sums: v must be (N, F) with N = ", N,
              " (the rows of pos), got ", v.sizes());
  TORCH_CHECK(!x.has_value() || (x->dim() == 3 && x->size(0) == N && x->size(1) == 3),
              "neighbour_sums: x must be (N, 3, F_v) with N = ", N);
  TORCH_CHECK(!shifts.has_value() || (shifts->dim() == 2 && shifts->size(0) == E &&
                                      shifts->size(1) == 3),
              "neighbour_sums: shifts must be (E, 3) with E = ", E, " (the edges)");
  TORCH_CHECK(rs.dim() == 1 && eta.dim() == 1 && rs.numel() == eta.numel(),
              "neighbour_sums: rs and eta must be (B,) each");
  Inputs in;
  const auto dtype = pos.scalar_type();
  in.pos = pos.contiguous();
  in.index = index.contiguous();
  {  // one pass over the indices (a tenth of aten::min and aten::max for 2 x 78k indices)
    const int64_t* idx = in.index.data_ptr<int64_t>();
    int64_t lo = 0, hi = 0;
    for (int64_t k = 0, n = in.index.numel(); k < n; ++k) {
      lo = std::min(lo, idx[k]);
      hi = std::max(hi, idx[k]);
    }
    TORCH_CHECK(lo >= 0 && (in.index.numel() == 0 || hi < pos.size(0)),
                "neighbour_sums: edge_index holds atom ", lo < 0 ? lo : hi, ", outside 0..",
                pos.size(0) - 1, " (", pos.size(0), " atoms)");
  }
  in.v = v.to(dtype).contiguous();
  in.rs = rs.to(dtype).contiguous();
  in.eta = eta.to(dtype).contiguous();
  Layout& s = in.s;
  s.F = in.v.size(1);
  s.B = in.rs.size(0);
  s.Fv = 0;
  if (x.has_value()) {
    in.x = x->to(dtype).contiguous();
    s.Fv = in.x.size(2);
  }
  if (shifts.has_value()) in.shifts = shifts->to(dtype).contiguous();
  s.vec_rows = vec_rows;
  s.sca_row = sca_row;
  s.centre_vectors = centre_vectors && s.Fv > 0;
  s.bond_vectors = bond_vectors && s.Fv > 0;
  s.bond_cubes = bond_cubes && s.Fv > 0;
  s.W = s.F + s.Fv * (1 + (s.centre_vectors ? 1 : 0) + (s.bond_vectors ? 1 : 0) +
                      (s.bond_cubes ? 1 : 0));
  s.R = (vec_rows ? 3 : 0) + (sca_row ? 1 : 0);
  return in;
}

template <typename T>
const T* data_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

bool sorted_by_centre(const int64_t* centre, int64_t E) {
  for (int64_t k = 1; k < E; ++k)
    if (centre[k] < centre[k - 1]) return false;
  return true;
}

// Threads take ranges of edges moved to the first edge of a centre: no atom is shared.
int64_t first_of_centre(const int64_t* centre, int64_t E, int64_t k) {
  while (k > 0 && k < E && centre[k] == centre[k - 1]) ++k;
  return k;
}

// Rows of n values as rows of np (zero-padded), and a row of room after them.
template <typename T>
std::vector<T> padded_rows(const T* src, int64_t rows, int64_t n, int64_t np) {
  std::vector<T> out((rows + 1) * np, T(0));
  for (int64_t r = 0; r < rows; ++r) std::copy_n(src + r * n, n, out.data() + r * np);
  return out;
}

// The padded copies of v (N, Fp) and x (N, 3, Fvp) the kernels read, and the layout with
// Fp, Fvp set for T's vector length.
template <typename T>
struct PaddedInputs {
  Layout s;
  std::vector<T> v, x;
  PaddedInputs(const Inputs& in) : s(in.s) {
    constexpr int64_t L = Vectorized<T>::size();
    const int64_t N = in.pos.size(0);
    s.Fp = round_up(s.F, L);
    s.Fvp = round_up(s.Fv, L);
    v = padded_rows(in.v.data_ptr<T>(), N, s.F, s.Fp);
    if (in.x.defined()) x = padded_rows(in.x.data_ptr<T>(), 3 * N, s.Fv, s.Fvp);
  }
  const T* x_or_null() const { return x.empty() ? nullptr : x.data(); }
};

torch::Tensor neighbour_sums(torch::Tensor pos, torch::Tensor index,
                             c10::optional<torch::Tensor> shifts, torch::Tensor v,
                             c10::optional<torch::Tensor> x, torch::Tensor rs, torch::Tensor eta,
                             double cutoff, double eps, bool vec_rows, bool sca_row,
                             bool centre_vectors, bool bond_vectors, bool bond_cubes) {
  const Inputs in = prepare(pos, index, shifts, v, x, rs, eta, vec_rows, sca_row,
                            centre_vectors, bond_vectors, bond_cubes);
  const Layout& s = in.s;
  const int64_t N = in.pos.size(0), E = in.index.size(1);
  auto out = torch::zeros({N, s.R, s.B * s.W}, in.pos.options());
  if (E == 0 || N == 0) return out;
  const int64_t* centre = in.index.data_ptr<int64_t>();
  const int64_t* nbr = centre + E;
  const bool sorted = sorted_by_centre(centre, E);
  AT_DISPATCH_FLOATING_TYPES(in.pos.scalar_type(), "neighbour_sums", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const PaddedInputs<scalar_t> p(in);
    auto run = [&](int64_t begin, int64_t end) {
      sums_range<scalar_t>(in.pos.data_ptr<scalar_t>(), centre, nbr,
                           data_or_null<scalar_t>(in.shifts), p.v.data(), p.x_or_null(),
                           in.rs.data_ptr<scalar_t>(), in.eta.data_ptr<scalar_t>(),
                           (scalar_t)cutoff, (scalar_t)eps, p.s, begin, end, o);
    };
    if (!sorted) {
      run(0, E);  // an atom's edges may be anywhere: one thread writes every atom
      return;
    }
    // Threads take ranges of edges moved to the first edge of a centre: no atom is shared.
    at::parallel_for(0, E, 4096, [&](int64_t begin, int64_t end) {
      const int64_t b = first_of_centre(centre, E, begin), e = first_of_centre(centre, E, end);
      if (b < e) run(b, e);
    });
  });
  return out;
}

std::vector<torch::Tensor> neighbour_sums_backward(
    torch::Tensor grad, torch::Tensor pos, torch::Tensor index, c10::optional<torch::Tensor> shifts,
    torch::Tensor v, c10::optional<torch::Tensor> x, torch::Tensor rs, torch::Tensor eta,
    double cutoff, double eps, bool vec_rows, bool sca_row, bool centre_vectors,
    bool bond_vectors, bool bond_cubes) {
  const Inputs in = prepare(pos, index, shifts, v, x, rs, eta, vec_rows, sca_row,
                            centre_vectors, bond_vectors, bond_cubes);
  const Layout& s = in.s;
  grad = grad.to(in.pos.scalar_type()).contiguous();
  const int64_t E = in.index.size(1);
  TORCH_CHECK(grad.numel() == in.pos.size(0) * s.R * s.B * s.W,
              "neighbour_sums_backward: the gradient does not match the sums");
  auto gpos = torch::zeros_like(in.pos);
  auto gshift = in.shifts.defined() ? torch::zeros_like(in.shifts) : torch::empty({0}, in.pos.options());
  auto gv = torch::empty_like(in.v);  // written whole from the padded rows below
  auto gx = in.x.defined() ? torch::empty_like(in.x) : torch::empty({0}, in.pos.options());
  if (E == 0) return {gpos, gshift, gv.zero_(), gx.zero_()};
  const int64_t* centre = in.index.data_ptr<int64_t>();
  // threads only where each has a few thousand edges (the forward's grain)
  const bool split = sorted_by_centre(centre, E) && at::get_num_threads() > 1 && E >= 8192;
  AT_DISPATCH_FLOATING_TYPES(in.pos.scalar_type(), "neighbour_sums_backward", [&] {
    const PaddedInputs<scalar_t> p(in);
    const int64_t N = in.pos.size(0), npos = 3 * N, nv = (N + 1) * p.s.Fp;
    const int64_t nx = p.x.empty() ? 0 : (3 * N + 1) * p.s.Fvp;
    std::vector<scalar_t> gvp(nv, 0), gxp(nx, 0);
    // The edges cut into one range of whole centres per thread; range t > 0 adds into its own
    // copies of gpos, gv, gx (a neighbour's rows can belong to another range's atoms), summed
    // after; range 0 into the results. Ranges, not thread ids, own the copies.
    const int64_t threads = split ? at::get_num_threads() : 1;
    std::vector<int64_t> cut(threads + 1);
    for (int64_t t = 0; t <= threads; ++t) cut[t] = first_of_centre(centre, E, E * t / threads);
    std::vector<std::vector<scalar_t>> own(threads);
    auto run = [&](int64_t begin, int64_t end, int64_t t) {
      scalar_t* gp = gpos.data_ptr<scalar_t>();
      scalar_t* gvt = gvp.data();
      scalar_t* gxt = gxp.data();
      if (t > 0) {
        if (own[t].empty()) own[t].assign(npos + nv + nx, scalar_t(0));
        gp = own[t].data();
        gvt = gp + npos;
        gxt = gvt + nv;
      }
      sums_backward<scalar_t>(
          grad.data_ptr<scalar_t>(), in.pos.data_ptr<scalar_t>(), centre, centre + E,
          data_or_null<scalar_t>(in.shifts), p.v.data(), p.x_or_null(),
          in.rs.data_ptr<scalar_t>(), in.eta.data_ptr<scalar_t>(), (scalar_t)cutoff,
          (scalar_t)eps, p.s, begin, end, gp,
          in.shifts.defined() ? gshift.data_ptr<scalar_t>() : nullptr, gvt,
          p.x.empty() ? nullptr : gxt);
    };
    if (!split) {
      run(0, E, 0);
    } else {
      at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t)
          if (cut[t] < cut[t + 1]) run(cut[t], cut[t + 1], t);
      });
      for (int64_t t = 1; t < threads; ++t) {
        if (own[t].empty()) continue;
        const scalar_t* o = own[t].data();
        scalar_t* gp = gpos.data_ptr<scalar_t>();
        for (int64_t c = 0; c < npos; ++c) gp[c] += o[c];
        for (int64_t c = 0; c < nv; ++c) gvp[c] += o[npos + c];
        for (int64_t c = 0; c < nx; ++c) gxp[c] += o[npos + nv + c];
      }
    }
    // the padded rows back to (N, F) and (N, 3, Fv)
    scalar_t* gv_out = gv.data_ptr<scalar_t>();
    for (int64_t r = 0; r < N; ++r) std::copy_n(gvp.data() + r * p.s.Fp, s.F, gv_out + r * s.F);
    if (!p.x.empty()) {
      scalar_t* gx_out = gx.data_ptr<scalar_t>();
      for (int64_t r = 0; r < 3 * N; ++r) std::copy_n(gxp.data() + r * p.s.Fvp, s.Fv, gx_out + r * s.Fv);
    }
  });
  return {gpos, gshift, gv, gx};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("neighbour_sums", &neighbour_sums, "neighbour sums of VectorGaussianConv");
  m.def("neighbour_sums_backward", &neighbour_sums_backward, "their gradients (first order)");
  m.def("openmp", []() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  }, "whether the kernels were built with OpenMP (threads)");
}
