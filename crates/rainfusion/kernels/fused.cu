// Fused elementwise kernels of a video-DiT block, around attention (Wan2.1 layout): each one
// replaces a chain of candle ops that read and wrote the full [rows, dim] activation several
// times in f32. All arithmetic is f32; 16-bit tensors are read and written as bf16 or f16.
//
//   rf_residual_norm_*  v = x + (y + bias) · gate[batch] (or v = x); out = v (f32);
//                       h = LayerNorm(v) · a[batch] + c[batch] (16-bit), each part optional:
//                       a gated residual update and the next LayerNorm in one read of the
//                       stream. Modulation: a = 1 + scale, c = shift (per batch); affine norm:
//                       a = weight, c = bias (batch stride 0). Two-pass mean/variance.
//   rf_rms_rope_*       y = RoPE(RMSNorm(x + bias) · weight)          (x 16-bit → y 16-bit)
//                       RMS over the full row (all heads), RoPE per head on interleaved pairs
//                       with cos/sin [tokens, head_dim/2] indexed by row % tokens; no tables = no RoPE.
// These two keep a row in registers: a group of 1–8 warps per row, 16-byte (f32) or 8-byte
// (16-bit) accesses (suffix v4; v1 and v2 take any width and alignment, element by element,
// v2 keeping RoPE's pairs in one thread).
//   rf_bias_gelu_*      y = gelu_tanh(y + bias), in place             (y 16-bit; a CTA per row)
//
// Channel-axis kernels of the VAE decoder, on [images, C, pixels] memory (pixels contiguous),
// for bf16, f16 and f32 (suffix _f32); f32 arithmetic throughout:
//   rf_channel_norm_*   y = act(u · scale / max(‖u‖_C, floor) · gamma[c] + beta[c]),
//                       u = x + in_bias[c]; act = SiLU or identity; in_bias, beta optional.
//                       One read of x, one write of y: a CTA stages a [C, tile] slab of x in
//                       shared memory (threads along pixels, coalesced; loop over channels).
//   rf_channel_bias_*   out = x + bias[c] (+ residual)                (a conv's bias add)
//
// Activations into float8_e4m3fn for cuBLASLt's fp8 GEMM (bf16 or f16 in), grid-stride loops:
//   rf_absmax_*         amax[0] = max(amax[0], max |x|)               (amax zeroed by the caller)
//   rf_to_fp8_*         out = e4m3(x / s), s = max(amax[0], 1e-12) / 448; scale[0] = s
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

