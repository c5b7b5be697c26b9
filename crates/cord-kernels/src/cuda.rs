//! CUDA plumbing shared by the ops' kernels (feature `cuda`): NVRTC compilation of a
//! `kernels/*.cu` source to PTX (once per process), a launch macro on candle's stream and the
//! common 1-D launch shape.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
use candle_core::cuda_backend::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

/// Compiles `src` to PTX for compute capability 9.0 with NVRTC, once per `module` name per
/// process. `module` must name one source (it is also the module key of
/// `CudaDevice::get_or_load_custom_func`, which caches by that name).
pub fn compile_ptx(module: &'static str, src: &'static str) -> candle_core::Result<&'static str> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, &'static str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = map.get(module) {
        return Ok(p);
    }
    let opts = CompileOptions {
        arch: Some("sm_90"),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(src, opts)
        .map_err(|e| candle_core::Error::Msg(format!("nvrtc ({module}): {e:?}")))?;
    let ptx: &'static str = Box::leak(ptx.to_src().into_boxed_str());
    map.insert(module, ptx);
    Ok(ptx)
}

/// Compiles (once) and launches kernel `$name` of `$module` on the device's stream with the given
/// argument references: `launch!(dev, "module", SRC, "fn", cfg, [&a, &b])`.
macro_rules! launch {
    ($dev:expr, $module:expr, $src:expr, $name:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        use candle_core::cuda_backend::WrapErr;
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        let ptx = $crate::cuda::compile_ptx($module, $src)?;
        let func = $dev.get_or_load_custom_func($name, $module, ptx)?;
        let mut b = func.builder();
        $( b.arg($arg); )*
        // SAFETY: the callers check every shape and bound the kernel relies on.
        unsafe { b.launch($cfg) }.w()?;
    }};
}
pub(crate) use launch;

/// 1-D launch over `n` elements: 256 threads, at most 65,535 blocks (grid-stride beyond).
pub(crate) fn cfg_1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}
