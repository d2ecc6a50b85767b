// Block-sparse flash attention forward (FlashAttention-2 style) for Ampere and Hopper.
//
// One thread block computes one query tile of one (batch, head). It walks the key blocks that
// the BlockMask CSR lists for its (batch, head, query block) row; dense attention is the mask
// that lists every key block, so one kernel serves both and skipped blocks cost nothing.
//
//   q       : [batch, heads, q_len, head_dim] with arbitrary batch/head/token strides (in
//             elements, multiples of 8); head_dim is contiguous.
//   k, v    : [batch, heads, kv_len, head_dim], one set of strides shared by k and v (they may
//             differ from q's: cross-attention reads q from the video tokens, k/v from the text).
//   o       : [batch, heads, q_len, head_dim] logically, with its own strides (lets the caller
//             write [B, L, H, D] memory).
//   offsets : batch*heads*query_blocks + 1 row starts into `indices` (u32), or null for dense
//             attention (every key tile of 0..kv_len; `indices` is then unused). Block-sparse
//             attention is self-attention: the caller passes kv_len == q_len.
//   indices : kept key blocks per row, each covering `block_size` tokens, ascending.
//
// Arithmetic: mma.sync m16n8k16 (bf16 or f16 operands, f32 accumulators), ldmatrix from
// XOR-swizzled shared memory, cp.async global->shared copies overlapped with the matrix work
// (K of the next tile loads while P·V runs, V of this tile loads while Q·Kᵀ runs).
// Softmax is the online (running max / running sum) form in base 2 with the scale folded in.
// The ragged last block (tokens not a multiple of the tile) is zero-filled on load and its
// out-of-range keys get a score of -inf; out-of-range query rows are never stored.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace rf {

// ---------------------------------------------------------------- small PTX wrappers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes = 0 zero-fills the destination (used past the sequence end).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                            uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                                  uint32_t& r3, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

template <typename T>
struct Mma;

