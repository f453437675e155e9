//! A wrapper that keeps secrets out of logs and `Debug` output.

use std::fmt;

/// Holds a secret (private key PEM, API v3 key). `Debug` prints `***`; there is no `Display`,
/// so the value reaches a log line only through an explicit [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Borrows the secret; callers must not log what they get.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2-private-key".to_owned());
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "hunter2-private-key");
    }
}
