//! Devices and their memory: which device a model runs on, one candle device per ordinal, and
//! the per-device budget ([`crate::memory`]) every placed model is checked against.

use candle_core::{DType, Device};

use super::{Engine, EngineError, ModelOptions, Result, model_err};
use crate::memory::DeviceMemory;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        if t == "cpu" {
            return Ok(Self::Cpu);
        }
        if t == "cuda" || t == "gpu" {
            return Ok(Self::Cuda(0));
        }
        if let Some(n) = t.strip_prefix("cuda:").or_else(|| t.strip_prefix("gpu:")) {
            return n
                .parse()
                .map(Self::Cuda)
                .map_err(|_| EngineError::BadDevice(s.to_string()));
        }
        Err(EngineError::BadDevice(s.to_string()))
    }
}

impl DeviceSpec {
    /// The dtype of unquantized weights and activations when none is asked for: f32 on the CPU
    /// (candle's CPU bf16 matmuls are slow), bf16 on CUDA.
    pub fn default_dtype(self) -> DType {
        match self {
            DeviceSpec::Cpu => DType::F32,
            DeviceSpec::Cuda(_) => DType::BF16,
        }
    }
}

/// A dtype name: `f32`, `f16`, `bf16` (or `float32`, `float16`/`half`, `bfloat16`), or `auto`
/// (`None`: the device's [`DeviceSpec::default_dtype`]).
pub fn parse_dtype(s: &str) -> Result<Option<DType>> {
    Ok(Some(match s.trim().to_ascii_lowercase().as_str() {
        "auto" => return Ok(None),
        "f32" | "float32" => DType::F32,
        "f16" | "float16" | "half" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => {
            return Err(EngineError::Invalid(format!(
                "unknown dtype `{other}` (expected f32, f16, bf16 or auto)"
            )));
        }
    }))
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Weight bytes of a loaded dense model (its parameter count in its dtype).
pub(super) fn dense_bytes(m: &cord_models::Model) -> u64 {
    m.config().num_parameters() as u64 * m.dtype().size_in_bytes() as u64
}

#[cfg(feature = "cuda")]
fn cuda_total_memory(dev: &Device) -> std::result::Result<u64, String> {
    let cuda = dev.as_cuda_device().map_err(|e| e.to_string())?;
    cuda.cuda_stream()
        .context()
        .total_mem()
        .map(|b| b as u64)
        .map_err(|e| format!("{e:?}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_total_memory(_dev: &Device) -> std::result::Result<u64, String> {
    Err("this build has no CUDA support".into())
}

impl Engine {
    /// Share of each GPU's total memory that weights + KV pools may take (for devices not
    /// opened yet).
    pub fn set_gpu_memory_fraction(&mut self, fraction: f64) -> Result<()> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(EngineError::Invalid(format!(
                "GPU memory fraction must be in (0, 1], got {fraction}"
            )));
        }
        self.gpu_memory_fraction = fraction;
        Ok(())
    }

    /// A fixed budget in bytes for a device (replaces the default of [`crate::memory`]).
    pub fn set_memory_budget(&mut self, device: DeviceSpec, bytes: u64) {
        self.budgets.insert(device, bytes);
        if let Some(m) = self.memory.get_mut(&device) {
            m.budget = bytes;
            m.basis = "set explicitly".into();
        }
    }

    /// The budget and placements of a device (once it has been opened).
    pub fn memory(&self, device: DeviceSpec) -> Option<&DeviceMemory> {
        self.memory.get(&device)
    }

    fn open_memory(&self, spec: DeviceSpec, dev: &Device) -> Result<DeviceMemory> {
        if let Some(&b) = self.budgets.get(&spec) {
            return Ok(DeviceMemory::new(b, "set explicitly"));
        }
        match spec {
            DeviceSpec::Cpu => Ok(match crate::memory::cpu_available() {
                Some(avail) => DeviceMemory::new(avail, "memory available when loading began"),
                None => DeviceMemory::new(u64::MAX, "unknown; not enforced"),
            }),
            DeviceSpec::Cuda(_) => {
                let total = cuda_total_memory(dev).map_err(|e| EngineError::DeviceUnavailable {
                    device: spec.to_string(),
                    message: format!("cannot read its memory size: {e}"),
                })?;
                let f = self.gpu_memory_fraction;
                Ok(DeviceMemory::new(
                    (total as f64 * f) as u64,
                    format!("{f:.2} of {} total", crate::memory::gib(total)),
                ))
            }
        }
    }

    /// What can be checked of a model without loading it: that `device` exists in this build
    /// and that `spec` names a model ([`cord_models::check_spec`]: a local checkpoint's config,
    /// tokenizer and weight files, a `.gguf` file or a hub id). Reads no weights.
    pub fn check_model(spec: &str, device: DeviceSpec) -> Result<()> {
        if let DeviceSpec::Cuda(_) = device
            && !candle_core::utils::cuda_is_available()
        {
            return Err(EngineError::DeviceUnavailable {
                device: device.to_string(),
                message: "this build of cord has no CUDA support (rebuild with --features cuda)"
                    .into(),
            });
        }
        cord_models::check_spec(spec).map_err(|e| model_err(spec, e))
    }

    /// The candle device for a spec; one per ordinal, shared by every model placed there.
    pub fn device(&mut self, spec: DeviceSpec) -> Result<Device> {
        if let Some(d) = self.devices.get(&spec) {
            return Ok(d.clone());
        }
        let dev = match spec {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(EngineError::DeviceUnavailable {
                        device: spec.to_string(),
                        message:
                            "this build of cord has no CUDA support (rebuild with --features cuda)"
                                .into(),
                    });
                }
                Device::new_cuda(n).map_err(|e| EngineError::DeviceUnavailable {
                    device: spec.to_string(),
                    message: e.to_string(),
                })?
            }
        };
        let mem = self.open_memory(spec, &dev)?;
        self.memory.insert(spec, mem);
        self.devices.insert(spec, dev.clone());
        Ok(dev)
    }

    /// Whether `weights` plus the KV pool of `opts` fit what is left on the device.
    pub(super) fn check_fits(&self, name: &str, opts: &ModelOptions, weights: u64) -> Result<()> {
        if let Some(m) = self.memory.get(&opts.device) {
            m.check(&opts.device.to_string(), name, weights, opts.kv_memory)
                .map_err(EngineError::OutOfMemory)?;
        }
        Ok(())
    }
}
