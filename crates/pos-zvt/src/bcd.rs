//! Packed BCD numbers and the `Fx Fy [Fz]` length prefixes of LLVAR and
//! LLLVAR fields.

/// `value` as `bytes` bytes of packed BCD, most significant digit first;
/// `None` if it does not fit.
pub fn encode(value: u64, bytes: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; bytes];
    let mut v = value;
    for b in out.iter_mut().rev() {
        let lo = (v % 10) as u8;
        v /= 10;
        let hi = (v % 10) as u8;
        v /= 10;
        *b = hi << 4 | lo;
    }
    (v == 0).then_some(out)
}

/// The number in packed BCD; `None` if a nibble is not a decimal digit.
pub fn decode(bytes: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for &b in bytes {
        for nibble in [b >> 4, b & 0x0F] {
            if nibble > 9 {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(nibble))?;
        }
    }
    Some(v)
}

/// The length prefix of a variable field: `digits` bytes `F0`..`F9`.
pub fn var_prefix(len: usize, digits: usize) -> Option<Vec<u8>> {
    if len >= 10usize.pow(digits as u32) {
        return None;
    }
    let mut out = vec![0xF0u8; digits];
    let mut v = len;
    for b in out.iter_mut().rev() {
        *b |= (v % 10) as u8;
        v /= 10;
    }
    Some(out)
}

/// Reads a variable field's length prefix of `digits` bytes.
pub fn read_var_prefix(bytes: &[u8], digits: usize) -> Option<usize> {
    let prefix = bytes.get(..digits)?;
    prefix
        .iter()
        .try_fold(0usize, |acc, &b| (b >> 4 == 0x0F && b & 0x0F <= 9).then(|| acc * 10 + usize::from(b & 0x0F)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(encode(190, 6).unwrap(), [0, 0, 0, 0, 0x01, 0x90]);
        assert_eq!(encode(978, 2).unwrap(), [0x09, 0x78]);
        assert_eq!(encode(123456, 3).unwrap(), [0x12, 0x34, 0x56]);
        assert_eq!(encode(1_000_000, 3), None);
        assert_eq!(decode(&[0x09, 0x78]), Some(978));
        assert_eq!(decode(&[0xFF, 0xFF]), None);
        assert_eq!(decode(&[0x99; 10]), None, "20 digits overflow u64");
    }

    #[test]
    fn prefixes() {
        assert_eq!(var_prefix(7, 3).unwrap(), [0xF0, 0xF0, 0xF7]);
        assert_eq!(var_prefix(40, 3).unwrap(), [0xF0, 0xF4, 0xF0]);
        assert_eq!(var_prefix(11, 2).unwrap(), [0xF1, 0xF1]);
        assert_eq!(var_prefix(100, 2), None);
        assert_eq!(read_var_prefix(&[0xF0, 0xF4, 0xF0, 0x41], 3), Some(40));
        assert_eq!(read_var_prefix(&[0xF1, 0x41], 2), None);
        assert_eq!(read_var_prefix(&[0xF1], 2), None);
    }
}
