// Fused per-row token log-prob: out[i] = log_softmax(x[i, :])[ids[i]], f32 output.
//
// Compiled at run time with NVRTC (crates/cord-runtime/src/logprob.rs), so it uses no headers:
// bf16 and f16 are read as raw 16-bit words and widened with bit operations.
//
// One block of 256 threads per row. Each thread keeps an online (max, sum) pair over its strided
// elements, s = s * exp(m - m') + exp(x - m'); the pairs are then combined by a shared-memory tree
// reduction, and thread 0 writes (x[target] - m) - log s (in this order, so that a huge max does
// not swallow log s).  A target id outside the row gives NaN.
// block_dim must be 256 (the size of the shared arrays).

#define NEG_INF __int_as_float(0xff800000)
#define QNAN __int_as_float(0x7fffffff)
#define BLOCK 256

struct LdF32 {
    typedef float T;
    static __device__ __forceinline__ float ld(const float* p, int i) { return p[i]; }
};

struct LdBF16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float ld(const unsigned short* p, int i) {
        return __uint_as_float(((unsigned)p[i]) << 16);
    }
};

struct LdF16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float ld(const unsigned short* p, int i) {
        unsigned h = p[i];
        unsigned sign = (h & 0x8000u) << 16;
        unsigned e = (h >> 10) & 0x1fu;
        unsigned m = h & 0x3ffu;
        if (e == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (m << 13));  // inf / nan
        if (e == 0u) {                                                          // zero / subnormal
            float f = (float)m * 5.9604644775390625e-8f;                         // m * 2^-24
            return sign ? -f : f;
        }
        return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
    }
};

template <typename L>
__device__ void body(const typename L::T* x, const unsigned* ids, float* out, int v) {
    const typename L::T* row = x + (size_t)blockIdx.x * v;
    float m = NEG_INF, s = 0.f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float y = L::ld(row, j);
        if (y > m) {
            s = s * __expf(m - y) + 1.f;
            m = y;
        } else if (y != NEG_INF) {
            s += __expf(y - m);  // NaN propagates
        }
    }
    __shared__ float sm[BLOCK], ss[BLOCK];
    sm[threadIdx.x] = m;
    ss[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) {
            float a = sm[threadIdx.x], b = sm[threadIdx.x + k], m2 = fmaxf(a, b);
            float sa = ss[threadIdx.x], sb = ss[threadIdx.x + k];
            ss[threadIdx.x] = (a == NEG_INF ? 0.f : sa * __expf(a - m2)) + (b == NEG_INF ? 0.f : sb * __expf(b - m2));
            sm[threadIdx.x] = m2;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        unsigned t = ids[blockIdx.x];
        out[blockIdx.x] = t < (unsigned)v ? (L::ld(row, (int)t) - sm[0]) - __logf(ss[0]) : QNAN;
    }
}

extern "C" __global__ void token_logprob_f32(const float* x, const unsigned* ids, float* out, int v) {
    body<LdF32>(x, ids, out, v);
}
extern "C" __global__ void token_logprob_bf16(const unsigned short* x, const unsigned* ids, float* out, int v) {
    body<LdBF16>(x, ids, out, v);
}
extern "C" __global__ void token_logprob_f16(const unsigned short* x, const unsigned* ids, float* out, int v) {
    body<LdF16>(x, ids, out, v);
}