template <>
struct Mma<__nv_bfloat16> {
  __device__ __forceinline__ static void run(float* c, const uint32_t* a, uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

template <>
struct Mma<__half> {
  __device__ __forceinline__ static void run(float* c, const uint32_t* a, uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Element offset of 16-byte chunk `chunk` of row `row` in a [rows][D] tile whose chunks are
// XOR-swizzled by the row's low 3 bits, so that the 8 rows one ldmatrix phase reads hit 8
// different bank groups (rows are 128 or 256 bytes, a multiple of the 128-byte bank cycle).
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Copies `ROWS` rows of D elements starting at token `row0` into a swizzled tile; rows at or
// past `seq_len` are zero-filled. Thread `tid` copies chunk tid % (D/8) of rows
// tid / (D/8) + i·STEP: every row it touches has the same low 3 bits (STEP is a multiple of 8),
// so its swizzled destination is one per-thread offset plus compile-time steps.
template <typename T, int D, int ROWS, int NTHREADS>
__device__ __forceinline__ void load_tile(uint32_t tile_addr, const T* base, int64_t token_stride,
                                          int row0, int seq_len, int tid) {
  constexpr int CHUNKS_PER_ROW = D / 8;
  constexpr int STEP = NTHREADS / CHUNKS_PER_ROW;
  static_assert(NTHREADS % CHUNKS_PER_ROW == 0 && STEP % 8 == 0 && ROWS % STEP == 0,
                "tile rows must divide evenly among threads in steps of 8 rows");
  const int first_row = tid / CHUNKS_PER_ROW;
  const int chunk = tid % CHUNKS_PER_ROW;
  const uint32_t dst = tile_addr + 2 * swz<D>(first_row, chunk);
  const T* src = base + (int64_t)(row0 + first_row) * token_stride + chunk * 8;
#pragma unroll
  for (int i = 0; i < ROWS / STEP; ++i) {
    const bool valid = row0 + first_row + i * STEP < seq_len;
    cp_async_16(dst + 2 * i * STEP * D, valid ? src + (int64_t)i * STEP * token_stride : base,
                valid ? 16 : 0);
  }
}

// ---------------------------------------------------------------- the kernel

// D: head_dim. NWARPS warps each own MFRAG×16 query rows, so the query tile is
// BM = NWARPS·MFRAG·16 rows. BN: keys per inner tile (divides block_size).
// Q_IN_REGS: keep Q's A-fragments in registers for the whole kernel (cheap for MFRAG = 1),
// otherwise re-read them from shared memory for every key tile (FlashAttention-2's choice
// for MFRAG = 2, where the registers are needed for the larger accumulators).
template <typename T, int D, int NWARPS, int MFRAG, int BN, bool Q_IN_REGS, int STAGES>
__device__ __forceinline__ void attention_fwd(const T* __restrict__ q, const T* __restrict__ k,
                                              const T* __restrict__ v, T* __restrict__ o,
                                              const uint32_t* __restrict__ offsets,
                                              const uint32_t* __restrict__ indices,
                                              int64_t q_sb, int64_t q_sh, int64_t q_sl,
                                              int64_t kv_sb, int64_t kv_sh, int64_t kv_sl,
                                              int64_t out_sb, int64_t out_sh, int64_t out_sl,
                                              int heads, int q_len, int kv_len, int block_size,
                                              int query_blocks, float scale_log2) {
  constexpr int NTHREADS = NWARPS * 32;
  constexpr int BM = NWARPS * MFRAG * 16;
  constexpr int KD = D / 16;   // k16 steps over head_dim in Q·Kᵀ
  constexpr int NT = BN / 8;   // n8 score tiles per warp row-fragment
  constexpr int DT = D / 8;    // n8 output tiles over head_dim
  constexpr int KN = BN / 16;  // k16 steps over keys in P·V

  extern __shared__ __align__(128) unsigned char smem_raw[];
  // Shared memory: Q [BM][D], then STAGES × (K [BN][D], V [BN][D]).
  constexpr uint32_t KV_STAGE_BYTES = 2 * BN * D * 2;
  const uint32_t s_q_addr = smem_addr(smem_raw);
  const uint32_t s_kv_addr = s_q_addr + BM * D * 2;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int q_tile = blockIdx.x;
  const int head = blockIdx.y;
  const int batch = blockIdx.z;
  const int q_start = q_tile * BM;

  const T* q_base = q + batch * q_sb + head * q_sh;
  const int64_t kv_offset = batch * kv_sb + head * kv_sh;
  const T* k_base = k + kv_offset;
  const T* v_base = v + kv_offset;

  // CSR row of this query tile (BM never exceeds block_size, so one tile lies in one block).
  // Dense attention passes no CSR (offsets == nullptr): every key tile of 0..kv_len, in order
  // (the cursor below walks consecutive tiles when block_counter counts blocks 0, 1, 2, ...).
  const bool dense = offsets == nullptr;
  const int row = (batch * heads + head) * query_blocks + q_start / block_size;
  const uint32_t row_begin = dense ? 0u : offsets[row];
  const int tiles_per_block = block_size / BN;
  const int n_tiles = dense ? (kv_len + BN - 1) / BN
                            : static_cast<int>(offsets[row + 1] - row_begin) * tiles_per_block;

  // Cursor over the key tiles of the kept blocks, in order (no division per tile).
  const uint32_t* next_block = dense ? nullptr : indices + row_begin;
  int block_counter = 0;
  int sub_tile = 0;
  int block_start = 0;
  auto next_key_start = [&]() {
    if (sub_tile == 0) {
      block_start = (dense ? block_counter : static_cast<int>(next_block[block_counter])) * block_size;
      ++block_counter;
    }
    const int start = block_start + sub_tile * BN;
    if (++sub_tile == tiles_per_block) sub_tile = 0;
    return start;
  };
  auto load_k = [&](int stage, int key_start) {
    load_tile<T, D, BN, NTHREADS>(s_kv_addr + stage * KV_STAGE_BYTES, k_base, kv_sl, key_start,
                                  kv_len, tid);
  };
  auto load_v = [&](int stage, int key_start) {
    load_tile<T, D, BN, NTHREADS>(s_kv_addr + stage * KV_STAGE_BYTES + BN * D * 2, v_base, kv_sl,
                                  key_start, kv_len, tid);
  };

  load_tile<T, D, BM, NTHREADS>(s_q_addr, q_base, q_sl, q_start, q_len, tid);
  int key_start = n_tiles > 0 ? next_key_start() : 0;
  if (n_tiles > 0) {
    load_k(0, key_start);
    if (STAGES == 2) load_v(0, key_start);
  }
  cp_async_commit();

  float acc[MFRAG][DT][4];
#pragma unroll
  for (int mf = 0; mf < MFRAG; ++mf)
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mf][dt][e] = 0.f;
  float row_max[MFRAG][2];  // running max of raw scores, rows g and g+8
  float row_sum[MFRAG][2];  // this thread's partial of the running sum
#pragma unroll
  for (int mf = 0; mf < MFRAG; ++mf)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_max[mf][r] = -INFINITY;
      row_sum[mf][r] = 0.f;
    }

  uint32_t q_frag[Q_IN_REGS ? MFRAG : 1][Q_IN_REGS ? KD : 1][4];
  const int warp_row0 = warp * MFRAG * 16;
  // ldmatrix source rows/chunks, from the fragment layouts of mma.m16n8k16:
  //   A (Q):            matrices 1,3 are rows 8..15, matrices 2,3 are d 8..15
  //   B (K, row-major): matrices 2,3 are keys 8..15, matrices 1,3 are d 8..15
  //   B (V, .trans):    matrices 1,3 are keys 8..15, matrices 2,3 are d 8..15
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8;
  const int a_chunk = lane >> 4;
  const int kb_row = (lane & 7) + (lane >> 4) * 8;
  const int kb_chunk = (lane >> 3) & 1;
  // B (V) uses the same rows/chunks as A (Q): vb_off = a_off.

  // Every row a thread reads has the same low 3 bits (lane & 7: the tiles step in 8s and 16s),
  // so its swizzled chunk for logical chunk 2·s + c is 8·(s / 4) + ((2·(s % 4) + c) ^ (lane & 7)):
  // four per-thread byte offsets, the rest compile-time immediates. Without this the compiler
  // keeps one address register per (row step, chunk) pair and runs out of registers.
  uint32_t a_off[4], kb_off[4];
#pragma unroll
  for (int s4 = 0; s4 < 4; ++s4) {
    a_off[s4] = 2 * (a_row * D + (((2 * s4 + a_chunk) ^ (lane & 7)) << 3));
    kb_off[s4] = 2 * (kb_row * D + (((2 * s4 + kb_chunk) ^ (lane & 7)) << 3));
  }
  // Byte address of chunk pair `step` (16 elements of head_dim) of tile row `row16` (multiple
  // of 16) for a per-thread offset table.
  auto frag_addr = [&](uint32_t base, const uint32_t* off, int row16, int step) {
    return base + off[step & 3] + 2 * (row16 * D + (step >> 2) * 64);
  };

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = STAGES == 2 ? (j & 1) : 0;
    const uint32_t s_k_addr = s_kv_addr + stage * KV_STAGE_BYTES;
    const uint32_t s_v_addr = s_k_addr + BN * D * 2;
    const int this_key_start = key_start;
    cp_async_wait_all();
    // STAGES 1: K_j (and Q) landed; every warp is done with V_{j-1}, so V_j may overwrite it.
    // STAGES 2: K_j and V_j landed; every warp is done with tile j-1, whose buffers now take
    //           tile j+1, loading during all of tile j's work.
    __syncthreads();
    if (STAGES == 1) {
      load_v(0, key_start);
    } else if (j + 1 < n_tiles) {
      key_start = next_key_start();
      load_k(stage ^ 1, key_start);
      load_v(stage ^ 1, key_start);
    }
    cp_async_commit();

    if (Q_IN_REGS && j == 0) {
#pragma unroll
      for (int mf = 0; mf < (Q_IN_REGS ? MFRAG : 1); ++mf)
#pragma unroll
        for (int kd = 0; kd < (Q_IN_REGS ? KD : 1); ++kd) {
          ldmatrix_x4(q_frag[mf][kd][0], q_frag[mf][kd][1], q_frag[mf][kd][2], q_frag[mf][kd][3],
                      frag_addr(s_q_addr, a_off, warp_row0 + mf * 16, kd));
        }
    }

    // S = Q·Kᵀ for this warp's rows: [MFRAG·16, BN] in accumulator fragments.
    float s[MFRAG][NT][4];
#pragma unroll
    for (int mf = 0; mf < MFRAG; ++mf)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mf][nt][e] = 0.f;

#pragma unroll
    for (int kd = 0; kd < KD; ++kd) {
      uint32_t a[MFRAG][4];
#pragma unroll
      for (int mf = 0; mf < MFRAG; ++mf) {
        if constexpr (Q_IN_REGS) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[mf][e] = q_frag[Q_IN_REGS ? mf : 0][Q_IN_REGS ? kd : 0][e];
        } else {
          ldmatrix_x4(a[mf][0], a[mf][1], a[mf][2], a[mf][3],
                      frag_addr(s_q_addr, a_off, warp_row0 + mf * 16, kd));
        }
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4(b0, b1, b2, b3, frag_addr(s_k_addr, kb_off, np * 16, kd));
#pragma unroll
        for (int mf = 0; mf < MFRAG; ++mf) {
          Mma<T>::run(s[mf][2 * np], a[mf], b0, b1);
          Mma<T>::run(s[mf][2 * np + 1], a[mf], b2, b3);
        }
      }
    }

