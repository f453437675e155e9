//! Fault injection: what can go wrong between a controller and the bus master, switchable
//! at run time for the whole bus or one lock.

use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};

/// Faults to inject. `Default` is a healthy bus.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction (0..=1) of replies lost after the request took effect.
    pub drop_reply_rate: f64,
    /// Fraction of RTU replies sent with a broken CRC (Modbus TCP has no CRC).
    pub corrupt_crc_rate: f64,
    /// Added before every reply.
    pub extra_delay_ms: u64,
    /// Fraction of replies that carry another unit id.
    pub wrong_unit_rate: f64,
    /// The lock hears nothing and answers nothing.
    pub silent: bool,
}

impl Faults {
    /// Checks the rates; the message names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("drop_reply_rate", self.drop_reply_rate),
            ("corrupt_crc_rate", self.corrupt_crc_rate),
            ("wrong_unit_rate", self.wrong_unit_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be within 0..=1, found {v}"));
            }
        }
        if self.extra_delay_ms > 60_000 {
            return Err(format!(
                "extra_delay_ms must be at most 60000, found {}",
                self.extra_delay_ms
            ));
        }
        Ok(())
    }

    /// The faults in force for a lock: the worse of the bus-wide and the lock's own.
    pub fn combine(&self, other: &Faults) -> Faults {
        Faults {
            drop_reply_rate: self.drop_reply_rate.max(other.drop_reply_rate),
            corrupt_crc_rate: self.corrupt_crc_rate.max(other.corrupt_crc_rate),
            extra_delay_ms: self.extra_delay_ms.max(other.extra_delay_ms),
            wrong_unit_rate: self.wrong_unit_rate.max(other.wrong_unit_rate),
            silent: self.silent || other.silent,
        }
    }
}

/// True with probability `rate`.
pub(crate) fn chance(rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    // 53 random bits give a uniform f64 in [0, 1).
    let x = (OsRng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    x < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chance_extremes_and_validation() {
        assert!((0..100).all(|_| !chance(0.0)));
        assert!((0..100).all(|_| chance(1.0)));
        let hits = (0..2000).filter(|_| chance(0.5)).count();
        assert!((800..1200).contains(&hits), "{hits}");
        assert!(
            Faults {
                drop_reply_rate: 1.5,
                ..Faults::default()
            }
            .validate()
            .is_err()
        );
        let c = Faults {
            silent: true,
            ..Faults::default()
        }
        .combine(&Faults {
            extra_delay_ms: 5,
            ..Faults::default()
        });
        assert!(c.silent && c.extra_delay_ms == 5);
    }
}
