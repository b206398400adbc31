//! Terminal receipts. Adyen writes each receipt line as one `OutputText`
//! whose text is URL-encoded `key=..&name=..&value=..` (in any order, any
//! part missing: `key=filler` is a blank line, `name=APPROVED&key=approved`
//! a line without a value). A line is decoded (`%xx`, `+` as space, bytes as
//! UTF-8), unknown parts are ignored, and its name and value go through
//! `pos_mask::scrub` before they become a [`ReceiptLine`]. A text with no
//! `key`, `name` or `value` part is another terminal's plain line: it is kept
//! whole (scrubbed) as the line's name.

use crate::codes::DocumentQualifier;
use crate::payment::{OutputText, PaymentReceipt};

/// One decoded receipt: which copy, whether the customer must sign, its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub qualifier: DocumentQualifier,
    /// `RequiredSignatureFlag`: the register must be told, and the merchant
    /// copy kept with the signature.
    pub signature_required: bool,
    pub lines: Vec<ReceiptLine>,
}

impl Receipt {
    /// Decodes every line of a `PaymentReceipt`.
    pub fn decode(receipt: &PaymentReceipt) -> Receipt {
        Receipt {
            qualifier: receipt.document_qualifier.clone(),
            signature_required: receipt.required_signature_flag,
            lines: receipt.output_content.output_text.iter().map(ReceiptLine::decode).collect(),
        }
    }
}

/// One receipt line, scrubbed: a name (left) and a value (right), either or
/// both absent (a blank line).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceiptLine {
    /// Adyen's name for the line (`txdate`, `pan`, `filler`), if any.
    pub key: Option<String>,
    pub name: Option<String>,
    pub value: Option<String>,
    /// `CharacterStyle` `Bold`.
    pub bold: bool,
}

impl ReceiptLine {
    /// Decodes one `OutputText`.
    pub fn decode(output: &OutputText) -> ReceiptLine {
        ReceiptLine { bold: output.character_style.as_deref() == Some("Bold"), ..ReceiptLine::from_text(&output.text) }
    }

    /// Decodes the text of one line.
    pub fn from_text(text: &str) -> ReceiptLine {
        let mut line = ReceiptLine::default();
        let mut structured = false;
        for (key, value) in form_pairs(text) {
            let slot = match key.as_str() {
                "key" => &mut line.key,
                "name" => &mut line.name,
                "value" => &mut line.value,
                _ => continue,
            };
            structured = true;
            if slot.is_none() {
                *slot = Some(pos_mask::scrub(&value));
            }
        }
        if !structured && !text.trim().is_empty() {
            line.name = Some(pos_mask::scrub(text));
        }
        line
    }

    /// Whether nothing is printed on this line.
    pub fn is_blank(&self) -> bool {
        self.name.as_deref().is_none_or(str::is_empty) && self.value.as_deref().is_none_or(str::is_empty)
    }
}

/// The `key=value` pairs of an URL-encoded form (`a=1&b=x+y`), decoded
/// (not scrubbed). A part without `=` is a key with an empty value.
pub fn form_pairs(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.split('&').filter(|part| !part.is_empty()).map(|part| {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        (form_decode(key), form_decode(value))
    })
}

/// `%xx` to its byte, `+` to a space; a `%` not followed by two hex digits
/// stays as it is; the bytes are read as UTF-8 (invalid sequences replaced).
pub fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match hex_pair(bytes.get(i + 1..i + 3)) {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte two hex digits stand for.
fn hex_pair(digits: Option<&[u8]>) -> Option<u8> {
    let digits = digits?;
    let hi = (digits[0] as char).to_digit(16)?;
    let lo = (digits[1] as char).to_digit(16)?;
    Some((hi * 16 + lo) as u8)
}