namespace rf_fused {

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;
// Values of one row each lane keeps in registers. A row is read by a group of 1, 2, 4 or 8
// warps, so rows up to WARPS · 32 · LANE_VALUES = 12,288 wide fit.
constexpr int LANE_VALUES = 48;

// Elements per access of the wide row kernels: 16 bytes of f32, 8 of a 16-bit type. The
// narrow ones (VEC 1 or 2) access element by element, so they take any alignment.
constexpr int WIDE = 4;

// WIDE consecutive elements, read or written as one access of WIDE · sizeof(T) bytes.
template <typename T>
struct alignas(sizeof(T) * WIDE) Pack {
  T v[WIDE];
};

// VEC consecutive elements at p, as f32: one access when VEC is WIDE (p aligned to it).
template <typename T, int VEC>
__device__ __forceinline__ void load_f32(const T* p, float* out) {
  if constexpr (VEC == WIDE) {
    const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_f32<T>(pk.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_f32<T>(p[i]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_f32(T* p, const float* in) {
  if constexpr (VEC == WIDE) {
    Pack<T> pk;
#pragma unroll
    for (int i = 0; i < VEC; ++i) pk.v[i] = from_f32<T>(in[i]);
    *reinterpret_cast<Pack<T>*>(p) = pk;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) p[i] = from_f32<T>(in[i]);
  }
}

// Where a thread sits among the rows: a CTA holds WARPS / group rows, each read by `group`
// consecutive warps. Lane `lane` of the group's warp `warp` owns the VEC-wide pieces
// k = 0 .. LANE_VALUES / VEC − 1 at column ((k · group + warp) · 32 + lane) · VEC, so each warp
// reads one contiguous stretch per piece. `valid` is false on the last CTA's rows past the end:
// those threads take part in the barriers and touch no memory.
struct RowPlace {
  int64_t row;
  bool valid;
  int group, warp, lane, first_warp;

  __device__ RowPlace(int64_t rows, int group_warps) {
    const int w = threadIdx.x / 32;
    group = group_warps;
    lane = threadIdx.x % 32;
    warp = w % group;
    first_warp = w - warp;
    row = static_cast<int64_t>(blockIdx.x) * (WARPS / group) + w / group;
    valid = row < rows;
  }

  template <int VEC>
  __device__ __forceinline__ int column(int k) const {
    return ((k * group + warp) * 32 + lane) * VEC;
  }
};

// Sum over the row's group of warps; every thread of the group gets it. `scratch` holds WARPS
// floats. `group` is the same in the whole CTA, so the barriers are uniform.
__device__ __forceinline__ float group_sum(float v, float* scratch, const RowPlace& p) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (p.group == 1) return v;
  __syncthreads();  // scratch may still be read by a previous call
  if (p.lane == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < p.group; ++w) total += scratch[p.first_warp + w];
  return total;
}

// One pass over rows of the residual stream (all [rows, dim], row-major):
//   v = x + (y + bias) · gate[batch]     when y is given (bias, gate optional), else v = x;
//   out = v                              when out is given (f32);
//   h = LayerNorm(v) · a[batch] + c[batch]  when h is given (16-bit; two-pass mean/variance).
// x f32; y, bias, h 16-bit; gate, a, c f32 with the batch of row r = r / rows_per_batch (a, c
// advance by ac_batch_stride per batch: 0 for an affine norm's weight and bias, dim for a
// modulation). A gated residual update, a LayerNorm, or both with one read of the stream.
template <typename T, int VEC>
__device__ void residual_norm(const float* __restrict__ x, const T* __restrict__ y,
                              const T* __restrict__ bias, const float* __restrict__ gate,
                              float* __restrict__ out, const float* __restrict__ a,
                              const float* __restrict__ c, int64_t ac_batch_stride,
                              T* __restrict__ h, int64_t rows, int dim, int rows_per_batch,
                              int group, float eps) {
  __shared__ float scratch[WARPS];
  constexpr int PIECES = LANE_VALUES / VEC;
  const RowPlace p(rows, group);
  const int64_t base = p.row * dim;
  const int64_t batch = p.row / rows_per_batch;
  const float* gr = gate != nullptr ? gate + batch * dim : nullptr;
  float v[PIECES][VEC];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < PIECES; ++k) {
    const int col = p.column<VEC>(k);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[k][i] = 0.f;
    if (!p.valid || col >= dim) continue;
    load_f32<float, VEC>(x + base + col, v[k]);
    if (y != nullptr) {
      float u[VEC];
      load_f32<T, VEC>(y + base + col, u);
      if (bias != nullptr) {
        float b[VEC];
        load_f32<T, VEC>(bias + col, b);
#pragma unroll
        for (int i = 0; i < VEC; ++i) u[i] += b[i];
      }
      if (gr != nullptr) {
        float g[VEC];
        load_f32<float, VEC>(gr + col, g);
#pragma unroll
        for (int i = 0; i < VEC; ++i) u[i] *= g[i];
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[k][i] += u[i];
    }
    if (out != nullptr) store_f32<float, VEC>(out + base + col, v[k]);
#pragma unroll
    for (int i = 0; i < VEC; ++i) sum += v[k][i];
  }
  if (h == nullptr) return;  // a kernel argument: the same in every thread
  const float mean = group_sum(sum, scratch, p) / dim;
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < PIECES; ++k) {
    if (!p.valid || p.column<VEC>(k) >= dim) continue;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float d = v[k][i] - mean;
      sq += d * d;
    }
  }
  const float rstd = rsqrtf(group_sum(sq, scratch, p) / dim + eps);
  if (!p.valid) return;  // no barrier follows
  const float* ar = a + batch * ac_batch_stride;
  const float* cr = c + batch * ac_batch_stride;
#pragma unroll
  for (int k = 0; k < PIECES; ++k) {
    const int col = p.column<VEC>(k);
    if (col >= dim) continue;
    float av[VEC], cv[VEC], o[VEC];
    load_f32<float, VEC>(ar + col, av);
    load_f32<float, VEC>(cr + col, cv);
#pragma unroll
    for (int i = 0; i < VEC; ++i) o[i] = (v[k][i] - mean) * rstd * av[i] + cv[i];
    store_f32<T, VEC>(h + base + col, o);
  }
}

// y = RoPE(RMSNorm(x + bias) · weight) over rows of [rows, dim] (rows in the RowPlace groups).
// x, bias, y 16-bit; weight f32 [dim]; cos, sin f32 [tokens, head_dim/2], token = row % tokens,
// or null (no RoPE). RMS over the full row (all heads); RoPE per head on interleaved pairs
// (2j, 2j+1): VEC is even, so a piece holds whole pairs.
template <typename T, int VEC>
__device__ void rms_rope(const T* __restrict__ x, const T* __restrict__ bias,
                         const float* __restrict__ weight, const float* __restrict__ cos_t,
                         const float* __restrict__ sin_t, T* __restrict__ y, int64_t rows,
                         int dim, int head_dim, int tokens, int group, float eps) {
  static_assert(VEC % 2 == 0, "pieces hold whole RoPE pairs");
  __shared__ float scratch[WARPS];
  constexpr int PIECES = LANE_VALUES / VEC;
  const RowPlace p(rows, group);
  const int64_t base = p.row * dim;
  float v[PIECES][VEC];
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < PIECES; ++k) {
    const int col = p.column<VEC>(k);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[k][i] = 0.f;
    if (!p.valid || col >= dim) continue;
    load_f32<T, VEC>(x + base + col, v[k]);
    if (bias != nullptr) {
      float b[VEC];
      load_f32<T, VEC>(bias + col, b);
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[k][i] += b[i];
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) sq += v[k][i] * v[k][i];
  }
  const float rstd = rsqrtf(group_sum(sq, scratch, p) / dim + eps);
  if (!p.valid) return;  // no barrier follows
  const int half_head = head_dim / 2;
  const int64_t token_row = (p.row % tokens) * half_head;
#pragma unroll
  for (int k = 0; k < PIECES; ++k) {
    const int col = p.column<VEC>(k);
    if (col >= dim) continue;
    float w[VEC], o[VEC];
    load_f32<float, VEC>(weight + col, w);
#pragma unroll
    for (int i = 0; i < VEC; ++i) o[i] = v[k][i] * rstd * w[i];
    if (cos_t != nullptr) {
#pragma unroll
      for (int j = 0; j < VEC / 2; ++j) {
        const int64_t t = token_row + (col / 2 + j) % half_head;
        const float cs = cos_t[t], sn = sin_t[t];
        const float a = o[2 * j], b = o[2 * j + 1];
        o[2 * j] = a * cs - b * sn;
        o[2 * j + 1] = a * sn + b * cs;
      }
    }
    store_f32<T, VEC>(y + base + col, o);
  }
}

