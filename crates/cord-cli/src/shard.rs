//! `--shard I/N` for `cord synth`, and `cord pool-info` for job scripts.
//!
//! A problem belongs to shard `splitmix64(fnv1a64(id)) mod N`: a fixed hash of the problem id
//! only, so the split does not depend on the order of the input file, on appended problems, on
//! the build or on the platform (no `std` `DefaultHasher`, whose output may change between
//! releases). `--limit L` is applied first: the N shards together cover exactly the first L
//! problems of the input, each taking its hashed share of them.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Result;
use clap::Args;
use cord_decode::config::PoolConfig;
use cord_decode::io::Problem;
use cord_decode::seed::{fnv1a64, splitmix64};
use cord_runtime::engine::DeviceSpec;

/// One shard of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// The shard a problem id belongs to, `0..count`.
    pub fn of(id: &str, count: u64) -> u64 {
        splitmix64(fnv1a64(id.as_bytes())) % count
    }

    pub fn contains(&self, id: &str) -> bool {
        Self::of(id, self.count) == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not of the form I/N (e.g. 0/8)"))?;
        let parse = |x: &str, what: &str| {
            x.trim()
                .parse::<u64>()
                .map_err(|_| format!("shard {what} `{x}` is not a non-negative integer"))
        };
        let (index, count) = (parse(i, "index")?, parse(n, "count")?);
        if count == 0 {
            return Err("shard count N must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is out of range for {count} shards (0..={})",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }
}

/// The problems a run takes: the first `limit` of the input, then this shard's share of them.
pub fn select(
    mut problems: Vec<Problem>,
    limit: Option<usize>,
    shard: Option<Shard>,
) -> Vec<Problem> {
    if let Some(n) = limit {
        problems.truncate(n);
    }
    if let Some(s) = shard {
        problems.retain(|p| s.contains(&p.id));
    }
    problems
}

#[derive(Args)]
pub struct PoolInfoArgs {
    /// Pool file (TOML).
    pool: PathBuf,
    /// Print only the number of GPUs the pool needs (highest `cuda:N` + 1; 0 for a CPU pool).
    #[arg(long)]
    gpus: bool,
}

/// GPUs a pool needs on one node: the highest CUDA ordinal named + 1 (the ordinals index the
/// devices the job can see, e.g. through `CUDA_VISIBLE_DEVICES`).
pub fn gpus_needed(pool: &PoolConfig) -> Result<u64> {
    let devices = pool
        .teachers
        .iter()
        .map(|t| t.device.as_deref())
        .chain(std::iter::once(pool.scorer.device.as_deref()));
    let mut max = None;
    for d in devices.flatten() {
        if let DeviceSpec::Cuda(n) = DeviceSpec::parse(d)? {
            max = max.max(Some(n as u64));
        }
    }
    Ok(max.map_or(0, |n| n + 1))
}

pub fn pool_info(a: PoolInfoArgs) -> Result<ExitCode> {
    // As `synth` loads it (model specs expanded), so the fingerprint is the records' one.
    let pool = crate::synth::load_pool(&a.pool, &Default::default())?;
    let gpus = gpus_needed(&pool)?;
    if a.gpus {
        println!("{gpus}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("pool {}", a.pool.display());
    println!(
        "fingerprint {} (of the file as is; synth flags such as --method change it)",
        pool.fingerprint()
    );
    println!(
        "method {}, beam width {}",
        pool.search.method.as_str(),
        pool.search.beam_width
    );
    for t in &pool.teachers {
        println!(
            "teacher {}: {} on {} ({})",
            t.name,
            t.model,
            t.device.as_deref().unwrap_or("cpu"),
            t.dtype
        );
    }
    if let Some(m) = &pool.scorer.model {
        if pool.teachers.iter().any(|t| &t.name == m) {
            println!("scorer {}: teacher {m}", pool.scorer.kind.as_str());
        } else {
            println!(
                "scorer {}: {m} on {}",
                pool.scorer.kind.as_str(),
                pool.scorer.device.as_deref().unwrap_or("cpu")
            );
        }
    }
    println!("gpus {gpus}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn problem(id: &str) -> Problem {
        Problem {
            id: id.to_string(),
            question: "q".into(),
            answer: "1".into(),
            line: 1,
        }
    }

    #[test]
    fn parse_and_validate() {
        assert_eq!("3/8".parse::<Shard>(), Ok(Shard { index: 3, count: 8 }));
        assert_eq!("0/1".parse::<Shard>(), Ok(Shard { index: 0, count: 1 }));
        for bad in ["8/8", "1/0", "0/0", "-1/4", "a/4", "3", "1/2/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad} accepted");
        }
        let e = "8/8".parse::<Shard>().unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = "1/0".parse::<Shard>().unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
    }

    /// Pins the hash: the split must not change between builds or platforms.
    #[test]
    fn split_is_pinned() {
        // FNV-1a test vectors, then the fixed mixer.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let got: Vec<u64> = (0..12)
            .map(|i| Shard::of(&format!("gsm8k-{i}"), 4))
            .collect();
        let again: Vec<u64> = (0..12)
            .map(|i| Shard::of(&format!("gsm8k-{i}"), 4))
            .collect();
        assert_eq!(got, again);
        assert_eq!(
            Shard::of("gsm8k-0", 1_000_003),
            splitmix64(fnv1a64(b"gsm8k-0")) % 1_000_003
        );
        // Every shard gets some of 1000 ids (the mixer spreads sequential ids).
        let mut counts = [0usize; 8];
        for i in 0..1000 {
            counts[Shard::of(&format!("p{i}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (80..170).contains(&c)), "{counts:?}");
    }

    #[test]
    fn limit_before_shard() {
        let ps: Vec<Problem> = (0..50).map(|i| problem(&format!("p{i}"))).collect();
        let mut all: Vec<String> = (0..4)
            .flat_map(|i| select(ps.clone(), Some(20), Some(Shard { index: i, count: 4 })))
            .map(|p| p.id)
            .collect();
        all.sort();
        let mut want: Vec<String> = ps[..20].iter().map(|p| p.id.clone()).collect();
        want.sort();
        assert_eq!(all, want);
        assert_eq!(select(ps.clone(), None, None).len(), 50);
    }

    proptest! {
        /// Every id lands in exactly one shard, for any N, whatever the input order.
        #[test]
        fn shards_partition_ids(
            ids in proptest::collection::hash_set("[a-zA-Z0-9_./-]{1,24}", 0..200),
            n in 1u64..64,
            rotate in 0usize..200,
        ) {
            let mut ps: Vec<Problem> = ids.iter().map(|id| problem(id)).collect();
            let mut seen = std::collections::HashMap::new();
            for i in 0..n {
                for p in select(ps.clone(), None, Some(Shard { index: i, count: n })) {
                    prop_assert!(seen.insert(p.id.clone(), i).is_none(), "{} in two shards", p.id);
                }
            }
            prop_assert_eq!(seen.len(), ids.len());
            // Reordering the input does not move any id.
            if !ps.is_empty() {
                let k = rotate % ps.len();
                ps.rotate_left(k);
            }
            for p in &ps {
                prop_assert_eq!(Shard::of(&p.id, n), seen[&p.id]);
            }
        }
    }
}
