//! Checks every service applies to its settings.

use std::time::Duration;

/// A duration setting outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} must be between {min} and {max} ms")]
pub struct OutOfRange {
    pub name: &'static str,
    pub min: u64,
    pub max: u64,
}

/// The duration setting `name` in ms: `value`, else `default`; refused outside `min..=max`.
pub fn millis(
    name: &'static str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, OutOfRange> {
    let v = value.unwrap_or(default);
    if (min..=max).contains(&v) { Ok(Duration::from_millis(v)) } else { Err(OutOfRange { name, min, max }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_defaults_are_kept_within_their_range() {
        assert_eq!(millis("x", None, 500, 100, 1000), Ok(Duration::from_millis(500)));
        assert_eq!(millis("x", Some(100), 500, 100, 1000), Ok(Duration::from_millis(100)));
        assert_eq!(
            millis("x", Some(1001), 500, 100, 1000),
            Err(OutOfRange { name: "x", min: 100, max: 1000 })
        );
        assert!(millis("x", Some(99), 500, 100, 1000).is_err());
    }
}