// ---- The CTA-per-row forms (the default until the row kernels above have run on a GPU; see
// RAINFUSION_CUDA_ROW_KERNELS in cuda/rows.rs): one CTA of 256 threads per row, element accesses.

// Values of one row each thread keeps in registers: rows up to THREADS · MAX_PER_THREAD wide.
constexpr int MAX_PER_THREAD = 24;

// Sum over the block; every thread gets the result. `scratch` holds THREADS/32 floats.
__device__ __forceinline__ float cta_sum(float v, float* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < THREADS / 32; ++w) total += scratch[w];
  return total;
}

// One CTA per row. x: [rows, dim] f32 contiguous; a, c: f32, row r uses a + (r / rows_per_batch)
// · ac_batch_stride; y: [rows, dim] 16-bit.
template <typename T>
__device__ void ln_affine_cta(const float* __restrict__ x, const float* __restrict__ a,
                          const float* __restrict__ c, T* __restrict__ y, int dim,
                          int rows_per_batch, int64_t ac_batch_stride, float eps) {
  __shared__ float scratch[THREADS / 32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * dim;
  float v[MAX_PER_THREAD];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < MAX_PER_THREAD; ++i) {
    const int col = threadIdx.x + i * THREADS;
    v[i] = col < dim ? xr[col] : 0.f;
    sum += v[i];
  }
  const float mean = cta_sum(sum, scratch) / dim;
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < MAX_PER_THREAD; ++i) {
    const int col = threadIdx.x + i * THREADS;
    const float d = col < dim ? v[i] - mean : 0.f;
    sq += d * d;
  }
  const float rstd = rsqrtf(cta_sum(sq, scratch) / dim + eps);
  const int64_t batch = row / rows_per_batch;
  const float* ar = a + batch * ac_batch_stride;
  const float* cr = c + batch * ac_batch_stride;
  T* yr = y + row * dim;
