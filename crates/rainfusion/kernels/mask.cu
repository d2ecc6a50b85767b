// RainFusion 2.0 mask prediction on the GPU: block-mean pooling (q and k in one launch), top-k
// selection per query block, and the CSR (offsets + indices) the attention kernel reads, all
// without a host round trip. The block scores between them are one batched matrix product
// (cuBLAS, through candle), left unscaled: the selection only compares scores of one row, and
// 1/sqrt(d) does not change their order.
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
// Block (blk, head, batch) of x; out as in block_means.
template <typename T>
__device__ void block_means_vec16_at(const T* __restrict__ x, float* __restrict__ out,
                                     const uint32_t* __restrict__ order, int64_t sb, int64_t sh,
                                     int64_t sl, int heads, int seq_len, int block_size,
                                     int blocks, int head_dim, int blk, int head, int batch) {
  static_assert(sizeof(T) == 2, "8 elements per 16-byte load");
  __shared__ float partial[MEANS_THREADS * 8];  // [row lane][head_dim]
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

template <typename T>
__device__ void block_means_vec16(const T* __restrict__ x, float* __restrict__ out,
                                  const uint32_t* __restrict__ order, int64_t sb, int64_t sh,
                                  int64_t sl, int heads, int seq_len, int block_size, int blocks,
                                  int head_dim) {
  block_means_vec16_at(x, out, order, sb, sh, sl, heads, seq_len, block_size, blocks, head_dim,
                       blockIdx.x, blockIdx.y, blockIdx.z);
}

// q and k in one launch: grid (blocks, heads, 2·batch), z = 2·batch + (0 for q, 1 for k); out
// [2, B, H, blocks, D] f32, q's means first. Strides (sb, sh, sl) are q's, (kb, kh, kl) k's.
template <typename T>
__device__ void block_means_pair_vec16(const T* __restrict__ q, const T* __restrict__ k,
                                       float* __restrict__ out, const uint32_t* __restrict__ order,
                                       int64_t sb, int64_t sh, int64_t sl, int64_t kb, int64_t kh,
                                       int64_t kl, int heads, int seq_len, int block_size,
                                       int blocks, int head_dim) {
  const int batch = blockIdx.z >> 1;
  const bool is_k = blockIdx.z & 1;
  const int64_t half = (int64_t)(gridDim.z >> 1) * heads * blocks * head_dim;
  if (is_k)
    block_means_vec16_at(k, out + half, order, kb, kh, kl, heads, seq_len, block_size, blocks,
                         head_dim, blockIdx.x, blockIdx.y, batch);
  else
    block_means_vec16_at(q, out, order, sb, sh, sl, heads, seq_len, block_size, blocks, head_dim,
                         blockIdx.x, blockIdx.y, batch);
}

// Order-preserving key of a float: a < b (as floats, no NaN) iff key(a) < key(b) as unsigned,
// except that -0 sorts just below +0.
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t bits = __float_as_uint(x);
  return bits ^ ((bits >> 31) ? 0xffffffffu : 0x80000000u);
}
__device__ __forceinline__ float from_order_key(uint32_t key) {
  return __uint_as_float(key ^ ((key >> 31) ? 0x80000000u : 0xffffffffu));
}

constexpr int SELECT_WARPS = 4;

constexpr int SCAN_THREADS = 512;

// Inclusive block-wide prefix sum of one value per thread (SCAN_THREADS threads).
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
    int w = lane < SCAN_THREADS / 32 ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int n = __shfl_up_sync(0xffffffff, w, o);
      if (lane >= o) w += n;
    }
    if (lane < SCAN_THREADS / 32) warp_sums[lane] = w;
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

// rf_block_means_pair_vec16_*: q and k together (see block_means_pair_vec16); grid (blocks,
// heads, 2·batch), MEANS_THREADS threads, the vec16 conditions on both.
#define RF_BLOCK_MEANS_PAIR_ENTRY(NAME, T)                                                         \
  extern "C" __global__ void NAME(const T* q, const T* k, float* out, const uint32_t* order,     \
                                  int64_t sb, int64_t sh, int64_t sl, int64_t kb, int64_t kh,    \
                                  int64_t kl, int heads, int seq_len, int block_size, int blocks, \
                                  int head_dim) {                                                \
    rf::block_means_pair_vec16(q, k, out, order, sb, sh, sl, kb, kh, kl, heads, seq_len,         \
                               block_size, blocks, head_dim);                                    \
  }
RF_BLOCK_MEANS_PAIR_ENTRY(rf_block_means_pair_vec16_bf16, __nv_bfloat16)
RF_BLOCK_MEANS_PAIR_ENTRY(rf_block_means_pair_vec16_f16, __half)

