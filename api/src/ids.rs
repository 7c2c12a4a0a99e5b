//! Identifier rules shared by boards, instances, games and racks.

/// True when `id` is a DNS-label-like identifier: 1-63 characters of `a-z`, `0-9` and `-`,
/// not starting or ending with `-`. Such ids are safe in container names, labels and URLs.
pub fn is_valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_labels_and_refuses_the_rest() {
        for ok in ["a", "board-1", "0abc", "x".repeat(63).as_str()] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a b", "a/b", &"x".repeat(64)] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }
}