#pragma unroll
  for (int i = 0; i < MAX_PER_THREAD; ++i) {
    const int col = threadIdx.x + i * THREADS;
    if (col < dim) yr[col] = from_f32<T>((v[i] - mean) * rstd * ar[col] + cr[col]);
  }
}

// One CTA per row; each thread owns interleaved pairs (2p, 2p+1). x: [rows, dim] 16-bit
// contiguous; bias: [dim] 16-bit or null; weight: [dim] f32; cos, sin: [tokens, head_dim/2] f32
// or null; y: [rows, dim] 16-bit.
template <typename T>
__device__ void rms_rope_cta(const T* __restrict__ x, const T* __restrict__ bias,
                         const float* __restrict__ weight, const float* __restrict__ cos_t,
                         const float* __restrict__ sin_t, T* __restrict__ y, int dim, int head_dim,
                         int tokens, float eps) {
  __shared__ float scratch[THREADS / 32];
  constexpr int MAX_PAIRS = MAX_PER_THREAD / 2;
  const int64_t row = blockIdx.x;
  const T* xr = x + row * dim;
  const int pairs = dim / 2;
  float v0[MAX_PAIRS], v1[MAX_PAIRS];
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < MAX_PAIRS; ++i) {
    const int p = threadIdx.x + i * THREADS;
    v0[i] = v1[i] = 0.f;
    if (p < pairs) {
      v0[i] = to_f32<T>(xr[2 * p]);
      v1[i] = to_f32<T>(xr[2 * p + 1]);
      if (bias != nullptr) {
        v0[i] += to_f32<T>(bias[2 * p]);
        v1[i] += to_f32<T>(bias[2 * p + 1]);
      }
    }
    sq += v0[i] * v0[i] + v1[i] * v1[i];
  }
  const float rstd = rsqrtf(cta_sum(sq, scratch) / dim + eps);
  const int half_head = head_dim / 2;
  const int64_t token = row % tokens;
  T* yr = y + row * dim;
#pragma unroll
  for (int i = 0; i < MAX_PAIRS; ++i) {
    const int p = threadIdx.x + i * THREADS;
    if (p >= pairs) continue;
    float a = v0[i] * rstd * weight[2 * p];
    float b = v1[i] * rstd * weight[2 * p + 1];
    if (cos_t != nullptr) {
      const int64_t t = token * half_head + p % half_head;
      const float cs = cos_t[t], sn = sin_t[t];
      const float ra = a * cs - b * sn;
      const float rb = a * sn + b * cs;
      a = ra;
      b = rb;
    }
    yr[2 * p] = from_f32<T>(a);
    yr[2 * p + 1] = from_f32<T>(b);
  }
}

// One CTA per row, threads striding over the columns. x, out: [rows, dim] f32; y: [rows, dim]
// 16-bit; bias: [dim] 16-bit or null; gate: f32 [batches, dim] (row r in batch r / rows_per_batch)
// or null.
template <typename T>
__device__ void gated_residual_cta(const float* __restrict__ x, const T* __restrict__ y,
                               const T* __restrict__ bias, const float* __restrict__ gate,
                               float* __restrict__ out, int dim, int rows_per_batch) {
  const int64_t row = blockIdx.x;
  const int64_t base = row * dim;
  const float* gr = gate != nullptr ? gate + (row / rows_per_batch) * dim : nullptr;
  for (int col = threadIdx.x; col < dim; col += blockDim.x) {
    float u = to_f32<T>(y[base + col]);
    if (bias != nullptr) u += to_f32<T>(bias[col]);
    if (gr != nullptr) u *= gr[col];
    out[base + col] = x[base + col] + u;
  }
}

