//! Page tokens: the position after a page's last payment (its creation time
//! and id) in Crockford base32, followed by a MAC of it under a random key
//! of this posd process, so that a token a client altered or made up is
//! refused instead of read as some other position. A token does not outlive
//! the process that issued it: after a restart of posd, a register starts
//! again from the first page.

use std::sync::LazyLock;

use hmac::{Hmac, Mac};
use pos_mask::{crockford32, crockford32_decode};
use sha2::Sha256;

/// Length of the MAC at the end of a token (128 bits in Crockford base32).
const MAC_CHARS: usize = 26;

/// The key tokens are signed with: random, once per process.
static KEY: LazyLock<[u8; 32]> = LazyLock::new(random_key);

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    // The OS's random source (getrandom(2)). Without it posd could not make
    // payment ids either (UUIDv7's random bits come from the same source).
    getrandom::fill(&mut key).expect("the operating system's random source works");
    key
}

/// The keyed hash of a token's body: HMAC-SHA256, its first 128 bits in
/// Crockford base32.
fn mac(body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&*KEY).expect("HMAC takes a key of any length");
    mac.update(b"page-token:");
    mac.update(body.as_bytes());
    crockford32(&mac.finalize().into_bytes()[..16])
}

/// The token for the position after a payment created at `at_ms` with id `id`.
pub fn issue(at_ms: i64, id: &str) -> String {
    let mut bytes = at_ms.to_be_bytes().to_vec();
    bytes.extend_from_slice(id.as_bytes());
    let body = crockford32(&bytes);
    let mac = mac(&body);
    format!("{body}{mac}")
}

/// The position a token this process issued stands for; `None` for any
/// other string.
pub fn read(token: &str) -> Option<(i64, String)> {
    let split = token.len().checked_sub(MAC_CHARS).filter(|&n| n > 0 && token.is_char_boundary(n))?;
    let (body, given) = token.split_at(split);
    let expected = mac(body);
    // Compared in a time that does not tell where they differ.
    let differ =
        given.bytes().zip(expected.bytes()).fold(given.len() ^ expected.len(), |d, (a, b)| d | usize::from(a ^ b));
    if differ != 0 {
        return None;
    }
    let bytes = crockford32_decode(body)?;
    let (at, id) = bytes.split_at_checked(8)?;
    Some((i64::from_be_bytes(at.try_into().ok()?), String::from_utf8(id.to_vec()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_its_position() {
        for (at, id) in [(0, ""), (1_795_656_600_123, "pay_01KAXYZ0123456789ABCDEFGHJ"), (-5, "x"), (i64::MAX, "é")] {
            assert_eq!(read(&issue(at, id)), Some((at, id.to_string())), "{at} {id}");
        }
    }

    #[test]
    fn an_altered_truncated_or_made_up_token_is_refused() {
        let token = issue(1_795_656_600_123, "pay_01KAXYZ0123456789ABCDEFGHJ");
        const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        for i in 0..token.len() {
            for other in ALPHABET.chars().filter(|&c| c != token.as_bytes()[i] as char) {
                let mut altered = token.clone();
                altered.replace_range(i..i + 1, &other.to_string());
                assert_eq!(read(&altered), None, "{altered}");
            }
        }
        let longer = format!("{token}0");
        for bad in [&token[..token.len() - 1], &token[1..], longer.as_str(), "", "x", "garbage", "1:pay_x"] {
            assert_eq!(read(bad), None, "{bad}");
        }
        // One made the old way (a plain "<ms>:<id>" cursor) no longer passes.
        assert_eq!(read("1795656600123:pay_01KAXYZ0123456789ABCDEFGHJ"), None);
        // Non-ASCII where the MAC would begin.
        assert_eq!(read(&format!("{}é{}", "0".repeat(30), "0".repeat(25))), None);
    }
}
