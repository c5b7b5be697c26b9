// Paged attention over a block-table KV cache: decode (one query token per sequence) and
// append / prefill (many query tokens per sequence after a cached prefix) in one kernel.
//
// Compiled at run time with NVRTC (crates/cord-kv/src/ops/paged_attention.rs), so it uses no
// headers: 16-bit floats are converted with PTX `cvt` instructions. CPU reference:
// `paged_attention_cpu` in the same Rust file; the tests compare the two on random inputs.
//
// Inputs (all contiguous, element pointers already offset to the first element):
//   q      [T, nh, hd]            the new tokens' queries, packed sequence after sequence
//   k, v   [nb, bs, nkv, hd]      one layer of the paged cache (the new tokens already written)
//   plan   u32: tok_seq[T] | meta[S][3] = (q_start, q_len, ctx_len) | tables[S][max_blocks]
//   out    [T, nh, hd]            same dtype as q
// Query i of sequence s sits at absolute position p = ctx_len - q_len + i and attends to the
// keys 0..=p (causal, bottom-right aligned), or to p-window+1..=p when window > 0. Scores are
// (q.k) * scale, then softcap * tanh(score / softcap) when softcap > 0; softmax and the weighted
// sum of V accumulate in f32. GQA: query head h reads kv head h / (nh / nkv).
//
// Launch: grid (nh, T), block WARPS * 32 threads. Each warp walks every WARPS-th key with an
// online softmax (lanes split the head dimension, the dot product is a warp shuffle reduction);
// warp 0 then merges the warps' (max, sum, acc) triples. hd <= MAX_HD.

#define NEG_INF __int_as_float(0xff800000)
#define WARPS 4
#define MAX_HD 256
#define PER_LANE (MAX_HD / 32)

struct F32 {
    typedef float T;
    static __device__ __forceinline__ float ld(const float* p, size_t i) { return p[i]; }
    static __device__ __forceinline__ void st(float* p, size_t i, float x) { p[i] = x; }
};

struct BF16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float ld(const unsigned short* p, size_t i) {
        return __uint_as_float(((unsigned)p[i]) << 16);
    }
    static __device__ __forceinline__ void st(unsigned short* p, size_t i, float x) {
        unsigned short h;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
        p[i] = h;
    }
};

struct F16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float ld(const unsigned short* p, size_t i) {
        float f;
        unsigned short h = p[i];
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
    }
    static __device__ __forceinline__ void st(unsigned short* p, size_t i, float x) {
        unsigned short h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
        p[i] = h;
    }
};

template <typename L>
__device__ void paged_attention(
    const typename L::T* q, const typename L::T* k, const typename L::T* v, typename L::T* out,
    const unsigned* plan, int n_tokens, int n_seqs, int max_blocks, int nh, int nkv, int hd, int bs,
    float scale, float softcap, int window) {
    const int h = blockIdx.x;
    const int t = blockIdx.y;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;

    const unsigned s = plan[t];
    const unsigned* meta = plan + n_tokens + 3 * (size_t)s;
    const int q_start = (int)meta[0], q_len = (int)meta[1], ctx = (int)meta[2];
    const int pos = ctx - q_len + (t - q_start);
    const int lo = window > 0 ? max(0, pos - window + 1) : 0;
    const unsigned* table = plan + n_tokens + 3 * (size_t)n_seqs + (size_t)s * max_blocks;
    const int kvh = h / (nh / nkv);
    const size_t slot_stride = (size_t)nkv * hd;

    float qr[PER_LANE];
    float acc[PER_LANE];
    const size_t qrow = ((size_t)t * nh + h) * hd;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const int d = lane + 32 * i;
        qr[i] = d < hd ? L::ld(q, qrow + d) : 0.f;
        acc[i] = 0.f;
    }

    float m = NEG_INF, l = 0.f;
    for (int j = lo + warp; j <= pos; j += WARPS) {
        const size_t slot = (size_t)table[j / bs] * bs + (j % bs);
        const size_t row = slot * slot_stride + (size_t)kvh * hd;
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) dot += qr[i] * L::ld(k, row + d);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        float sc = dot * scale;
        if (softcap > 0.f) sc = tanhf(sc / softcap) * softcap;
        const float m2 = fmaxf(m, sc);
        const float corr = expf(m - m2);  // 0 on the first key (m = -inf)
        const float p = expf(sc - m2);
        l = l * corr + p;
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) acc[i] = acc[i] * corr + p * L::ld(v, row + d);
        }
        m = m2;
    }

    __shared__ float sm_m[WARPS], sm_l[WARPS];
    __shared__ float sm_acc[WARPS][MAX_HD];
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) sm_acc[warp][d] = acc[i];
    }
    __syncthreads();
    if (warp != 0) return;

    float mx = NEG_INF;
    for (int w = 0; w < WARPS; ++w) mx = fmaxf(mx, sm_m[w]);
    float wt[WARPS];
    float total = 0.f;
    for (int w = 0; w < WARPS; ++w) {
        // A warp that saw no key (fewer visible keys than warps) has m = -inf, l = 0.
        wt[w] = sm_m[w] == NEG_INF ? 0.f : expf(sm_m[w] - mx);
        total += sm_l[w] * wt[w];
    }
    const float inv = 1.f / total;
    for (int d = lane; d < hd; d += 32) {
        float o = 0.f;
        for (int w = 0; w < WARPS; ++w) o += sm_acc[w][d] * wt[w];
        L::st(out, qrow + d, o * inv);
    }
}

#define ENTRY(NAME, L)                                                                              \
    extern "C" __global__ void NAME(const L::T* q, const L::T* k, const L::T* v, L::T* out,         \
                                    const unsigned* plan, int n_tokens, int n_seqs, int max_blocks, \
                                    int nh, int nkv, int hd, int bs, float scale, float softcap,    \
                                    int window) {                                                   \
        paged_attention<L>(q, k, v, out, plan, n_tokens, n_seqs, max_blocks, nh, nkv, hd, bs,       \
                           scale, softcap, window);                                                 \
    }

ENTRY(paged_attention_f32, F32)
ENTRY(paged_attention_bf16, BF16)
ENTRY(paged_attention_f16, F16)
