//! Exact rationals (i128) with a floating-point fallback.

use std::fmt;

/// A reduced fraction `n / d` with `d > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rat {
    n: i128,
    d: i128,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

impl Rat {
    pub fn int(n: i128) -> Self {
        Rat { n, d: 1 }
    }

    /// `n / d` reduced; `None` when `d == 0` or the reduced form does not fit.
    pub fn new(n: i128, d: i128) -> Option<Self> {
        if d == 0 {
            return None;
        }
        let g = gcd(n.unsigned_abs(), d.unsigned_abs()).max(1);
        let g = i128::try_from(g).ok()?;
        let (mut n, mut d) = (n / g, d / g);
        if d < 0 {
            n = n.checked_neg()?;
            d = d.checked_neg()?;
        }
        Some(Rat { n, d })
    }

    pub fn numer(&self) -> i128 {
        self.n
    }

    pub fn denom(&self) -> i128 {
        self.d
    }

    pub fn is_integer(&self) -> bool {
        self.d == 1
    }

    pub fn to_f64(self) -> f64 {
        self.n as f64 / self.d as f64
    }

    pub fn checked_add(self, o: Rat) -> Option<Rat> {
        let n = self
            .n
            .checked_mul(o.d)?
            .checked_add(o.n.checked_mul(self.d)?)?;
        Rat::new(n, self.d.checked_mul(o.d)?)
    }

    pub fn checked_neg(self) -> Option<Rat> {
        Some(Rat {
            n: self.n.checked_neg()?,
            d: self.d,
        })
    }

    pub fn checked_sub(self, o: Rat) -> Option<Rat> {
        self.checked_add(o.checked_neg()?)
    }

    pub fn checked_mul(self, o: Rat) -> Option<Rat> {
        Rat::new(self.n.checked_mul(o.n)?, self.d.checked_mul(o.d)?)
    }

    pub fn checked_div(self, o: Rat) -> Option<Rat> {
        if o.n == 0 {
            return None;
        }
        Rat::new(self.n.checked_mul(o.d)?, self.d.checked_mul(o.n)?)
    }

    /// `self^e` for an integer exponent (|e| <= 4096), `None` on overflow or 0^negative.
    pub fn pow(self, e: i128) -> Option<Rat> {
        if e.unsigned_abs() > 4096 {
            return None;
        }
        let mut base = if e < 0 {
            Rat::int(1).checked_div(self)?
        } else {
            self
        };
        let mut e = e.unsigned_abs();
        let mut acc = Rat::int(1);
        while e > 0 {
            if e & 1 == 1 {
                acc = acc.checked_mul(base)?;
            }
            e >>= 1;
            if e > 0 {
                base = base.checked_mul(base)?;
            }
        }
        Some(acc)
    }

    /// The exact `k`-th root when numerator and denominator are perfect `k`-th powers.
    pub fn root(self, k: u32) -> Option<Rat> {
        if k == 0 || k > 64 {
            return None;
        }
        let neg = self.n < 0;
        if neg && k.is_multiple_of(2) {
            return None;
        }
        let n = int_root(self.n.unsigned_abs(), k)?;
        let d = int_root(self.d.unsigned_abs(), k)?;
        let n = i128::try_from(n).ok()?;
        let d = i128::try_from(d).ok()?;
        Rat::new(if neg { -n } else { n }, d)
    }
}

/// Exact integer `k`-th root of `v`, if there is one.
fn int_root(v: u128, k: u32) -> Option<u128> {
    if v < 2 {
        return Some(v);
    }
    let guess = (v as f64).powf(1.0 / k as f64).round() as u128;
    (guess.saturating_sub(1)..=guess + 1).find(|c| c.checked_pow(k) == Some(v))
}

impl fmt::Display for Rat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.d == 1 {
            write!(f, "{}", self.n)
        } else {
            write!(f, "{}/{}", self.n, self.d)
        }
    }
}

/// A value: exact when every step was exact, else a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val {
    Exact(Rat),
    Approx(f64),
}

impl Val {
    pub fn f(self) -> f64 {
        match self {
            Val::Exact(r) => r.to_f64(),
            Val::Approx(x) => x,
        }
    }

    fn lift(
        a: Val,
        b: Val,
        exact: impl Fn(Rat, Rat) -> Option<Rat>,
        fl: fn(f64, f64) -> f64,
    ) -> Val {
        if let (Val::Exact(x), Val::Exact(y)) = (a, b)
            && let Some(r) = exact(x, y)
        {
            return Val::Exact(r);
        }
        Val::Approx(fl(a.f(), b.f()))
    }

    pub fn plus(self, o: Val) -> Val {
        Val::lift(self, o, Rat::checked_add, |a, b| a + b)
    }

    pub fn minus(self, o: Val) -> Val {
        Val::lift(self, o, Rat::checked_sub, |a, b| a - b)
    }

    pub fn times(self, o: Val) -> Val {
        Val::lift(self, o, Rat::checked_mul, |a, b| a * b)
    }

    pub fn over(self, o: Val) -> Val {
        Val::lift(self, o, Rat::checked_div, |a, b| a / b)
    }

    pub fn negate(self) -> Val {
        match self {
            Val::Exact(r) => r.checked_neg().map_or(Val::Approx(-r.to_f64()), Val::Exact),
            Val::Approx(x) => Val::Approx(-x),
        }
    }

