// Block copy (copy-on-write): for every (src, dst) pair and every layer, copy block src of the
// paged cache into block dst, in place.
//
// Compiled at run time with NVRTC (crates/cord-kv/src/ops/block_copy.rs); CPU reference
// `block_copy_cpu` there. Dtype-agnostic like kv_write (u16 for f16/bf16, u32 for f32).
//
//   cache  [n_layers, n_blocks, block_elems]   all layers of K (or V)
//   pairs  u32 [n_pairs][2]                    (src, dst); the host checks that no dst is also
//                                              a src and that no dst repeats, so the copies are
//                                              independent and the launch order does not matter
// Launch: grid (x: chunks of a block, y: pair, z: layer), any block size; grid-stride in x.

template <typename T>
__device__ void block_copy(T* cache, const unsigned* pairs, int n_blocks, int block_elems) {
    const unsigned src = pairs[2 * blockIdx.y];
    const unsigned dst = pairs[2 * blockIdx.y + 1];
    if (src >= (unsigned)n_blocks || dst >= (unsigned)n_blocks) return;
    T* layer = cache + (size_t)blockIdx.z * n_blocks * block_elems;
    const T* from = layer + (size_t)src * block_elems;
    T* to = layer + (size_t)dst * block_elems;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < block_elems; e += gridDim.x * blockDim.x) {
        to[e] = from[e];
    }
}

extern "C" __global__ void block_copy_u16(unsigned short* cache, const unsigned* pairs, int n_blocks,
                                          int block_elems) {
    block_copy<unsigned short>(cache, pairs, n_blocks, block_elems);
}

extern "C" __global__ void block_copy_u32(unsigned* cache, const unsigned* pairs, int n_blocks, int block_elems) {
    block_copy<unsigned>(cache, pairs, n_blocks, block_elems);
}