    if (STAGES == 1) {
      cp_async_wait_all();
      __syncthreads();  // V_j landed; every warp is done with K_j
      if (j + 1 < n_tiles) {
        key_start = next_key_start();
        load_k(0, key_start);
      }
      cp_async_commit();
    }

    // Ragged last tile: keys past the key sequence end score -inf.
    if (this_key_start + BN > kv_len) {
      const int col0 = this_key_start + (lane & 3) * 2;
#pragma unroll
      for (int mf = 0; mf < MFRAG; ++mf)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (col0 + nt * 8 + (e & 1) >= kv_len) s[mf][nt][e] = -INFINITY;
    }

    // Online softmax: rescale what was accumulated by exp2((m_old - m_new)·scale).
#pragma unroll
    for (int mf = 0; mf < MFRAG; ++mf)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[mf][r];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mf][nt][2 * r], s[mf][nt][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
        // A row with every key masked so far keeps max -inf; use 0 so exp2 gives 0, not NaN.
        const float m_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
        const float alpha = fast_exp2(row_max[mf][r] * scale_log2 - m_scaled);
        row_max[mf][r] = mx;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float p = fast_exp2(fmaf(s[mf][nt][2 * r + e], scale_log2, -m_scaled));
            s[mf][nt][2 * r + e] = p;
            sum += p;
          }
        row_sum[mf][r] = row_sum[mf][r] * alpha + sum;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          acc[mf][dt][2 * r] *= alpha;
          acc[mf][dt][2 * r + 1] *= alpha;
        }
      }

    // O += P·V: P's accumulator fragments become A fragments without leaving registers.
