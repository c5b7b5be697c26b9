// KV write: scatter the new tokens' K (or V) rows into their cache slots, in place.
//
// Compiled at run time with NVRTC (crates/cord-kv/src/ops/kv_write.rs); CPU reference
// `kv_write_cpu` there. The copy is dtype-agnostic: 16-bit caches (f16, bf16) use the u16 entry
// point, f32 caches the u32 one.
//
//   cache  [n_slots, row]   one layer's cache viewed as slots (block * block_size + offset)
//   src    [n, row]         the new rows, in token order
//   slots  u32 [n]          destination slot of each row
// A slot >= n_slots is skipped (the host checks slots before launching; this only keeps a bad
// launch from writing out of bounds). Launch: 1-D grid-stride over n * row elements.

template <typename T>
__device__ void kv_write(T* cache, const T* src, const unsigned* slots, int n, int row, int n_slots) {
    const size_t total = (size_t)n * row;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t tok = i / row;
        const size_t e = i % row;
        const unsigned slot = slots[tok];
        if (slot < (unsigned)n_slots) cache[(size_t)slot * row + e] = src[i];
    }
}

extern "C" __global__ void kv_write_u16(unsigned short* cache, const unsigned short* src, const unsigned* slots,
                                        int n, int row, int n_slots) {
    kv_write<unsigned short>(cache, src, slots, n, row, n_slots);
}

extern "C" __global__ void kv_write_u32(unsigned* cache, const unsigned* src, const unsigned* slots, int n,
                                        int row, int n_slots) {
    kv_write<unsigned>(cache, src, slots, n, row, n_slots);
}