// scores: [rows, blocks] f32 (rows = B·H·blocks, row r has query block r % blocks).
// Writes counts[r] and the kept key blocks, ascending, to padded[r·blocks ..].
// One warp a row: the keep-th largest score is found exactly by a bitwise search over the
// scores' order keys (32 rounds, each a count of the keys at or above a candidate), then one
// ballot per 32 key blocks writes the kept ones in order. Grid (ceil(rows / SELECT_WARPS)),
// SELECT_WARPS·32 threads, SELECT_WARPS·blocks·4 bytes of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(rf::SELECT_WARPS * 32)
    rf_block_select(const float* __restrict__ scores, uint32_t* __restrict__ counts,
                    uint32_t* __restrict__ padded, int rows, int blocks, int keep,
                    int first_forced) {
  extern __shared__ uint32_t row_keys[];  // [SELECT_WARPS][blocks]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row = blockIdx.x * rf::SELECT_WARPS + warp;
  if (row >= rows) return;  // whole warps only: the rest synchronise per warp
  const float* s = scores + (int64_t)row * blocks;
  const bool forced_row = (row % blocks) >= first_forced;
  float threshold = -INFINITY;
  if (!forced_row) {
    uint32_t* keys = row_keys + warp * blocks;
    for (int j = lane; j < blocks; j += 32) keys[j] = rf::order_key(s[j]);
    __syncwarp();
    // The largest key t with at least `keep` keys >= t is the keep-th largest.
    uint32_t t = 0;
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t candidate = t | (1u << bit);
      int mine = 0;
      for (int j = lane; j < blocks; j += 32) mine += keys[j] >= candidate;
      if (__reduce_add_sync(0xffffffffu, mine) >= keep) t = candidate;
    }
    threshold = rf::from_order_key(t);
  }
  uint32_t* dst = padded + (int64_t)row * blocks;
  int written = 0;
  for (int j0 = 0; j0 < blocks; j0 += 32) {
    const int j = j0 + lane;
    const bool kept = j < blocks && (forced_row || j >= first_forced || s[j] >= threshold);
    const uint32_t ballot = __ballot_sync(0xffffffffu, kept);
    if (kept) dst[written + __popc(ballot & ((1u << lane) - 1u))] = j;
    written += __popc(ballot);
  }
  if (lane == 0) counts[row] = written;
}

// offsets[0] = 0, offsets[r + 1] = counts[0] + ... + counts[r]. One CTA of SCAN_THREADS threads.
extern "C" __global__ void __launch_bounds__(rf::SCAN_THREADS)
    rf_counts_to_offsets(const uint32_t* __restrict__ counts, uint32_t* __restrict__ offsets,
                         int rows) {
  __shared__ int warp_sums[rf::SCAN_THREADS / 32];
  const int tid = threadIdx.x;
  const int per_thread = (rows + rf::SCAN_THREADS - 1) / rf::SCAN_THREADS;
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

// A CSR mask as one bit per block pair, for the masks kept between steps: bits [rows, words] u32
// (key block j of row r is bit j % 32 of word r·words + j / 32), zeroed before. Grid (rows), 128
// threads.
extern "C" __global__ void rf_csr_to_bits(const uint32_t* __restrict__ offsets,
                                          const uint32_t* __restrict__ indices,
                                          uint32_t* __restrict__ bits, int words) {
  const int row = blockIdx.x;
  const uint32_t end = offsets[row + 1];
  uint32_t* dst = bits + (int64_t)row * words;
  for (uint32_t i = offsets[row] + threadIdx.x; i < end; i += blockDim.x) {
    const uint32_t j = indices[i];
    atomicOr(dst + (j >> 5), 1u << (j & 31));
  }
}

// counts[r] = the set bits of row r. One warp a row: grid (ceil(rows / SELECT_WARPS)),
// SELECT_WARPS·32 threads.
extern "C" __global__ void __launch_bounds__(rf::SELECT_WARPS * 32)
    rf_bits_count(const uint32_t* __restrict__ bits, uint32_t* __restrict__ counts, int rows,
                  int words) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * rf::SELECT_WARPS + (threadIdx.x >> 5);
  if (row >= rows) return;
  const uint32_t* src = bits + (int64_t)row * words;
  int mine = 0;
  for (int w = lane; w < words; w += 32) mine += __popc(src[w]);
  const int total = __reduce_add_sync(0xffffffffu, mine);
  if (lane == 0) counts[row] = total;
}

// The set bits of each row, ascending, at indices[offsets[r] ..] (offsets from
// rf_counts_to_offsets over rf_bits_count's counts). One warp a row, as rf_bits_count.
extern "C" __global__ void __launch_bounds__(rf::SELECT_WARPS * 32)
    rf_bits_to_indices(const uint32_t* __restrict__ bits, const uint32_t* __restrict__ offsets,
                       uint32_t* __restrict__ indices, int rows, int words) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * rf::SELECT_WARPS + (threadIdx.x >> 5);
  if (row >= rows) return;
  const uint32_t* src = bits + (int64_t)row * words;
  uint32_t at = offsets[row];
  for (int w0 = 0; w0 < words; w0 += 32) {
    const int w = w0 + lane;
    uint32_t word = w < words ? src[w] : 0u;
    const int n = __popc(word);
    int before = n;  // inclusive scan of the lanes' counts
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, before, o);
      if (lane >= o) before += up;
    }
    uint32_t pos = at + before - n;
    while (word != 0u) {
      const int b = __ffs(word) - 1;
      indices[pos++] = static_cast<uint32_t>(w * 32 + b);
      word &= word - 1u;
    }
    at += __shfl_sync(0xffffffffu, before, 31);
  }
}