#pragma unroll
    for (int kn = 0; kn < KN; ++kn) {
      uint32_t p[MFRAG][4];
#pragma unroll
      for (int mf = 0; mf < MFRAG; ++mf) {
        p[mf][0] = Mma<T>::pack(s[mf][2 * kn][0], s[mf][2 * kn][1]);
        p[mf][1] = Mma<T>::pack(s[mf][2 * kn][2], s[mf][2 * kn][3]);
        p[mf][2] = Mma<T>::pack(s[mf][2 * kn + 1][0], s[mf][2 * kn + 1][1]);
        p[mf][3] = Mma<T>::pack(s[mf][2 * kn + 1][2], s[mf][2 * kn + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < DT / 2; ++dp) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(b0, b1, b2, b3, frag_addr(s_v_addr, a_off, kn * 16, dp));
#pragma unroll
        for (int mf = 0; mf < MFRAG; ++mf) {
          Mma<T>::run(acc[mf][2 * dp], p[mf], b0, b1);
          Mma<T>::run(acc[mf][2 * dp + 1], p[mf], b2, b3);
        }
      }
    }
  }
  cp_async_wait_all();

  // Normalise and store. Rows with no kept key (empty CSR row) are written as zeros.
  T* o_base = o + batch * out_sb + head * out_sh;
#pragma unroll
  for (int mf = 0; mf < MFRAG; ++mf)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[mf][r];
      l += __shfl_xor_sync(0xffffffff, l, 1);
      l += __shfl_xor_sync(0xffffffff, l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int token = q_start + warp_row0 + mf * 16 + (lane >> 2) + r * 8;
      if (token < q_len) {
        T* dst = o_base + (int64_t)token * out_sl + (lane & 3) * 2;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
          *reinterpret_cast<uint32_t*>(dst + dt * 8) =
              Mma<T>::pack(acc[mf][dt][2 * r] * inv, acc[mf][dt][2 * r + 1] * inv);
      }
    }
}

}  // namespace rf

// ---------------------------------------------------------------- exported entry points
//
// Name: rf_attention_fwd_<dtype>_d<head_dim>_w<warps>m<row fragments>n<key tile>[q]
// (q = Q fragments held in registers). Launch: grid (ceil(q_len / BM), heads, batch),
// block NWARPS·32 threads, dynamic shared memory (BM + 2·BN·stages)·D·2 bytes,
// BM = 16·warps·fragments, which must not exceed block_size; BN must divide block_size.
// Arguments: q, k, v, o, offsets, indices (null, null: dense), q strides (batch, head, token),
// k/v strides (batch, head, token), o strides (batch, head, token), heads, q_len, kv_len,
// block_size, query_blocks = ceil(q_len / block_size), scale·log2(e). All strides in elements.

#define RF_ATTENTION_ENTRY(NAME, T, D, NW, MF, BN, QREG, ST, MINB)                                   \
  extern "C" __global__ void __launch_bounds__(NW * 32, MINB)                                   \
      NAME(const T* q, const T* k, const T* v, T* o, const uint32_t* offsets,                   \
           const uint32_t* indices, int64_t q_sb, int64_t q_sh, int64_t q_sl, int64_t kv_sb,     \
           int64_t kv_sh, int64_t kv_sl, int64_t out_sb, int64_t out_sh, int64_t out_sl,         \
           int heads, int q_len, int kv_len, int block_size, int query_blocks,                   \
           float scale_log2) {                                                                   \
    rf::attention_fwd<T, D, NW, MF, BN, QREG, ST>(q, k, v, o, offsets, indices, q_sb, q_sh, q_sl, \
                                              kv_sb, kv_sh, kv_sl, out_sb, out_sh, out_sl, heads, \
                                              q_len, kv_len, block_size, query_blocks,           \
                                              scale_log2);                                       \
  }

