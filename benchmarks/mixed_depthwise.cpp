// A mixed-kernel depthwise conv for channels_last fp32 on CPU: a prototype timed by
// benchmarks/depthwise_kernel.py (issue #6), not part of the library.
//
// Each channel group runs at its own kernel size (no zero taps), with bias and activation
// (0 none, 1 ReLU, 2 swish, 3 h-swish) fused. 16 channels per vector (GCC vector extensions,
// compiled with -march=native). One OpenMP task per (image, group, vector of 16 channels), the
// image outermost: the task copies its 16 channels of the image into a zero-padded plane in
// thread-local scratch (no border checks after that), then computes each output row in blocks
// of B = 8, 7 or 4 pixels (whichever computes the fewest; the last block overlaps the one before)
// held in registers, loading every input column of a kernel row once for the whole block.
// Needs at least 16 channels per group.
#include <cstring>
#include <vector>

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int v16i __attribute__((vector_size(64), aligned(4)));

static inline v16 splat(float a) { v16 v = {0}; return v + a; }
static inline v16 load(const float* p) { return *(const v16*)p; }
static inline void store(float* p, v16 v) { *(v16*)p = v; }

// exp(x) as in Cephes expf: x = n ln2 + r, e^r by a degree-6 polynomial, 2^n from the exponent bits.
static inline v16 vexp(v16 x) {
  x = x < splat(88.3762626647949f) ? x : splat(88.3762626647949f);
  x = x > splat(-87.3365447504f) ? x : splat(-87.3365447504f);
  v16 t = x * 1.44269504088896341f + 0.5f;
  v16 fn = __builtin_convertvector(__builtin_convertvector(t, v16i), v16);
  fn = fn > t ? fn - 1.f : fn;
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

// B output pixels of one output row, 16 channels, from the padded plane P (row pitch PW pixels of 16 floats).
template <int K, int S, int B>
static inline void block(const float* P, int PW, const float* w, float* y, long ystride, v16 b, int oh, int ow,
                         int act) {
  v16 acc[B];
#pragma GCC unroll 16
  for (int i = 0; i < B; i++) acc[i] = b;
  for (int kh = 0; kh < K; kh++) {
    const float* row = P + ((long)(oh * S + kh) * PW + ow * S) * 16;
    v16 wv[K];
#pragma GCC unroll 16
    for (int kw = 0; kw < K; kw++) wv[kw] = load(w + (kh * K + kw) * 16);
    constexpr int COLS = S * (B - 1) + K;
#pragma GCC unroll 64
    for (int j = 0; j < COLS; j++) {
      v16 in = load(row + j * 16);
#pragma GCC unroll 16
      for (int i = 0; i < B; i++) {
        const int kw = j - S * i;
        if (kw >= 0 && kw < K) acc[i] += in * wv[kw];
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < B; i++) store(y + (long)i * ystride, activate(acc[i], act));
}

template <int K, int S, int B>
static void rows(const float* P, int PW, const float* w, float* y, int OH, int OW, long C, v16 b, int act) {
  for (int oh = 0; oh < OH; oh++) {
    float* yr = y + (long)oh * OW * C;
    int ow = 0;
    for (; ow + B <= OW; ow += B) block<K, S, B>(P, PW, w, yr + ow * C, C, b, oh, ow, act);
    if (ow < OW) block<K, S, B>(P, PW, w, yr + (OW - B) * C, C, b, oh, OW - B, act);  // overlaps: same values
  }
}

template <int K, int S>
static void plane(const float* P, int PW, const float* w, float* y, int OH, int OW, long C, v16 b, int act) {
  // the block width that computes the fewest pixels (the last block overlaps the one before)
  auto cost = [OW](int B) { return OW < B ? 1 << 30 : (OW + B - 1) / B * B; };
  if (OW < 4) return rows<K, S, 1>(P, PW, w, y, OH, OW, C, b, act);
  if (cost(8) <= cost(7) && cost(8) <= cost(4)) rows<K, S, 8>(P, PW, w, y, OH, OW, C, b, act);
  else if (cost(7) <= cost(4)) rows<K, S, 7>(P, PW, w, y, OH, OW, C, b, act);
  else rows<K, S, 4>(P, PW, w, y, OH, OW, C, b, act);
}

typedef void (*plane_fn)(const float*, int, const float*, float*, int, int, long, v16, int);

static plane_fn pick(int k, int s) {
#define CASE(K) case K: return s == 1 ? plane<K, 1> : plane<K, 2>;
  switch (k) { CASE(1) CASE(3) CASE(5) CASE(7) CASE(9) CASE(11) default: return nullptr; }
#undef CASE
}

// x: (N, H, W, C); y: (N, OH, OW, C). Group g: channels [c0[g], c0[g] + cg[g]), kernel ks[g] with
// weights ws[g] laid out (kh, kw, channel), top / left padding pt[g] / pl[g]. bias: (C).
extern "C" void mixed_depthwise(const float* x, float* y, int N, int H, int W, int C, int OH, int OW, int stride,
                                int G, const int* c0, const int* cg, const int* ks, const int* pt, const int* pl,
                                const float* const* ws, const float* bias, int act, int threads) {
  // tasks: (image, group, vector) with the image outermost, so that one thread keeps one image's plane
  std::vector<int> tg, tc;
  for (int g = 0; g < G; g++)
    for (int cc = 0; cc < cg[g]; cc += 16) { tg.push_back(g); tc.push_back(cc + 16 <= cg[g] ? cc : cg[g] - 16); }
  const int T = (int)tg.size();
#pragma omp parallel num_threads(threads)
  {
    static thread_local std::vector<float> scratch, wscratch;
#pragma omp for schedule(static)
    for (long t = 0; t < (long)N * T; t++) {
      const int n = (int)(t / T), g = tg[t % T], c = tc[t % T];
      const int k = ks[g], p = pt[g], q = pl[g];
      const int PH = H + 2 * p, PW = W + 2 * q + 16;
      if ((long)scratch.size() < (long)PH * PW * 16) scratch.resize((long)PH * PW * 16);
      float* P = scratch.data();
      // zero-padded copy of 16 channels of one image
      const float* xi = x + (long)n * H * W * C + c0[g] + c;
      std::memset(P, 0, sizeof(float) * 16 * (long)p * PW);
      std::memset(P + (long)(p + H) * PW * 16, 0, sizeof(float) * 16 * (long)(PH - p - H) * PW);
      for (int ih = 0; ih < H; ih++) {
        float* pr = P + (long)(ih + p) * PW * 16;
        std::memset(pr, 0, sizeof(float) * 16 * q);
        const float* xr = xi + (long)ih * W * C;
        for (int iw = 0; iw < W; iw++) store(pr + (long)(iw + q) * 16, load(xr + (long)iw * C));
        std::memset(pr + (long)(W + q) * 16, 0, sizeof(float) * 16 * (PW - W - q));
      }
      if ((long)wscratch.size() < (long)k * k * 16) wscratch.resize((long)k * k * 16);
      for (int tap = 0; tap < k * k; tap++)
        std::memcpy(wscratch.data() + tap * 16, ws[g] + (long)tap * cg[g] + c, 64);
      const v16 b = load(bias + c0[g] + c);
      pick(k, stride)(P, PW, wscratch.data(), y + (long)n * OH * OW * C + c0[g] + c, OH, OW, C, b, act);
    }
  }
}