__device__ __forceinline__ float gelu_tanh(float v) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * v * (1.f + tanhf(k * (v + 0.044715f * v * v * v)));
}

// One CTA per row, in place. y: [rows, dim] 16-bit; bias: [dim] 16-bit or null.
template <typename T>
__device__ void bias_gelu(T* __restrict__ y, const T* __restrict__ bias, int dim) {
  T* yr = y + static_cast<int64_t>(blockIdx.x) * dim;
  for (int col = threadIdx.x; col < dim; col += blockDim.x) {
    float u = to_f32<T>(yr[col]);
    if (bias != nullptr) u += to_f32<T>(bias[col]);
    yr[col] = from_f32<T>(gelu_tanh(u));
  }
}

// ---- VAE channel-axis kernels ----

constexpr int CHANNEL_THREADS = 256;
// Channels each thread loads before it stores any: enough loads in flight per SM to cover the
// memory latency with 2-byte accesses (16 × 2 B × 1024+ resident threads ≥ 32 KiB per SM).
constexpr int CHANNEL_UNROLL = 16;

// x, y: [images, channels, pixels] contiguous, in T. One CTA per (image, tile of `tile` pixels);
// `tile` is a power of two ≤ CHANNEL_THREADS, so the CTA is `tile` pixel lanes × (threads/tile)
// channel lanes. Dynamic shared memory: CHANNEL_THREADS floats (partial sums of squares), then
// channels · tile values of T (the slab of x, kept so that x is read from device memory once). in_bias, beta: [channels] f32 or null; gamma:
// [channels] f32. Every (valid pixel, channel) of the tile is written.
template <typename T>
__device__ void channel_norm(const T* __restrict__ x, const float* __restrict__ in_bias,
                             const float* __restrict__ gamma, const float* __restrict__ beta,
                             T* __restrict__ y, int channels, int64_t pixels, int tile,
                             int64_t tiles_per_image, float scale, float norm_floor,
                             int apply_silu) {
  extern __shared__ __align__(16) unsigned char channel_smem[];
  float* partial = reinterpret_cast<float*>(channel_smem);                  // [lanes][tile]
  T* slab = reinterpret_cast<T*>(channel_smem + CHANNEL_THREADS * sizeof(float));  // [C][tile]
  const int64_t image = blockIdx.x / tiles_per_image;
  const int64_t p = (blockIdx.x % tiles_per_image) * tile + threadIdx.x % tile;
  const int px = threadIdx.x % tile;
  const int lanes = CHANNEL_THREADS / tile;
  const int lane = threadIdx.x / tile;
  const bool valid = p < pixels;
  const int64_t base = image * channels * pixels + p;
  const T* xp = x + base;

  float sq = 0.f;
  for (int c0 = lane; c0 < channels; c0 += lanes * CHANNEL_UNROLL) {
    T v[CHANNEL_UNROLL];
#pragma unroll
    for (int u = 0; u < CHANNEL_UNROLL; ++u) {
      const int c = c0 + u * lanes;
      v[u] = (valid && c < channels) ? xp[static_cast<int64_t>(c) * pixels] : from_f32<T>(0.f);
    }
#pragma unroll
    for (int u = 0; u < CHANNEL_UNROLL; ++u) {
      const int c = c0 + u * lanes;
      if (c < channels) {
        slab[c * tile + px] = v[u];
        float f = to_f32<T>(v[u]);
        if (in_bias != nullptr) f += in_bias[c];
        sq += f * f;
      }
    }
  }
  partial[threadIdx.x] = sq;
  __syncthreads();
  float total = 0.f;
  for (int l = 0; l < lanes; ++l) total += partial[l * tile + px];
  if (!valid) return;  // no barrier follows
  const float factor = scale / fmaxf(sqrtf(total), norm_floor);
  T* yp = y + base;
#pragma unroll 4
  for (int c = lane; c < channels; c += lanes) {
    float f = to_f32<T>(slab[c * tile + px]);
    if (in_bias != nullptr) f += in_bias[c];
    float out = f * factor * gamma[c];
    if (beta != nullptr) out += beta[c];
    if (apply_silu) out = out / (1.f + __expf(-out));
    yp[static_cast<int64_t>(c) * pixels] = from_f32<T>(out);
  }
}

