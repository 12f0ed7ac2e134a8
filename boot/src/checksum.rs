//! The 8-bit checksum firmware tables use (ACPI 6.4 §5.2.5.3 and §5.2.6, Intel MP spec
//! 1.4 §4.1 and §4.2): all bytes of the structure, checksum included, sum to zero.

/// The byte that makes `bytes` sum to zero (mod 256) when stored in its checksum field,
/// which must be zero in `bytes` when this is computed.
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_to_zero() {
        let mut v = vec![1u8, 2, 250, 0];
        v[3] = checksum(&v);
        assert_eq!(v.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
        assert_eq!(checksum(&[]), 0);
    }
}