#define RF_ATTENTION_DTYPES(SUFFIX, D, NW, MF, BN, QREG, ST, MINB)                                 \
  RF_ATTENTION_ENTRY(rf_attention_fwd_bf16_##SUFFIX, __nv_bfloat16, D, NW, MF, BN, QREG, ST, MINB) \
  RF_ATTENTION_ENTRY(rf_attention_fwd_f16_##SUFFIX, __half, D, NW, MF, BN, QREG, ST, MINB)

// Suffix: d<head_dim>_w<warps>m<row fragments>n<key tile>[q: Q in registers]s<K/V stages>.
// The library (build.rs) compiles only the variants the Rust side dispatches to: the fastest
// measured per head_dim with a 128-row query tile (block_size a multiple of 128) and one with a
// 64-row tile (block_size 64). The harness (scripts/gpu) compiles every variant.
RF_ATTENTION_DTYPES(d128_w4m2n64s2, 128, 4, 2, 64, false, 2, 2)
RF_ATTENTION_DTYPES(d128_w4m1n64qs2, 128, 4, 1, 64, true, 2, 2)
RF_ATTENTION_DTYPES(d64_w4m2n128s2, 64, 4, 2, 128, false, 2, 2)
RF_ATTENTION_DTYPES(d64_w4m1n64qs2, 64, 4, 1, 64, true, 2, 3)

// ================================================================ Hopper (sm_90a) kernel
//
// Same algorithm and interface as above, warp-specialised in FlashAttention-3's way (NOTES.md,
// v12 and v13): one CTA per SM of three warpgroups. Warpgroup 0 only loads; warpgroups 1 and 2
// only compute, each owning 64 of the tile's 128 query rows. Key tiles are BN = 128 wide, in
// STAGES K stages and STAGES V stages, each guarded by a "full" and an "empty" mbarrier.
//   - Loads: through TMA where the rows are not gathered (one producer thread, two 64-column
//     boxes a tile; 24 / 240 registers), else cp.async by the whole producer warpgroup (rows
//     one token at a time; 56 / 224 registers), which never waits for its copies:
//     `cp.async.mbarrier.arrive.noinc` arrives on a full barrier when they have landed, and each
//     consumer fences the async proxy after its wait.
//   - Within a consumer, S_j = Q·Kᵀ_j and O += P_{j-1}·V_{j-1} are issued together, and the
//     softmax of S_j runs while P_{j-1}·V_{j-1} is still on the tensor cores.
//   - Between the consumers, two named barriers take turns ("ping-pong"), so that one issues its
//     matrix work while the other does its softmax.
// Q and K are wgmma operands straight from shared memory (K-major); P stays in registers as the
// A operand of P·V; V is read from shared memory as a transposed (MN-major) B operand. Shared
// tiles use the 128-byte-swizzle layout: head_dim split into 64-element column blocks, each a
// [rows][64] array of 128-byte rows whose 16-byte chunks are XOR-ed with (row % 8), the layout
// TMA's 128-byte swizzle writes.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace rf {
namespace hopper {

// ---- generated by hand-run script (see NOTES.md): wgmma wrappers, one per shape and dtype.
// The last (unnamed) parameter only selects the dtype overload.
__device__ __forceinline__ void wgmma_m64n128k16_rs_tnspb(float* d, const uint32_t* a, uint64_t desc_b,
                                                         __nv_bfloat16) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

__device__ __forceinline__ void wgmma_m64n128k16_rs_tnspb(float* d, const uint32_t* a, uint64_t desc_b,
                                                         __half) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}


__device__ __forceinline__ void wgmma_m64n128k16_ss(float* d, uint64_t desc_a, uint64_t desc_b,
                                                     int accumulate, __nv_bfloat16) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_m64n128k16_ss(float* d, uint64_t desc_a, uint64_t desc_b,
                                                     int accumulate, __half) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Shared-memory matrix descriptor, 128-byte swizzle. Byte offsets are stored in 16-byte units.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

// Byte offset of 16-byte chunk `chunk` (0 .. D/8) of `row` in a swizzled [rows][D] tile.
template <int ROWS>
__device__ __forceinline__ uint32_t sw128(int row, int chunk) {
  return (chunk >> 3) * (ROWS * 128) + row * 128 + (((chunk & 7) ^ (row & 7)) << 4);
}

__device__ __forceinline__ void wgmma_wait_one() { asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); }

// Pins registers after a wgmma wait: the compiler may not move their reads above it.
template <int N>
__device__ __forceinline__ void fence_regs(float* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar)
               : "memory");
}
// Waits until the phase of the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// Arrives on `bar` once every cp.async this thread has issued so far has landed (the barrier's
// count includes this arrival: noinc).
__device__ __forceinline__ void cp_async_arrive_noinc(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// A CUtensorMap (the driver's 128-byte TMA descriptor), opaque here: the host encodes it.
struct alignas(128) TensorMap {
  uint64_t opaque[16];
};

// Sets the transaction bytes the current phase of `bar` waits for, and arrives.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
}
// One TMA box of a 4-d tensor map (head_dim, tokens, heads, batch) into shared memory; `bar`
// counts its bytes when they land.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const TensorMap* map, int c0, int c1, int c2,
                                            int c3, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
      "%4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// TMA: q, k and v come through tensor maps (`tm_q`, `tm_k`, `tm_v`; the pointers and strides of
