// Block-sparse flash attention forward (FlashAttention-2 style) for Ampere and Hopper.
//
// One thread block computes one query tile of one (batch, head). It walks the key blocks that
// the BlockMask CSR lists for its (batch, head, query block) row; dense attention is the mask
// that lists every key block, so one kernel serves both and skipped blocks cost nothing.
//
//   q, k, v : [batch, heads, tokens, head_dim] with arbitrary batch/head/token strides (in
//             elements) shared by the three inputs; head_dim is contiguous.
//   o       : same logical shape, with its own strides (lets the caller write [B, L, H, D]).
//   offsets : batch*heads*query_blocks + 1 row starts into `indices` (u32), or null for dense
//             attention (every key block kept; `indices` is then unused).
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

// ---------------------------------------------------------------- small PTX helpers

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
                                              int64_t in_sb, int64_t in_sh, int64_t in_sl,
                                              int64_t out_sb, int64_t out_sh, int64_t out_sl,
                                              int heads, int seq_len, int block_size,
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

  const int64_t in_offset = batch * in_sb + head * in_sh;
  const T* q_base = q + in_offset;
  const T* k_base = k + in_offset;
  const T* v_base = v + in_offset;

  // CSR row of this query tile (BM never exceeds block_size, so one tile lies in one block).
  // Dense attention passes no CSR (offsets == nullptr): every key block, in order.
  const bool dense = offsets == nullptr;
  const int row = (batch * heads + head) * query_blocks + q_start / block_size;
  const uint32_t row_begin = dense ? 0u : offsets[row];
  const int kept_blocks =
      dense ? query_blocks : static_cast<int>(offsets[row + 1] - row_begin);
  const int tiles_per_block = block_size / BN;
  const int n_tiles = kept_blocks * tiles_per_block;

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
    load_tile<T, D, BN, NTHREADS>(s_kv_addr + stage * KV_STAGE_BYTES, k_base, in_sl, key_start,
                                  seq_len, tid);
  };
  auto load_v = [&](int stage, int key_start) {
    load_tile<T, D, BN, NTHREADS>(s_kv_addr + stage * KV_STAGE_BYTES + BN * D * 2, v_base, in_sl,
                                  key_start, seq_len, tid);
  };

  load_tile<T, D, BM, NTHREADS>(s_q_addr, q_base, in_sl, q_start, seq_len, tid);
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

    // Ragged last block: keys past the sequence end score -inf.
    if (this_key_start + BN > seq_len) {
      const int col0 = this_key_start + (lane & 3) * 2;
#pragma unroll
      for (int mf = 0; mf < MFRAG; ++mf)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (col0 + nt * 8 + (e & 1) >= seq_len) s[mf][nt][e] = -INFINITY;
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
      if (token < seq_len) {
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
// (q = Q fragments held in registers). Launch: grid (ceil(tokens / BM), heads, batch),
// block NWARPS·32 threads, dynamic shared memory (BM + 2·BN)·D·2 bytes,
// BM = 16·warps·fragments, which must not exceed block_size; BN must divide block_size.

#define RF_ATTENTION_ENTRY(NAME, T, D, NW, MF, BN, QREG, ST, MINB)                                   \
  extern "C" __global__ void __launch_bounds__(NW * 32, MINB)                                   \
      NAME(const T* q, const T* k, const T* v, T* o, const uint32_t* offsets,                   \
           const uint32_t* indices, int64_t in_sb, int64_t in_sh, int64_t in_sl, int64_t out_sb, \
           int64_t out_sh, int64_t out_sl, int heads, int seq_len, int block_size,               \
           int query_blocks, float scale_log2) {                                                 \
    rf::attention_fwd<T, D, NW, MF, BN, QREG, ST>(q, k, v, o, offsets, indices, in_sb, in_sh, in_sl, \
                                              out_sb, out_sh, out_sl, heads, seq_len,            \
                                              block_size, query_blocks, scale_log2);             \
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
#ifndef RF_ATTENTION_LIBRARY_ONLY
RF_ATTENTION_DTYPES(d128_w4m2n64s1, 128, 4, 2, 64, false, 1, 2)
RF_ATTENTION_DTYPES(d128_w4m2n32s2, 128, 4, 2, 32, false, 2, 2)
RF_ATTENTION_DTYPES(d128_w8m1n128qs1, 128, 8, 1, 128, true, 1, 1)
RF_ATTENTION_DTYPES(d128_w8m1n64qs2, 128, 8, 1, 64, true, 2, 1)
RF_ATTENTION_DTYPES(d64_w4m2n64s1, 64, 4, 2, 64, false, 1, 2)
RF_ATTENTION_DTYPES(d64_w4m2n64s2, 64, 4, 2, 64, false, 2, 2)
#endif
