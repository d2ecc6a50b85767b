// RainFusion 2.0 mask prediction on the GPU: block-mean pooling, top-k selection per query
// block, and the CSR (offsets + indices) the attention kernel reads, all without a host round
// trip. The block scores between them are one batched matrix product (cuBLAS, through candle).
//
// Selection rule (same as the CPU `predict` module): row (b, h, qb) keeps every key block whose
// score is >= the keep-th largest score of the row (ties kept), plus every key block at or after
// `first_forced` (the dense tail: first-frame sink and text); rows qb >= first_forced keep all.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace rf {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// x: [B, H, L, D] with strides (sb, sh, sl) in elements, last dim contiguous; order: null, or
// u32 [L] with the token at each position (the block means of the window order, read from the
// natural order with no permuted copy). out: [B, H, blocks, D] f32 contiguous; a trailing
// partial block is averaged over its real tokens. Grid (blocks, heads, batch).
__device__ __forceinline__ int64_t token_at(const uint32_t* __restrict__ order, int pos) {
  return order == nullptr ? static_cast<int64_t>(pos) : static_cast<int64_t>(__ldg(order + pos));
}

// Any dtype and layout: each thread owns head-dim columns tid, tid + blockDim...
template <typename T>
__device__ void block_means(const T* __restrict__ x, float* __restrict__ out,
                            const uint32_t* __restrict__ order, int64_t sb, int64_t sh, int64_t sl,
                            int heads, int seq_len, int block_size, int blocks, int head_dim) {
  const int blk = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
  const int start = blk * block_size;
  const int end = min(start + block_size, seq_len);
  const T* base = x + batch * sb + head * sh;
  const float inv = 1.f / static_cast<float>(end - start);
  float* dst = out + (((int64_t)batch * heads + head) * blocks + blk) * head_dim;
  for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
    // Four independent partial sums keep several loads in flight.
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    int t = start;
    for (; t + 4 <= end; t += 4) {
#pragma unroll
      for (int u = 0; u < 4; ++u) acc[u] += to_float(base[token_at(order, t + u) * sl + c]);
    }
    for (; t < end; ++t) acc[0] += to_float(base[token_at(order, t) * sl + c]);
    dst[c] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * inv;
  }
}

constexpr int MEANS_THREADS = 256;

// 16-bit dtypes, head_dim a power of two from 8 to 2048 with 16-byte aligned rows: each thread
// reads 8 columns (16 bytes) of every (MEANS_THREADS·8 / head_dim)-th row, then the row lanes
// are summed in shared memory. One 16-byte load per thread and row instead of eight 2-byte ones.
template <typename T>
__device__ void block_means_vec16(const T* __restrict__ x, float* __restrict__ out,
                                  const uint32_t* __restrict__ order, int64_t sb, int64_t sh,
                                  int64_t sl, int heads, int seq_len, int block_size, int blocks,
                                  int head_dim) {
  static_assert(sizeof(T) == 2, "8 elements per 16-byte load");
  __shared__ float partial[MEANS_THREADS * 8];  // [row lane][head_dim]
  const int blk = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
  const int start = blk * block_size;
  const int end = min(start + block_size, seq_len);
  const T* base = x + batch * sb + head * sh;
  const int lanes_per_row = head_dim / 8;
  const int row_lanes = MEANS_THREADS / lanes_per_row;
  const int lane = threadIdx.x % lanes_per_row, row_lane = threadIdx.x / lanes_per_row;
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
  for (int t = start + row_lane; t < end; t += row_lanes) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(base + token_at(order, t) * sl + lane * 8));
    const T* vals = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] += to_float(vals[e]);
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) partial[row_lane * head_dim + lane * 8 + e] = acc[e];
  __syncthreads();
  const float inv = 1.f / static_cast<float>(end - start);
  float* dst = out + (((int64_t)batch * heads + head) * blocks + blk) * head_dim;
  for (int c = threadIdx.x; c < head_dim; c += MEANS_THREADS) {
    float sum = 0.f;
    for (int r = 0; r < row_lanes; ++r) sum += partial[r * head_dim + c];
    dst[c] = sum * inv;
  }
}

constexpr int TOPK_THREADS = 512;
constexpr int TOPK_MAX_BLOCKS = 4096;

// Inclusive block-wide prefix sum of one value per thread (TOPK_THREADS threads).
__device__ __forceinline__ int block_inclusive_scan(int value, int* warp_sums) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    int n = __shfl_up_sync(0xffffffff, value, o);
    if (lane >= o) value += n;
  }
  if (lane == 31) warp_sums[warp] = value;
  __syncthreads();
  if (warp == 0) {
    int w = lane < TOPK_THREADS / 32 ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int n = __shfl_up_sync(0xffffffff, w, o);
      if (lane >= o) w += n;
    }
    if (lane < TOPK_THREADS / 32) warp_sums[lane] = w;
  }
  __syncthreads();
  const int result = value + (warp > 0 ? warp_sums[warp - 1] : 0);
  __syncthreads();  // warp_sums may be reused by the caller
  return result;
}

}  // namespace rf