// q, k, v are then unused) and one producer thread loads each tile in two 64-column boxes.
template <typename T, bool GATHER, int STAGES, bool TMA>
__device__ __forceinline__ void attention_fwd_ws(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
    const uint32_t* __restrict__ offsets, const uint32_t* __restrict__ indices,
    const uint32_t* __restrict__ order, int64_t q_sb, int64_t q_sh, int64_t q_sl, int64_t kv_sb,
    int64_t kv_sh, int64_t kv_sl, int64_t out_sb, int64_t out_sh, int64_t out_sl, int heads,
    int q_len, int kv_len, int block_size, int query_blocks, float scale_log2, uint32_t v_lbo,
    uint32_t v_sbo, const TensorMap* tm_q, const TensorMap* tm_k, const TensorMap* tm_v) {
  static_assert(!(TMA && GATHER), "a tensor map cannot gather rows");
  constexpr int D = 128, BM = 128, BN = 128, NT = BN / 8, DT = D / 8;
  constexpr uint32_t Q_BYTES = BM * D * 2, KV_BYTES = BN * D * 2;
  // mbarriers: Q full, then STAGES each of K full, V full, K empty, V empty.
  __shared__ __align__(8) uint64_t bars[1 + 4 * STAGES];
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t smem_base = (smem_addr(smem_raw) + 1023) & ~1023u;
  const uint32_t s_q = smem_base;
  const uint32_t s_kv = s_q + Q_BYTES;  // stage s: K at s_kv + 2·s·KV_BYTES, V right after
  const uint32_t bar_q = smem_addr(&bars[0]);
  auto full_k = [&](int s) { return smem_addr(&bars[1 + s]); };
  auto full_v = [&](int s) { return smem_addr(&bars[1 + STAGES + s]); };
  auto empty_k = [&](int s) { return smem_addr(&bars[1 + 2 * STAGES + s]); };
  auto empty_v = [&](int s) { return smem_addr(&bars[1 + 3 * STAGES + s]); };

  const int tid = threadIdx.x, warpgroup = tid / 128, wg_tid = tid % 128;
  if (tid == 0) {
    const uint32_t loaders = TMA ? 1 : 128;  // arrivals that fill a tile
    mbar_init(bar_q, loaders);
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full_k(s), loaders);
      mbar_init(full_v(s), loaders);
      mbar_init(empty_k(s), 8);  // lane 0 of each consumer warp
      mbar_init(empty_v(s), 8);
    }
  }
  __syncthreads();

  const int q_start = blockIdx.x * BM, head = blockIdx.y, batch = blockIdx.z;
  const int64_t kv_offset = batch * kv_sb + head * kv_sh;
  const bool dense = offsets == nullptr;
  const int row = (batch * heads + head) * query_blocks + q_start / block_size;
  const uint32_t row_begin = dense ? 0u : offsets[row];
  const int tiles_per_block = block_size / BN;
  const int n_tiles = dense ? (kv_len + BN - 1) / BN
                            : static_cast<int>(offsets[row + 1] - row_begin) * tiles_per_block;
  const uint32_t* next_block = dense ? nullptr : indices + row_begin;
  int block_counter = 0, sub_tile = 0, block_start = 0;
  auto next_key_start = [&]() {
    if (sub_tile == 0) {
      block_start = (dense ? block_counter : static_cast<int>(next_block[block_counter])) * block_size;
      ++block_counter;
    }
    const int start = block_start + sub_tile * BN;
    if (++sub_tile == tiles_per_block) sub_tile = 0;
    return start;
  };

  if (warpgroup == 0) {
    // ---- producer: Q once, then K_j and V_j into stage j % STAGES as the consumers free them.
    // Thread t copies 16-byte chunk t % 16 of rows t / 16 + 8·i; with GATHER each row's token is
    // read once per tile, for both K and V.
    if constexpr (TMA) {
      asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
      if (wg_tid == 0) {
        mbar_arrive_expect_tx(bar_q, Q_BYTES);
        tma_load_4d(s_q, tm_q, 0, q_start, head, batch, bar_q);
        tma_load_4d(s_q + BM * 128, tm_q, 64, q_start, head, batch, bar_q);
        for (int j = 0; j < n_tiles; ++j) {
          const int stage = j % STAGES;
          const uint32_t round = (j / STAGES) & 1;
          const int key_start = next_key_start();
          const uint32_t k_addr = s_kv + stage * 2 * KV_BYTES;
          mbar_wait(empty_k(stage), round ^ 1);
          mbar_arrive_expect_tx(full_k(stage), KV_BYTES);
          tma_load_4d(k_addr, tm_k, 0, key_start, head, batch, full_k(stage));
          tma_load_4d(k_addr + BN * 128, tm_k, 64, key_start, head, batch, full_k(stage));
          mbar_wait(empty_v(stage), round ^ 1);
          mbar_arrive_expect_tx(full_v(stage), KV_BYTES);
          tma_load_4d(k_addr + KV_BYTES, tm_v, 0, key_start, head, batch, full_v(stage));
          tma_load_4d(k_addr + KV_BYTES + BN * 128, tm_v, 64, key_start, head, batch, full_v(stage));
        }
      }
      return;
    }
    asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
    constexpr uint32_t NO_ROW = 0xFFFFFFFFu;
    static_assert(BM == BN, "Q, K and V tiles share one row layout");
    const int chunk = wg_tid % 16, first_row = wg_tid / 16;
    const uint32_t tile_offset = sw128<BN>(first_row, chunk);
    uint32_t token[BN / 8];
    auto rows_from = [&](int row0, int seq_len) {
#pragma unroll
      for (int i = 0; i < BN / 8; ++i) {
        const int pos = row0 + first_row + 8 * i;
        token[i] = pos >= seq_len ? NO_ROW : GATHER ? __ldg(order + pos) : static_cast<uint32_t>(pos);
      }
    };
    auto copy_rows = [&](uint32_t tile, const T* base, int64_t token_stride) {
#pragma unroll
      for (int i = 0; i < BN / 8; ++i) {
        const bool valid = token[i] != NO_ROW;
        cp_async_16(tile + tile_offset + i * 8 * 128,
                    valid ? base + static_cast<int64_t>(token[i]) * token_stride + chunk * 8 : base,
                    valid ? 16 : 0);
      }
    };
    const T* k_base = k + kv_offset;
    const T* v_base = v + kv_offset;
    rows_from(q_start, q_len);
    copy_rows(s_q, q + batch * q_sb + head * q_sh, q_sl);
    cp_async_arrive_noinc(bar_q);
    for (int j = 0; j < n_tiles; ++j) {
      const int stage = j % STAGES;
      const uint32_t round = (j / STAGES) & 1;
      rows_from(next_key_start(), kv_len);
      const uint32_t k_addr = s_kv + stage * 2 * KV_BYTES;
      mbar_wait(empty_k(stage), round ^ 1);
      copy_rows(k_addr, k_base, kv_sl);
      cp_async_arrive_noinc(full_k(stage));
      mbar_wait(empty_v(stage), round ^ 1);
      copy_rows(k_addr + KV_BYTES, v_base, kv_sl);
      cp_async_arrive_noinc(full_v(stage));
    }
    cp_async_wait_all();
    return;
  }

  // ---- consumers
  if constexpr (TMA) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
  }
  const int cw = warpgroup - 1;  // 64 query rows each
  const int warp = tid / 32 - 4, lane = tid % 32;  // warp 0..7 over both consumers
  const bool releases = lane == 0;

  float acc[DT][4];
  float s[NT][4];
  uint32_t p[BN / 16][4];