// Elements per thread of rf_channel_bias (one CTA covers CHANNEL_THREADS · BIAS_PER_THREAD
// pixels of one row).
constexpr int BIAS_PER_THREAD = 8;

// x, out, residual: [rows = images · channels, pixels] contiguous in T; bias: [channels] f32;
// residual optional (null). One CTA per (row, tile). out may be x (in place): each element is
// read and written by the same thread, all loads of a thread before its stores.
template <typename T>
__device__ void channel_bias(const T* x, const float* __restrict__ bias,
                             const T* __restrict__ residual, T* out, int channels,
                             int64_t pixels, int64_t tiles_per_row) {
  const int64_t row = blockIdx.x / tiles_per_row;
  const int64_t p0 = (blockIdx.x % tiles_per_row) * (CHANNEL_THREADS * BIAS_PER_THREAD);
  const float b = bias[row % channels];
  const int64_t base = row * pixels;
  float v[BIAS_PER_THREAD];
#pragma unroll
  for (int u = 0; u < BIAS_PER_THREAD; ++u) {
    const int64_t p = p0 + threadIdx.x + u * CHANNEL_THREADS;
    v[u] = 0.f;
    if (p < pixels) {
      v[u] = to_f32<T>(x[base + p]) + b;
      if (residual != nullptr) v[u] += to_f32<T>(residual[base + p]);
    }
  }
#pragma unroll
  for (int u = 0; u < BIAS_PER_THREAD; ++u) {
    const int64_t p = p0 + threadIdx.x + u * CHANNEL_THREADS;
    if (p < pixels) out[base + p] = from_f32<T>(v[u]);
  }
}

}  // namespace rf_fused

#define RF_CHANNEL_ENTRIES(SUFFIX, T)                                                              \
  extern "C" __global__ void __launch_bounds__(rf_fused::CHANNEL_THREADS)                          \
      rf_channel_norm_##SUFFIX(const T* x, const float* in_bias, const float* gamma,               \
                               const float* beta, T* y, int channels, int64_t pixels, int tile,    \
                               int64_t tiles_per_image, float scale, float norm_floor,             \
                               int apply_silu) {                                                   \
    rf_fused::channel_norm<T>(x, in_bias, gamma, beta, y, channels, pixels, tile,                  \
                              tiles_per_image, scale, norm_floor, apply_silu);                     \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(rf_fused::CHANNEL_THREADS)                          \
      rf_channel_bias_##SUFFIX(const T* x, const float* bias, const T* residual, T* out,           \
                               int channels, int64_t pixels, int64_t tiles_per_row) {              \
    rf_fused::channel_bias<T>(x, bias, residual, out, channels, pixels, tiles_per_row);            \
  }

RF_CHANNEL_ENTRIES(bf16, __nv_bfloat16)
RF_CHANNEL_ENTRIES(f16, __half)
RF_CHANNEL_ENTRIES(f32, float)

// The row kernels in two forms each: 4 elements per access where the row width and the pointers
// allow it, else element by element (in pairs for RoPE).
#define RF_ROW_ENTRIES(SUFFIX, T, VEC, RMS_VEC)                                                   \
  extern "C" __global__ void __launch_bounds__(rf_fused::THREADS) rf_residual_norm_v##VEC##_##SUFFIX( \
      const float* x, const T* y, const T* bias, const float* gate, float* out, const float* a,  \
      const float* c, int64_t ac_batch_stride, T* h, int64_t rows, int dim, int rows_per_batch,   \
      int group, float eps) {                                                                     \
    rf_fused::residual_norm<T, VEC>(x, y, bias, gate, out, a, c, ac_batch_stride, h, rows, dim,   \
                                    rows_per_batch, group, eps);                                  \
  }                                                                                               \
  extern "C" __global__ void __launch_bounds__(rf_fused::THREADS) rf_rms_rope_v##RMS_VEC##_##SUFFIX( \
      const T* x, const T* bias, const float* weight, const float* cos_t, const float* sin_t,    \
      T* y, int64_t rows, int dim, int head_dim, int tokens, int group, float eps) {              \
    rf_fused::rms_rope<T, RMS_VEC>(x, bias, weight, cos_t, sin_t, y, rows, dim, head_dim, tokens, \
                                   group, eps);                                                   \
  }

