//! Per-device memory budgets: the weights and KV pools of every model placed on a device must
//! fit its budget. A model that does not fit is refused before its weights are loaded (from an
//! estimate read off its config or GGUF header) with an error that carries the numbers
//! ([`DoesNotFit`], [`KvAutoError`]); what to change is for the caller to say (the `cord` binary
//! names its flags).
//!
//! Budgets: a CUDA device gets `fraction × total memory` (default fraction 0.9, as vLLM's
//! `gpu_memory_utilization`), the CPU gets the memory available when the device is first used
//! (`MemAvailable`). [`crate::engine::Engine::set_memory_budget`] overrides either.

use std::fmt::Write as _;

use candle_core::DType;

use crate::engine::{DeviceSpec, Engine, EngineError};

/// KV cache MiB per model when none is given (the engine's models, `cord synth`, `cord generate`).
pub const DEFAULT_KV_MIB: u64 = 2048;

/// Share of a GPU's total memory that weights + KV pools may take when none is given.
pub const DEFAULT_GPU_MEMORY_FRACTION: f64 = 0.9;

/// KV bytes per model of [`KvMemory::Auto`] on the CPU.
pub const CPU_AUTO_KV: u64 = 2 << 30;

/// How much KV cache memory each model gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvMemory {
    /// This many bytes per model.
    Fixed(u64),
    /// On a GPU: what the device budget leaves after the weights of the models placed there (and
    /// an activation reserve), split evenly between them ([`auto_kv_bytes`]).
    /// On the CPU: [`CPU_AUTO_KV`] per model.
    Auto,
}

/// [`DEFAULT_KV_MIB`] per model.
impl Default for KvMemory {
    fn default() -> Self {
        KvMemory::Fixed(DEFAULT_KV_MIB << 20)
    }
}

/// MiB, or `auto` (as `cord --kv-mib` takes it).
impl std::fmt::Display for KvMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvMemory::Fixed(b) => write!(f, "{}", b >> 20),
            KvMemory::Auto => write!(f, "auto"),
        }
    }
}

impl Engine {
    /// KV pool bytes for each of `models` (spec, dtype; `None` = the device's default) about to
    /// be placed on `device` (see [`KvMemory`]). With `Auto` on a GPU this opens the device and
    /// reads every model's size off its files; [`EngineError::KvAuto`] when one is unknown or
    /// the budget leaves too little.
    pub fn kv_pool_bytes(
        &mut self,
        kv: KvMemory,
        device: DeviceSpec,
        models: &[(String, Option<DType>)],
    ) -> Result<u64, EngineError> {
        let bytes = match (kv, device) {
            (KvMemory::Fixed(b), _) => return Ok(b),
            (KvMemory::Auto, DeviceSpec::Cpu) => return Ok(CPU_AUTO_KV),
            (KvMemory::Auto, DeviceSpec::Cuda(_)) => {
                self.device(device)?;
                let mut weights = Vec::with_capacity(models.len());
                for (spec, dtype) in models {
                    let dt = dtype.unwrap_or(device.default_dtype());
                    let w =
                        cord_models::estimate_weight_bytes(spec, dt, false).ok_or_else(|| {
                            KvAutoError::UnknownSize {
                                model: spec.clone(),
                            }
                        })?;
                    weights.push((spec.clone(), w));
                }
                let mem = self.memory(device).expect("opened above");
                auto_kv_bytes(&device.to_string(), mem, &weights)?
            }
        };
        tracing::info!(%device, kv_mib = bytes >> 20, "KV pool per model (auto)");
        Ok(bytes)
    }
}

/// What one model takes on its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub model: String,
    pub weights: u64,
    pub kv: u64,
}

/// A device's budget and the models placed on it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMemory {
    /// Bytes the models may take in all.
    pub budget: u64,
    /// How the budget was set, for messages ("0.90 of 139.81 GiB", "MemAvailable", ...).
    pub basis: String,
    pub placed: Vec<Placed>,
}

/// `12.34 GiB`.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

impl DeviceMemory {
    pub fn new(budget: u64, basis: impl Into<String>) -> Self {
        DeviceMemory {
            budget,
            basis: basis.into(),
            placed: vec![],
        }
    }

    /// Bytes taken by the placed models.
    pub fn used(&self) -> u64 {
        self.placed.iter().map(|p| p.weights + p.kv).sum()
    }

    pub fn left(&self) -> u64 {
        self.budget.saturating_sub(self.used())
    }

    /// [`DoesNotFit`] when `weights + kv` more bytes do not fit what is left.
    pub fn check(
        &self,
        device: &str,
        model: &str,
        weights: u64,
        kv: u64,
    ) -> Result<(), Box<DoesNotFit>> {
        if weights.saturating_add(kv) <= self.left() {
            return Ok(());
        }
        Err(Box::new(DoesNotFit {
            device: device.to_string(),
            model: model.to_string(),
            weights,
            kv,
            left: self.left(),
            budget: self.budget,
            basis: self.basis.clone(),
            placed: self.placed.clone(),
        }))
    }
}

/// A model whose weights and KV pool do not fit what is left of its device's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoesNotFit {
    pub device: String,
    pub model: String,
    pub weights: u64,
    pub kv: u64,
    /// Bytes left of the budget.
    pub left: u64,
    pub budget: u64,
    /// How the budget was set ([`DeviceMemory::basis`]).
    pub basis: String,
    /// The models already on the device.
    pub placed: Vec<Placed>,
}