#pragma unroll
  for (int dt = 0; dt < DT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};
  float alpha[2];

  // S_j = Q·K_jᵀ, issued and committed (not waited for).
  auto issue_s = [&](int j) {
    const int stage = j % STAGES;
    mbar_wait(full_k(stage), (j / STAGES) & 1);
    fence_proxy_async();  // the producer's cp.async wrote through the generic proxy
    const uint32_t s_k = s_kv + stage * 2 * KV_BYTES;
#pragma unroll
    for (int kd = 0; kd < D / 16; ++kd) {
      const uint32_t col = kd >> 2, within = (kd & 3) * 32;
      const uint64_t da = smem_desc(s_q + col * (BM * 128) + cw * 64 * 128 + within, 16, 1024);
      const uint64_t db = smem_desc(s_k + col * (BN * 128) + within, 16, 1024);
      wgmma_m64n128k16_ss(&s[0][0], da, db, kd > 0 ? 1 : 0, T{});
    }
    wgmma_commit();
  };
  // O += P_j·V_j, issued and committed.
  auto issue_pv = [&](int j) {
    const int stage = j % STAGES;
    mbar_wait(full_v(stage), (j / STAGES) & 1);
    fence_proxy_async();
    const uint32_t s_v = s_kv + stage * 2 * KV_BYTES + KV_BYTES;
#pragma unroll
    for (int kn = 0; kn < BN / 16; ++kn) {
      const uint64_t db = smem_desc(s_v + kn * 16 * 128, v_lbo, v_sbo);
      wgmma_m64n128k16_rs_tnspb(&acc[0][0], p[kn], db, T{});
    }
    wgmma_commit();
  };
  // After S_j has landed: frees K_j, then the online softmax of S_j in place (alpha = the
  // factor the running output must take).
  auto softmax = [&](int j, int key_start) {
    fence_regs<NT * 4>(&s[0][0]);
    if (releases) mbar_arrive(empty_k(j % STAGES));
    if (key_start + BN > kv_len) {
      const int col0 = key_start + (lane & 3) * 2;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (col0 + nt * 8 + (e & 1) >= kv_len) s[nt][e] = -INFINITY;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
      const float m_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
      alpha[r] = fast_exp2(row_max[r] * scale_log2 - m_scaled);
      row_max[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pe = fast_exp2(fmaf(s[nt][2 * r + e], scale_log2, -m_scaled));
          s[nt][2 * r + e] = pe;
          sum += pe;
        }
      row_sum[r] = row_sum[r] * alpha[r] + sum;
    }
  };
  // After P_{j-1}·V_{j-1} has landed: frees V_{j-1}.
  auto pv_done = [&](int j) {
    fence_regs<DT * 4>(&acc[0][0]);
    fence_regs<BN / 16 * 4>(&p[0][0]);
    if (releases) mbar_arrive(empty_v(j % STAGES));
  };
  // The running output takes alpha; S_j becomes P_j.
  auto rescale_and_pack = [&]() {
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      acc[dt][0] *= alpha[0];
      acc[dt][1] *= alpha[0];
      acc[dt][2] *= alpha[1];
      acc[dt][3] *= alpha[1];
    }
#pragma unroll
    for (int kn = 0; kn < BN / 16; ++kn) {
      p[kn][0] = Mma<T>::pack(s[2 * kn][0], s[2 * kn][1]);
      p[kn][1] = Mma<T>::pack(s[2 * kn][2], s[2 * kn][3]);
      p[kn][2] = Mma<T>::pack(s[2 * kn + 1][0], s[2 * kn + 1][1]);
      p[kn][3] = Mma<T>::pack(s[2 * kn + 1][2], s[2 * kn + 1][3]);
    }
  };

  mbar_wait(bar_q, 0);
  fence_proxy_async();
  if (n_tiles > 0) {
    // Ping-pong: consumer cw issues its matrix work after named barrier 1 + cw, then lets the
    // other go; consumer 0 goes first, and consumer 1 skips its last arrive, so that both
    // barriers end balanced (n_tiles + 1 turns each).
    if (cw == 1) named_arrive(1, 256);
    int key_start = next_key_start();
    named_sync(1 + cw, 256);
    wgmma_fence();
    issue_s(0);
    named_arrive(1 + (cw ^ 1), 256);
    wgmma_wait_all();
    softmax(0, key_start);
    rescale_and_pack();
    for (int j = 1; j < n_tiles; ++j) {
      key_start = next_key_start();
      named_sync(1 + cw, 256);
      wgmma_fence();
      issue_s(j);
      issue_pv(j - 1);
      named_arrive(1 + (cw ^ 1), 256);
      wgmma_wait_one();
      softmax(j, key_start);
      wgmma_wait_all();
      pv_done(j - 1);
      rescale_and_pack();
    }
    named_sync(1 + cw, 256);
    wgmma_fence();
    issue_pv(n_tiles - 1);
    if (cw == 0) named_arrive(2, 256);
    wgmma_wait_all();
    pv_done(n_tiles - 1);
  }

  T* o_base = o + batch * out_sb + head * out_sh;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = row_sum[r];
    l += __shfl_xor_sync(0xffffffff, l, 1);
    l += __shfl_xor_sync(0xffffffff, l, 2);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int token = q_start + warp * 16 + (lane >> 2) + r * 8;
    if (token < q_len) {
      const int64_t out_row = GATHER ? static_cast<int64_t>(__ldg(order + token)) : token;
      T* dst = o_base + out_row * out_sl + (lane & 3) * 2;
#pragma unroll
      for (int dt = 0; dt < DT; ++dt)
        *reinterpret_cast<uint32_t*>(dst + dt * 8) = Mma<T>::pack(acc[dt][2 * r] * inv, acc[dt][2 * r + 1] * inv);
    }
  }
}


}  // namespace hopper
}  // namespace rf