    pub fn pow(self, e: Val) -> Val {
        if let (Val::Exact(b), Val::Exact(x)) = (self, e) {
            if x.is_integer()
                && let Some(r) = b.pow(x.numer())
            {
                return Val::Exact(r);
            }
            // b^(p/q) = (b^(1/q))^p when the root is exact.
            if let Ok(q) = u32::try_from(x.denom())
                && let Some(root) = b.root(q)
                && let Some(r) = root.pow(x.numer())
            {
                return Val::Exact(r);
            }
        }
        Val::Approx(self.f().powf(e.f()))
    }

    /// Principal `k`-th root.
    pub fn root(self, k: Val) -> Val {
        if let (Val::Exact(b), Val::Exact(k)) = (self, k)
            && k.is_integer()
            && let Ok(k) = u32::try_from(k.numer())
            && let Some(r) = b.root(k)
        {
            return Val::Exact(r);
        }
        let (b, k) = (self.f(), k.f());
        if b < 0.0 && k.fract() == 0.0 && k.rem_euclid(2.0) == 1.0 {
            Val::Approx(-(-b).powf(1.0 / k))
        } else {
            Val::Approx(b.powf(1.0 / k))
        }
    }

    pub fn factorial(self) -> Val {
        match self {
            Val::Exact(r) if r.is_integer() && (0..=170).contains(&r.numer()) => {
                let mut acc = Val::Exact(Rat::int(1));
                for i in 2..=r.numer() {
                    acc = acc.times(Val::Exact(Rat::int(i)));
                }
                acc
            }
            _ => Val::Approx(f64::NAN),
        }
    }

    pub fn binom(n: Val, k: Val) -> Val {
        match (n, k) {
            (Val::Exact(n), Val::Exact(k))
                if n.is_integer()
                    && k.is_integer()
                    && (0..=100_000).contains(&n.numer())
                    && k.numer() >= 0 =>
            {
                let (n, k) = (n.numer(), k.numer());
                if k > n {
                    return Val::Exact(Rat::int(0));
                }
                let k = k.min(n - k);
                let mut acc = Val::Exact(Rat::int(1));
                for i in 0..k {
                    acc = acc
                        .times(Val::Exact(Rat::int(n - i)))
                        .over(Val::Exact(Rat::int(i + 1)));
                }
                acc
            }
            _ => Val::Approx(f64::NAN),
        }
    }

    pub fn floor(self) -> Val {
        match self {
            Val::Exact(r) => Val::Exact(Rat::int(r.numer().div_euclid(r.denom()))),
            Val::Approx(x) => Val::Approx(x.floor()),
        }
    }

    pub fn ceil(self) -> Val {
        self.negate().floor().negate()
    }

    pub fn abs(self) -> Val {
        if self.f() < 0.0 { self.negate() } else { self }
    }
}

/// Relative tolerance of inexact comparisons.
pub const REL_TOL: f64 = 1e-9;

/// Equal exactly when both are exact, else within [`REL_TOL`] relative (infinities of one sign
/// are equal; NaN equals nothing).
pub fn vals_equal(a: Val, b: Val) -> bool {
    if let (Val::Exact(x), Val::Exact(y)) = (a, b) {
        return x == y;
    }
    let (x, y) = (a.f(), b.f());
    if x.is_nan() || y.is_nan() {
        return false;
    }
    if x.is_infinite() || y.is_infinite() {
        return x == y;
    }
    let scale = x.abs().max(y.abs());
    scale == 0.0 || (x - y).abs() <= REL_TOL * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rationals() {
        let half = Rat::new(2, 4).unwrap();
        assert_eq!((half.numer(), half.denom()), (1, 2));
        assert_eq!(Rat::new(1, -2).unwrap().to_string(), "-1/2");
        assert_eq!(Rat::new(1, 0), None);
        assert_eq!(Rat::int(2).pow(10), Some(Rat::int(1024)));
        assert_eq!(Rat::int(2).pow(-2), Rat::new(1, 4));
        assert_eq!(Rat::int(2).pow(200), None);
        assert_eq!(Rat::new(9, 4).unwrap().root(2), Rat::new(3, 2));
        assert_eq!(Rat::int(-8).root(3), Some(Rat::int(-2)));
        assert_eq!(Rat::int(2).root(2), None);
        assert_eq!(Rat::int(i128::MIN).checked_neg(), None);
    }

    #[test]
    fn values() {
        let v = Val::Exact(Rat::int(8)).root(Val::Exact(Rat::int(2)));
        assert!(matches!(v, Val::Approx(_)));
        assert!(vals_equal(v, Val::Approx(2.0 * 2f64.sqrt())));
        assert!(!vals_equal(
            Val::Exact(Rat::new(333, 1000).unwrap()),
            Val::Exact(Rat::new(1, 3).unwrap())
        ));
        assert_eq!(
            Val::Exact(Rat::int(5)).factorial(),
            Val::Exact(Rat::int(120))
        );
        assert_eq!(
            Val::binom(Val::Exact(Rat::int(10)), Val::Exact(Rat::int(5))),
            Val::Exact(Rat::int(252))
        );
        assert_eq!(
            Val::Exact(Rat::new(-3, 2).unwrap()).floor(),
            Val::Exact(Rat::int(-2))
        );
        assert!(!vals_equal(Val::Approx(f64::NAN), Val::Approx(f64::NAN)));
    }
}
