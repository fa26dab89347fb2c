// A mixed-kernel depthwise conv for channels_last fp32 on CPU: a prototype timed by
// benchmarks/depthwise_kernel.py (issue #6), not part of the library.
//
// Each channel group runs at its own kernel size (no zero taps), with bias and activation
// (0 none, 1 ReLU, 2 swish, 3 h-swish) fused. 16 channels per vector (GCC vector extensions,
// compiled with -march=native), 4 output pixels per block of registers, OpenMP over
// (image, output row). Needs at least 16 channels per group.
#include <cstring>

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int v16i __attribute__((vector_size(64), aligned(4)));

static inline v16 splat(float a) { v16 v = {0}; return v + a; }
static inline v16 load(const float* p) { return *(const v16*)p; }

// exp(x) as in Cephes expf: x = n ln2 + r, e^r by a degree-6 polynomial, 2^n from the exponent bits.
static inline v16 vexp(v16 x) {
  x = x < splat(88.3762626647949f) ? x : splat(88.3762626647949f);
  x = x > splat(-87.3365447504f) ? x : splat(-87.3365447504f);
  v16 t = x * 1.44269504088896341f + 0.5f;
  v16 fn = __builtin_convertvector(__builtin_convertvector(t, v16i), v16);
  fn = fn > t ? fn - 1.f : fn;  // floor
  v16 r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  v16 p = splat(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.f;
  v16i e = (__builtin_convertvector(fn, v16i) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &e, 64);
  return p * scale;
}

static inline v16 activate(v16 v, int act) {
  const v16 zero = {0};
  if (act == 1) return v > zero ? v : zero;
  if (act == 2) return v / (1.f + vexp(-v));
  if (act == 3) {
    v16 r = v + 3.f;
    r = r < zero ? zero : r;
    r = r > splat(6.f) ? splat(6.f) : r;
    return v * r * (1.f / 6.f);
  }
  return v;
}

// 4 output pixels x 16 channels, every tap inside the row (no column checks).
template <int K, int S>
static inline void block4(const float* x, const float* w, float* y, v16 b, int C, int W, int cg, int ow, int pad_l,
                          int kh0, int kh1, int row0, int act) {
  v16 a0 = b, a1 = b, a2 = b, a3 = b;
  for (int kh = kh0; kh < kh1; kh++) {
    const float* xr = x + ((long)(row0 + kh) * W + ow * S - pad_l) * C;
    const float* wr = w + kh * K * cg;
#pragma GCC unroll 16
    for (int kw = 0; kw < K; kw++) {
      v16 wv = load(wr + kw * cg);
      a0 += load(xr + (long)kw * C) * wv;
      a1 += load(xr + (long)(S + kw) * C) * wv;
      a2 += load(xr + (long)(2 * S + kw) * C) * wv;
      a3 += load(xr + (long)(3 * S + kw) * C) * wv;
    }
  }
  *(v16*)y = activate(a0, act);
  *(v16*)(y + C) = activate(a1, act);
  *(v16*)(y + 2 * C) = activate(a2, act);
  *(v16*)(y + 3 * C) = activate(a3, act);
}

// One output pixel x 16 channels, with column checks (the borders).
static inline void pixel(const float* x, const float* w, float* y, v16 b, int C, int W, int cg, int k, int stride,
                         int ow, int pad_l, int kh0, int kh1, int row0, int act) {
  v16 a = b;
  for (int kh = kh0; kh < kh1; kh++) {
    const float* xr = x + (long)(row0 + kh) * W * C;
    const float* wr = w + kh * k * cg;
    for (int kw = 0; kw < k; kw++) {
      int iw = ow * stride + kw - pad_l;
      if (iw >= 0 && iw < W) a += load(xr + (long)iw * C) * load(wr + kw * cg);
    }
  }
  *(v16*)y = activate(a, act);
}

typedef void (*block_fn)(const float*, const float*, float*, v16, int, int, int, int, int, int, int, int, int);

static block_fn pick_block(int k, int stride) {
#define CASE(K) case K: return stride == 1 ? block4<K, 1> : block4<K, 2>;
  switch (k) { CASE(3) CASE(5) CASE(7) CASE(9) CASE(11) default: return nullptr; }
#undef CASE
}

// x: (N, H, W, C); y: (N, OH, OW, C). Group g: channels [c0[g], c0[g] + cg[g]), kernel ks[g] with
// weights ws[g] laid out (kh, kw, channel), top / left padding pt[g] / pl[g]. bias: (C).
extern "C" void mixed_depthwise(const float* x, float* y, int N, int H, int W, int C, int OH, int OW, int stride,
                                int G, const int* c0, const int* cg, const int* ks, const int* pt, const int* pl,
                                const float* const* ws, const float* bias, int act, int threads) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (int n = 0; n < N; n++) {
    for (int oh = 0; oh < OH; oh++) {
      float* yrow = y + (long)(n * OH + oh) * OW * C;
      const float* ximg = x + (long)n * H * W * C;
      for (int g = 0; g < G; g++) {
        const int k = ks[g], row0 = oh * stride - pt[g];
        const int kh0 = row0 < 0 ? -row0 : 0, kh1 = H - row0 < k ? H - row0 : k;
        const int ow_lo = (pl[g] + stride - 1) / stride;  // first column whose taps are all inside
        int ow_hi = (W - k + pl[g]) / stride;             // last one
        if (ow_hi >= OW) ow_hi = OW - 1;
        const block_fn block = pick_block(k, stride);
        for (int cc = 0; cc < cg[g]; cc += 16) {
          const int c = cc + 16 <= cg[g] ? cc : cg[g] - 16;  // the last vector overlaps the one before
          const float* xc = ximg + c0[g] + c;
          const float* wc = ws[g] + c;
          float* yc = yrow + c0[g] + c;
          const v16 b = load(bias + c0[g] + c);
          int ow = 0;
          for (; ow < OW && (ow < ow_lo || !block); ow++)
            pixel(xc, wc, yc + (long)ow * C, b, C, W, cg[g], k, stride, ow, pl[g], kh0, kh1, row0, act);
          for (; block && ow + 3 <= ow_hi; ow += 4)
            block(xc, wc, yc + (long)ow * C, b, C, W, cg[g], ow, pl[g], kh0, kh1, row0, act);
          for (; ow < OW; ow++)
            pixel(xc, wc, yc + (long)ow * C, b, C, W, cg[g], k, stride, ow, pl[g], kh0, kh1, row0, act);
        }
      }
    }
  }
}
