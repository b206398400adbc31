//! Texts for result codes (BMP 27, Abort 06 1E) and intermediate status
//! codes (04 FF), for logs and the register.

/// The result code 0x51 that terminals send when they must be initialised
/// (parameters loaded) before they take payments.
pub const INITIALISATION_REQUIRED: u8 = 0x51;

/// A clear text for a result code.
pub fn result_text(rc: u8) -> String {
    let text = match rc {
        0x00 => "approved",
        0x05 => "declined by the card issuer (do not honour)",
        0x33 => "card expired (card issuer)",
        0x51 => "the terminal needs initialisation before it takes payments",
        0x55 => "incorrect PIN",
        0x61 => "amount above the card's limit",
        0x64 => "card not readable",
        0x65 => "card data not present",
        0x66 => "processing error at the terminal",
        0x67 => "function not permitted for debit cards",
        0x68 => "function not permitted for credit cards",
        0x6A => "turnover file full",
        0x6B => "function deactivated (terminal not registered)",
        0x6C => "canceled at the terminal (abort key or timeout)",
        0x6E => "card is blocked",
        0x6F => "wrong currency",
        0x71 => "credit not sufficient",
        0x72 => "chip error",
        0x73 => "card data incorrect",
        0x77 => "end-of-day batch not possible",
        0x78 => "card expired",
        0x79 => "card not yet valid",
        0x7A => "card unknown",
        0x7D => "communication error (the terminal's network module does not answer)",
        0x83 => "function not possible",
        0x85 => "key missing",
        0x89 => "PIN pad defective",
        0x9A => "ZVT protocol error",
        0x9B => "error from dial-up / communication fault",
        0x9C => "please wait",
        0xA0 => "receiver not ready",
        0xA1 => "remote station does not respond",
        0xA3 => "no connection",
        0xB1 => "memory full",
        0xB2 => "merchant journal full",
        0xB4 => "already reversed",
        0xB5 => "reversal not possible",
        0xB7 => "pre-authorisation incorrect (amount too high) or amount wrong",
        0xB8 => "error in pre-authorisation",
        0xBF => "voltage supply too low",
        0xC0 => "card locking mechanism defective",
        0xC1 => "merchant card locked",
        0xC2 => "diagnosis required",
        0xC3 => "maximum amount exceeded",
        0xC4 => "card profile invalid",
        0xC5 => "payment method not supported",
        0xC6 => "currency not applicable",
        0xC8 => "amount too small",
        0xC9 => "maximum transaction amount too small",
        0xCB => "function only allowed in euro",
        0xCC => "printer not ready",
        0xCD => "cashback not possible",
        0xD2 => "function not permitted for service cards",
        0xDC => "card inserted",
        0xDD => "error during card eject",
        0xDE => "error during card lock",
        0xE0 => "function not available",
        0xFF => "system error",
        0x01..=0x63 => return format!("declined by the card issuer or network (code {rc:02X})"),
        _ => return format!("terminal error {rc:02X}"),
    };
    text.to_string()
}

/// A clear text for an intermediate status code.
pub fn intermediate_text(code: u8) -> String {
    let text = match code {
        0x00 => "waiting for amount confirmation",
        0x01 | 0x02 => "please watch the PIN pad",
        0x03 => "not accepted",
        0x04 => "waiting for the card issuer's answer",
        0x05 => "sending an automatic reversal",
        0x06 => "sending post-bookings",
        0x07 => "card not admitted",
        0x08 => "card unknown",
        0x09 => "card expired",
        0x0A => "insert card",
        0x0B => "please remove the card",
        0x0C => "card not readable",
        0x0D => "processing error",
        0x0E | 0x17 => "please wait",
        0x0F => "automatic end-of-day batch",
        0x10 => "invalid card",
        0x11 => "balance display",
        0x12 => "system malfunction",
        0x13 => "payment not possible",
        0x14 => "credit not sufficient",
        0x15 => "incorrect PIN",
        0x16 => "limit not sufficient",
        0x18 => "PIN try limit exceeded",
        0x19 => "card data incorrect",
        0x1A => "service mode",
        0x1B => "approved, please fill up",
        0x1C => "approved, please take the goods",
        0x1D => "declined",
        0x41 => "please insert, tap or swipe the card",
        0x42 => "please enter the PIN",
        _ => return format!("terminal status {code:02X}"),
    };
    text.to_string()
}

/// What the customer is doing, from an intermediate status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    WaitingForCard,
    Pin,
    Authorizing,
    Other,
}

pub fn progress(code: u8) -> Progress {
    match code {
        0x0A | 0x41 => Progress::WaitingForCard,
        0x01 | 0x02 | 0x15 | 0x42 => Progress::Pin,
        0x04 | 0x0E | 0x17 => Progress::Authorizing,
        _ => Progress::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_text() {
        for rc in 0..=255u8 {
            assert!(!result_text(rc).is_empty());
            assert!(!intermediate_text(rc).is_empty());
        }
        assert!(result_text(INITIALISATION_REQUIRED).contains("initialisation"));
        assert_eq!(result_text(0x6C), "canceled at the terminal (abort key or timeout)");
        assert_eq!(result_text(0x42), "declined by the card issuer or network (code 42)");
    }
}