// Entry points: launch grid (blocks, heads, batch); rf_block_means_* with min(head_dim, 256)
// threads, rf_block_means_vec16_* with MEANS_THREADS threads (16-bit dtypes, head_dim a power
// of two in 8..2048, sb, sh, sl and x 16-byte aligned).
#define RF_BLOCK_MEANS_ENTRY(NAME, T, IMPL)                                                       \
  extern "C" __global__ void NAME(const T* x, float* out, const uint32_t* order, int64_t sb,   \
                                  int64_t sh, int64_t sl, int heads, int seq_len,              \
                                  int block_size, int blocks, int head_dim) {                  \
    rf::IMPL(x, out, order, sb, sh, sl, heads, seq_len, block_size, blocks, head_dim);         \
  }
RF_BLOCK_MEANS_ENTRY(rf_block_means_bf16, __nv_bfloat16, block_means)
RF_BLOCK_MEANS_ENTRY(rf_block_means_f16, __half, block_means)
RF_BLOCK_MEANS_ENTRY(rf_block_means_f32, float, block_means)
RF_BLOCK_MEANS_ENTRY(rf_block_means_vec16_bf16, __nv_bfloat16, block_means_vec16)
RF_BLOCK_MEANS_ENTRY(rf_block_means_vec16_f16, __half, block_means_vec16)

// scores: [rows, blocks] f32 (rows = B·H·blocks, row r has query block r % blocks).
// Writes counts[r] and the kept key blocks, ascending, to padded[r·blocks ..].
// Grid (rows), TOPK_THREADS threads, blocks <= TOPK_MAX_BLOCKS.
extern "C" __global__ void __launch_bounds__(rf::TOPK_THREADS)
    rf_block_topk(const float* __restrict__ scores, uint32_t* __restrict__ counts,
                  uint32_t* __restrict__ padded, int blocks, int keep, int first_forced) {
  __shared__ float sorted[rf::TOPK_MAX_BLOCKS];
  __shared__ int warp_sums[rf::TOPK_THREADS / 32];
  __shared__ float threshold_s;
  const int row = blockIdx.x;
  const int tid = threadIdx.x;
  const float* s = scores + (int64_t)row * blocks;
  const bool forced_row = (row % blocks) >= first_forced;

  if (!forced_row) {
    // Bitonic sort (descending) of the row padded to a power of two with -inf.
    int n = 1;
    while (n < blocks) n <<= 1;
    for (int i = tid; i < n; i += rf::TOPK_THREADS) sorted[i] = i < blocks ? s[i] : -INFINITY;
    __syncthreads();
    for (int size = 2; size <= n; size <<= 1) {
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int i = tid; i < n; i += rf::TOPK_THREADS) {
          const int partner = i ^ stride;
          if (partner > i) {
            const bool descending = (i & size) == 0;
            const float a = sorted[i], b = sorted[partner];
            if (descending ? (a < b) : (a > b)) {
              sorted[i] = b;
              sorted[partner] = a;
            }
          }
        }
        __syncthreads();
      }
    }
    if (tid == 0) threshold_s = sorted[keep - 1];
    __syncthreads();
  }
  const float threshold = forced_row ? -INFINITY : threshold_s;

  // Each thread takes a contiguous run of key blocks so the scan keeps them in order.
  const int per_thread = (blocks + rf::TOPK_THREADS - 1) / rf::TOPK_THREADS;
  const int begin = min(tid * per_thread, blocks);
  const int end = min(begin + per_thread, blocks);
  int mine = 0;
  for (int j = begin; j < end; ++j) mine += (forced_row || j >= first_forced || s[j] >= threshold);
  const int inclusive = rf::block_inclusive_scan(mine, warp_sums);
  int pos = inclusive - mine;
  uint32_t* dst = padded + (int64_t)row * blocks;
  for (int j = begin; j < end; ++j)
    if (forced_row || j >= first_forced || s[j] >= threshold) dst[pos++] = j;
  if (tid == rf::TOPK_THREADS - 1) counts[row] = inclusive;
}

// offsets[0] = 0, offsets[r + 1] = counts[0] + ... + counts[r]. One CTA of TOPK_THREADS threads.
extern "C" __global__ void __launch_bounds__(rf::TOPK_THREADS)
    rf_counts_to_offsets(const uint32_t* __restrict__ counts, uint32_t* __restrict__ offsets,
                         int rows) {
  __shared__ int warp_sums[rf::TOPK_THREADS / 32];
  const int tid = threadIdx.x;
  const int per_thread = (rows + rf::TOPK_THREADS - 1) / rf::TOPK_THREADS;
  const int begin = min(tid * per_thread, rows);
  const int end = min(begin + per_thread, rows);
  int mine = 0;
  for (int r = begin; r < end; ++r) mine += counts[r];
  const int inclusive = rf::block_inclusive_scan(mine, warp_sums);
  uint32_t running = inclusive - mine;
  if (tid == 0) offsets[0] = 0;
  for (int r = begin; r < end; ++r) {
    running += counts[r];
    offsets[r + 1] = running;
  }
}

// Packs the padded per-row lists into CSR order. Grid (rows), 128 threads.
extern "C" __global__ void rf_compact_rows(const uint32_t* __restrict__ padded,
                                           const uint32_t* __restrict__ offsets,
                                           uint32_t* __restrict__ indices, int blocks) {
  const int row = blockIdx.x;
  const uint32_t start = offsets[row];
  const int count = static_cast<int>(offsets[row + 1] - start);
  const uint32_t* src = padded + (int64_t)row * blocks;
  for (int i = threadIdx.x; i < count; i += blockDim.x) indices[start + i] = src[i];
}