#define RF_CTA_ROW_ENTRIES(SUFFIX, T)                                                                \
  extern "C" __global__ void __launch_bounds__(rf_fused::THREADS)                                  \
      rf_ln_affine_##SUFFIX(const float* x, const float* a, const float* c, T* y, int dim,         \
                            int rows_per_batch, int64_t ac_batch_stride, float eps) {              \
    rf_fused::ln_affine_cta<T>(x, a, c, y, dim, rows_per_batch, ac_batch_stride, eps);                 \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(rf_fused::THREADS)                                  \
      rf_rms_rope_##SUFFIX(const T* x, const T* bias, const float* weight, const float* cos_t,     \
                           const float* sin_t, T* y, int dim, int head_dim, int tokens,            \
                           float eps) {                                                            \
    rf_fused::rms_rope_cta<T>(x, bias, weight, cos_t, sin_t, y, dim, head_dim, tokens, eps);           \
  }                                                                                                \
  extern "C" __global__ void rf_gated_residual_##SUFFIX(const float* x, const T* y, const T* bias, \
                                                        const float* gate, float* out, int dim,    \
                                                        int rows_per_batch) {                      \
    rf_fused::gated_residual_cta<T>(x, y, bias, gate, out, dim, rows_per_batch);                       \
  }

#define RF_FUSED_ENTRIES(SUFFIX, T)                                                                \
  RF_CTA_ROW_ENTRIES(SUFFIX, T)                                                                    \
  RF_ROW_ENTRIES(SUFFIX, T, 4, 4)                                                                  \
  RF_ROW_ENTRIES(SUFFIX, T, 1, 2)                                                                  \
  extern "C" __global__ void rf_bias_gelu_##SUFFIX(T* y, const T* bias, int dim) {                 \
    rf_fused::bias_gelu<T>(y, bias, dim);                                                          \
  }

RF_FUSED_ENTRIES(bf16, __nv_bfloat16)
RF_FUSED_ENTRIES(f16, __half)

namespace rf_fused {

// Largest finite float8_e4m3fn value.
constexpr float FP8_E4M3_MAX = 448.f;

template <typename T>
__device__ void absmax(const T* x, int64_t n, float* amax) {
  float m = 0.f;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    m = fmaxf(m, fabsf(to_f32(x[i])));
  for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
  __shared__ float warp_max[THREADS / 32];
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x < 32) {
    m = threadIdx.x < THREADS / 32 ? warp_max[threadIdx.x] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    // Non-negative floats order as their bit patterns do.
    if (threadIdx.x == 0) atomicMax(reinterpret_cast<int*>(amax), __float_as_int(m));
  }
}

template <typename T>
__device__ void to_fp8(const T* x, const float* amax, __nv_fp8_e4m3* out, float* scale, int64_t n) {
  const float s = fmaxf(amax[0], 1e-12f) / FP8_E4M3_MAX;
  const float inv = 1.f / s;
  if (blockIdx.x == 0 && threadIdx.x == 0) scale[0] = s;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = __nv_fp8_e4m3(to_f32(x[i]) * inv);  // saturates to ±448
}

}  // namespace rf_fused

#define RF_FP8_ENTRIES(SUFFIX, T)                                                                  \
  extern "C" __global__ void __launch_bounds__(rf_fused::THREADS)                                  \
      rf_absmax_##SUFFIX(const T* x, int64_t n, float* amax) {                                     \
    rf_fused::absmax<T>(x, n, amax);                                                               \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(rf_fused::THREADS)                                  \
      rf_to_fp8_##SUFFIX(const T* x, const float* amax, __nv_fp8_e4m3* out, float* scale,          \
                         int64_t n) {                                                              \
    rf_fused::to_fp8<T>(x, amax, out, scale, n);                                                   \
  }

RF_FP8_ENTRIES(bf16, __nv_bfloat16)
RF_FP8_ENTRIES(f16, __half)
