//! Stable hashing for seeds and fingerprints (FNV-1a + splitmix64; no dependency, never changes
//! between versions, so that runs are reproducible).

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser: a bijective bit mixer.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a seed is used for; part of the hash so that e.g. a resample differs from the first
/// sample of the same (step, beam, teacher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    Propose = 1,
    Resample = 2,
    Answer = 3,
    Curation = 4,
    Rollout = 5,
}

/// Seed of one request (O-6): hash(question id, purpose, fields..., run seed). Depends only on
/// the problem and the request's place in its own search, never on batching.
pub fn request_seed(problem_id: &str, purpose: Purpose, fields: &[u64], run_seed: u64) -> u64 {
    let mut h = splitmix64(fnv1a64(problem_id.as_bytes()) ^ purpose as u64);
    for &f in fields {
        h = splitmix64(h ^ f);
    }
    splitmix64(h ^ run_seed.rotate_left(17))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_sensitivity() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let a = request_seed("p1", Purpose::Propose, &[1, 0, 2], 0);
        assert_eq!(a, request_seed("p1", Purpose::Propose, &[1, 0, 2], 0));
        assert_ne!(a, request_seed("p1", Purpose::Resample, &[1, 0, 2], 0));
        assert_ne!(a, request_seed("p2", Purpose::Propose, &[1, 0, 2], 0));
        assert_ne!(a, request_seed("p1", Purpose::Propose, &[1, 0, 2], 1));
        assert_ne!(a, request_seed("p1", Purpose::Propose, &[1, 2, 0], 0));
    }
}