// Hopper entry points: the arguments of rf_attention_fwd_* with `order` after `indices` (u32
// [q_len]: the token at each position of the walked sequence, read by the _gather entries only;
// self-attention, kv_len == q_len) and the V descriptor's two byte offsets (leading: BN·128,
// stride: 1024) last. Launch 384 threads (a loading warpgroup and two computing ones), one CTA
// per SM, (BM·D + 2·STAGES·BN·D)·2 + 1024 bytes of dynamic shared memory (the extra 1024 align
// the tiles). Two stages: three were no faster (NOTES.md, v13).
#define RF_ATTENTION_WS_ENTRY(NAME, T, GATHER, STAGES)                                                      \
  extern "C" __global__ void __launch_bounds__(384, 1)                                             \
      NAME(const T* q, const T* k, const T* v, T* o, const uint32_t* offsets,                      \
           const uint32_t* indices, const uint32_t* order, int64_t q_sb, int64_t q_sh,             \
           int64_t q_sl, int64_t kv_sb, int64_t kv_sh, int64_t kv_sl, int64_t out_sb,               \
           int64_t out_sh, int64_t out_sl, int heads, int q_len, int kv_len, int block_size,        \
           int query_blocks, float scale_log2, uint32_t v_lbo, uint32_t v_sbo) {                   \
    rf::hopper::attention_fwd_ws<T, GATHER, STAGES, false>(                                        \
        q, k, v, o, offsets, indices, order, q_sb, q_sh, q_sl, kv_sb, kv_sh, kv_sl, out_sb, out_sh,  \
        out_sl, heads, q_len, kv_len, block_size, query_blocks, scale_log2, v_lbo, v_sbo, nullptr,   \
        nullptr, nullptr);                                                                          \
  }
// The same kernel loading q, k, v through TMA: the three tensor maps (head_dim, tokens, heads,
// batch; boxes of 64 × 128, 128-byte swizzle) replace q, k, v, `order` and their strides.
#define RF_ATTENTION_WS_TMA_ENTRY(NAME, T, STAGES)                                                  \
  extern "C" __global__ void __launch_bounds__(384, 1)                                             \
      NAME(const __grid_constant__ rf::hopper::TensorMap tm_q,                                     \
           const __grid_constant__ rf::hopper::TensorMap tm_k,                                     \
           const __grid_constant__ rf::hopper::TensorMap tm_v, T* o, const uint32_t* offsets,      \
           const uint32_t* indices, int64_t out_sb, int64_t out_sh, int64_t out_sl, int heads,      \
           int q_len, int kv_len, int block_size, int query_blocks, float scale_log2,               \
           uint32_t v_lbo, uint32_t v_sbo) {                                                       \
    rf::hopper::attention_fwd_ws<T, false, STAGES, true>(                                         \
        nullptr, nullptr, nullptr, o, offsets, indices, nullptr, 0, 0, 0, 0, 0, 0, out_sb, out_sh, \
        out_sl, heads, q_len, kv_len, block_size, query_blocks, scale_log2, v_lbo, v_sbo, &tm_q,   \
        &tm_k, &tm_v);                                                                             \
  }
RF_ATTENTION_WS_ENTRY(rf_attention_fwd_ws_bf16_d128, __nv_bfloat16, false, 2)
RF_ATTENTION_WS_ENTRY(rf_attention_fwd_ws_f16_d128, __half, false, 2)
RF_ATTENTION_WS_ENTRY(rf_attention_fwd_ws_gather_bf16_d128, __nv_bfloat16, true, 2)
RF_ATTENTION_WS_ENTRY(rf_attention_fwd_ws_gather_f16_d128, __half, true, 2)
RF_ATTENTION_WS_TMA_ENTRY(rf_attention_fwd_wst_bf16_d128, __nv_bfloat16, 2)
RF_ATTENTION_WS_TMA_ENTRY(rf_attention_fwd_wst_f16_d128, __half, 2)
#endif  // sm_90a