impl std::fmt::Display for DoesNotFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = format!(
            "model `{}` does not fit on {}: weights {} + KV pool {} = {}, but only {} of the {} budget ({}) is left",
            self.model,
            self.device,
            gib(self.weights),
            gib(self.kv),
            gib(self.weights.saturating_add(self.kv)),
            gib(self.left),
            gib(self.budget),
            self.basis
        );
        if !self.placed.is_empty() {
            m.push_str("; already placed: ");
            for (i, p) in self.placed.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(
                    m,
                    "{sep}`{}` {} weights + {} KV",
                    p.model,
                    gib(p.weights),
                    gib(p.kv)
                );
            }
        }
        f.write_str(&m)
    }
}

impl std::error::Error for DoesNotFit {}

/// Why the KV pools of a device cannot be sized automatically ([`KvMemory::Auto`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvAutoError {
    /// A model's size cannot be read off its files before loading.
    UnknownSize { model: String },
    /// What the budget leaves after the weights and the activation reserve is less than
    /// [`MIN_AUTO_KV`] per pool.
    TooLittle {
        device: String,
        /// Bytes left of the budget, the budget and how it was set.
        left: u64,
        budget: u64,
        basis: String,
        /// The models about to be placed and their weight bytes.
        models: Vec<(String, u64)>,
        /// Bytes kept for activations and workspaces.
        reserve: u64,
        /// Bytes left for all pools.
        room: u64,
    },
}

impl std::fmt::Display for KvAutoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvAutoError::UnknownSize { model } => write!(
                f,
                "the size of model `{model}` is unknown before loading (not a local file or directory, not in the hub cache)"
            ),
            KvAutoError::TooLittle {
                device,
                left,
                budget,
                basis,
                models,
                reserve,
                room,
            } => {
                let weights: u64 = models.iter().map(|m| m.1).sum();
                let names: Vec<String> = models
                    .iter()
                    .map(|(m, w)| format!("`{m}` {}", gib(*w)))
                    .collect();
                write!(
                    f,
                    "the KV pools on {device} cannot be sized automatically: {} left of the {} budget ({basis}), weights {} ({}) and an activation reserve of {} leave {} for {} pool(s), less than {} each",
                    gib(*left),
                    gib(*budget),
                    gib(weights),
                    names.join(", "),
                    gib(*reserve),
                    gib(*room),
                    models.len().max(1),
                    gib(MIN_AUTO_KV)
                )
            }
        }
    }
}

impl std::error::Error for KvAutoError {}

/// Smallest KV pool [`auto_kv_bytes`] hands out.
pub const MIN_AUTO_KV: u64 = 256 << 20;

/// KV pool bytes for each of the models about to be placed on a device when their pools share
/// what the budget leaves: `(left - their weights - reserve) / count`, where the reserve for
/// activations and workspaces is the larger of 1 GiB and 5 % of the budget.
/// [`KvAutoError::TooLittle`] when that gives less than [`MIN_AUTO_KV`] per model.
pub fn auto_kv_bytes(
    device: &str,
    mem: &DeviceMemory,
    models: &[(String, u64)],
) -> Result<u64, KvAutoError> {
    let weights: u64 = models.iter().map(|m| m.1).sum();
    let reserve = (1u64 << 30).max(mem.budget / 20);
    let n = models.len().max(1) as u64;
    let room = mem.left().saturating_sub(weights).saturating_sub(reserve);
    let per = room / n;
    if per < MIN_AUTO_KV {
        return Err(KvAutoError::TooLittle {
            device: device.to_string(),
            left: mem.left(),
            budget: mem.budget,
            basis: mem.basis.clone(),
            models: models.to_vec(),
            reserve,
            room,
        });
    }
    Ok(per)
}

/// `MemAvailable` of /proc/meminfo, bytes.
pub fn cpu_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_kv_splits_what_the_weights_leave() {
        let gb = 1u64 << 30;
        let mem = DeviceMemory::new(100 * gb, "test");
        // 100 - (30 + 10) - reserve 5 = 55, two pools.
        let per = auto_kv_bytes(
            "cuda:0",
            &mem,
            &[("a".into(), 30 * gb), ("b".into(), 10 * gb)],
        )
        .unwrap();
        assert_eq!(per, 55 * gb / 2);
        let e = auto_kv_bytes("cuda:0", &mem, &[("a".into(), 95 * gb)]).unwrap_err();
        assert!(matches!(e, KvAutoError::TooLittle { reserve, .. } if reserve == 5 * gb));
        let parts = [
            "cuda:0",
            "`a` 95.00 GiB",
            "reserve of 5.00 GiB",
            "leave 0.00 GiB for 1 pool(s)",
        ];
        assert_says(&e, &parts);
    }

    fn assert_says(e: &dyn std::error::Error, parts: &[&str]) {
        let e = e.to_string();
        for part in parts {
            assert!(e.contains(part), "{part:?} missing from {e}");
        }
    }

    #[test]
    fn fits_until_the_budget_is_spent() {
        let mut d = DeviceMemory::new(10 << 30, "test");
        d.check("cuda:0", "a", 6 << 30, 1 << 30).unwrap();
        d.placed.push(Placed {
            model: "a".into(),
            weights: 6 << 30,
            kv: 1 << 30,
        });
        assert_eq!(d.left(), 3 << 30);
        d.check("cuda:0", "b", 2 << 30, 1 << 30).unwrap();
        let e = d.check("cuda:0", "b", 3 << 30, 1 << 30).unwrap_err();
        assert_eq!((e.left, e.placed.len()), (3 << 30, 1));
        let parts = [
            "model `b` does not fit on cuda:0",
            "weights 3.00 GiB + KV pool 1.00 GiB = 4.00 GiB",
            "only 3.00 GiB of the 10.00 GiB budget (test) is left",
            "`a` 6.00 GiB weights + 1.00 GiB KV",
        ];
        assert_says(&*e, &parts);
    }
}
