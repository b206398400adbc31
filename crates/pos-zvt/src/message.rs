//! Every ZVT message as a typed value, decoded from and encoded to an APDU
//! (`CLASS INSTR LEN data`, the same on serial and TCP).

use pos_link::apdu;
use thiserror::Error;

use crate::bcd;
use crate::bmp::{Bmp, Bmps, FieldTooLong, latin1};

/// The ZVT password, 3 bytes BCD (`12 34 56` by default).
pub type Password = [u8; 3];

/// The password every terminal and test tool uses unless configured otherwise.
pub const DEFAULT_PASSWORD: Password = [0x12, 0x34, 0x56];

/// The password from its six digits.
pub fn password(digits: u32) -> Option<Password> {
    bcd::encode(u64::from(digits), 3).map(|b| [b[0], b[1], b[2]])
}

/// Registration config byte bits.
pub mod config {
    /// The ECR prints payment receipts (the terminal sends them as print lines).
    pub const ECR_PRINTS_PAYMENT: u8 = 0x02;
    /// The ECR prints administration receipts.
    pub const ECR_PRINTS_ADMIN: u8 = 0x04;
    /// The terminal sends intermediate status (04 FF).
    pub const INTERMEDIATE_STATUS: u8 = 0x08;
    /// The ECR controls payment (amount input at the terminal is blocked).
    pub const ECR_CONTROLS_PAYMENT: u8 = 0x10;
    /// The ECR controls administration.
    pub const ECR_CONTROLS_ADMIN: u8 = 0x20;
    /// Print via 06 D1 print lines.
    pub const PRINT_LINES: u8 = 0x80;
}

/// 06 00.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub password: Password,
    pub config: u8,
    /// The currency as sent: 2 bytes BCD of the ISO 4217 number.
    pub currency: Option<[u8; 2]>,
    /// Service byte (03) and TLV container (06).
    pub fields: Bmps,
}

/// A command that starts with the password, followed by BMP fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithPassword {
    pub password: Password,
    pub fields: Bmps,
}

/// 04 FF: `<status> [<timeout>] [06 TLV]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intermediate {
    pub status: u8,
    /// Minutes (BCD) until T4 runs out, when the terminal says so.
    pub timeout: Option<u8>,
    pub fields: Bmps,
}

/// 06 0F. After Registration (and Diagnosis) the terminal may open the data
/// with its software version (LLLVAR) and a status byte; otherwise it is a
/// run of BMP fields (or none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub software: Option<(String, u8)>,
    pub fields: Bmps,
}

/// 06 1E: `<result code> [BMPs]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    pub result_code: u8,
    pub fields: Bmps,
}

/// 06 D1: `<attribute> <text>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrintLine {
    pub attribute: u8,
    pub text: String,
}

impl PrintLine {
    /// Attribute with the high bit set (but not 0x80 itself, nor FF line
    /// feeds): the last line of the receipt.
    pub fn is_last(&self) -> bool {
        self.attribute & 0x80 != 0 && self.attribute != 0x80 && self.attribute != 0xFF
    }
}

/// 06 C0: `<timeout> [BMPs]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadCard {
    pub timeout: u8,
    pub fields: Bmps,
}

/// An APDU posd does not interpret (vendor-specific commands, an `80 00`
/// carrying data), kept byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    pub class: u8,
    pub instr: u8,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 06 00, ECR -> PT.
    Registration(Registration),
    /// 06 01: amount (04), currency (49), payment type (19), timeout (01) ...
    Authorization(Bmps),
    /// 06 02.
    LogOff,
    /// 06 20: reprint / recover the last receipt.
    RepeatReceipt(WithPassword),
    /// 06 22.
    PreAuthorization(Bmps),
    /// 06 23.
    PartialReversal(Bmps),
    /// 06 25.
    BookTotal(Bmps),
    /// 06 30: receipt number (87) of the payment to reverse.
    Reversal(WithPassword),
    /// 06 31.
    Refund(WithPassword),
    /// 06 50.
    EndOfDay(WithPassword),
    /// 06 70.
    Diagnosis(Bmps),
    /// 06 B0, ECR -> PT.
    AbortRequest,
    /// 06 C0.
    ReadCard(ReadCard),
    /// 05 01.
    StatusEnquiry(WithPassword),
    /// 04 FF, PT -> ECR.
    Intermediate(Intermediate),
    /// 04 0F, PT -> ECR: the result of a transaction.
    StatusInformation(Bmps),
    /// 06 0F, PT -> ECR.
    Completion(Completion),
    /// 06 1E, PT -> ECR.
    Abort(Abort),
    /// 06 D1, PT -> ECR.
    PrintLine(PrintLine),
    /// 06 D3, PT -> ECR: TLV container with the receipt's lines.
    PrintTextBlock(Bmps),
    /// 80 00 00.
    Ack,
    /// 84 xx 00 (`84 00` is positive too; `84 9C` asks to repeat in 2 s).
    Nak(u8),
    Vendor(Raw),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error(transparent)]
    Apdu(#[from] apdu::ApduError),
    #[error("{command}: {what}")]
    Malformed { command: &'static str, what: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error(transparent)]
    Field(#[from] FieldTooLong),
    #[error(transparent)]
    Apdu(#[from] apdu::ApduError),
    #[error("{0}")]
    Invalid(String),
}

fn take_password<'a>(command: &'static str, data: &'a [u8]) -> Result<(Password, &'a [u8]), DecodeError> {
    match data {
        [a, b, c, rest @ ..] => Ok(([*a, *b, *c], rest)),
        _ => Err(DecodeError::Malformed { command, what: format!("{} bytes, the password needs 3", data.len()) }),
    }
}

impl Message {
    /// Decodes one whole APDU.
    pub fn decode(apdu_bytes: &[u8]) -> Result<Message, DecodeError> {
        let (h, data) = apdu::parse(apdu_bytes)?;
        let bmps = || Bmps::decode(data);
        let with_password = |command| {
            take_password(command, data).map(|(password, rest)| WithPassword { password, fields: Bmps::decode(rest) })
        };
        Ok(match (h.class, h.instr) {
            (0x06, 0x00) => {
                let (password, rest) = take_password("Registration", data)?;
                let Some((&config, rest)) = rest.split_first() else {
                    return Err(DecodeError::Malformed { command: "Registration", what: "no config byte".into() });
                };
                // The currency is two bare bytes before the optional BMPs 03
                // and 06; bytes that read completely as those BMPs are BMPs.
                let bmps_only = matches!(rest.first(), Some(0x03 | 0x06)) && Bmps::decode(rest).unparsed.is_none();
                let (currency, rest) = match rest {
                    [a, b, tail @ ..] if !bmps_only => (Some([*a, *b]), tail),
                    _ => (None, rest),
                };
                Message::Registration(Registration { password, config, currency, fields: Bmps::decode(rest) })
            }
            (0x06, 0x01) => Message::Authorization(bmps()),
            (0x06, 0x02) if data.is_empty() => Message::LogOff,
            (0x06, 0x20) => Message::RepeatReceipt(with_password("Repeat Receipt")?),
            (0x06, 0x22) => Message::PreAuthorization(bmps()),
            (0x06, 0x23) => Message::PartialReversal(bmps()),
            (0x06, 0x25) => Message::BookTotal(bmps()),
            (0x06, 0x30) => Message::Reversal(with_password("Reversal")?),
            (0x06, 0x31) => Message::Refund(with_password("Refund")?),
            (0x06, 0x50) => Message::EndOfDay(with_password("End-of-day")?),
            (0x06, 0x70) => Message::Diagnosis(bmps()),
            (0x06, 0xB0) if data.is_empty() => Message::AbortRequest,
            (0x06, 0xC0) => match data.split_first() {
                Some((&timeout, rest)) => Message::ReadCard(ReadCard { timeout, fields: Bmps::decode(rest) }),
                None => return Err(DecodeError::Malformed { command: "Read Card", what: "no timeout byte".into() }),
            },
            (0x05, 0x01) => Message::StatusEnquiry(with_password("Status Enquiry")?),
            (0x04, 0xFF) => match data.split_first() {
                Some((&status, rest)) => {
                    let (timeout, rest) = match rest.split_first() {
                        Some((&t, tail)) => (Some(t), tail),
                        None => (None, rest),
                    };
                    Message::Intermediate(Intermediate { status, timeout, fields: Bmps::decode(rest) })
                }
                None => {
                    return Err(DecodeError::Malformed {
                        command: "Intermediate status",
                        what: "no status byte".into(),
                    });
                }
            },
            (0x04, 0x0F) => Message::StatusInformation(bmps()),
            (0x06, 0x0F) => {
                let software = bcd::read_var_prefix(data, 3).and_then(|n| data.get(3 + n).map(|&s| (n, s)));
                match software {
                    Some((n, status)) => Message::Completion(Completion {
                        software: Some((latin1(&data[3..3 + n]), status)),
                        fields: Bmps::decode(&data[4 + n..]),
                    }),
                    None => Message::Completion(Completion { software: None, fields: bmps() }),
                }
            }
            (0x06, 0x1E) => match data.split_first() {
                Some((&result_code, rest)) => Message::Abort(Abort { result_code, fields: Bmps::decode(rest) }),
                None => return Err(DecodeError::Malformed { command: "Abort", what: "no result code".into() }),
            },
            (0x06, 0xD1) => match data.split_first() {
                Some((&attribute, text)) => Message::PrintLine(PrintLine { attribute, text: latin1(text) }),
                None => return Err(DecodeError::Malformed { command: "Print Line", what: "no attribute".into() }),
            },
            (0x06, 0xD3) => Message::PrintTextBlock(bmps()),
            (0x80, 0x00) if data.is_empty() => Message::Ack,
            (0x84, code) if data.is_empty() => Message::Nak(code),
            (class, instr) => Message::Vendor(Raw { class, instr, data: data.to_vec() }),
        })
    }

    /// Encodes to one APDU.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut data = Vec::new();
        let bmps = |data: &mut Vec<u8>, f: &Bmps| f.encode_into(data);
        let (class, instr) = match self {
            Message::Registration(r) => {
                data.extend(r.password);
                data.push(r.config);
                if let Some(c) = r.currency {
                    data.extend(c);
                }
                bmps(&mut data, &r.fields)?;
                // ZVT cannot tell a currency 03xx/06xx from the BMPs 03 and 06
                // that may follow it; refuse what would read differently.
                let bytes = apdu::build(0x06, 0x00, &data)?;
                if Message::decode(&bytes).ok().as_ref() != Some(self) {
                    return Err(EncodeError::Invalid(format!(
                        "registration currency {:02X?} would read as BMP fields",
                        r.currency.unwrap_or_default()
                    )));
                }
                return Ok(bytes);
            }
            Message::Authorization(f) => (bmps(&mut data, f).map(|_| 0x06)?, 0x01),
            Message::LogOff => (0x06, 0x02),
            Message::RepeatReceipt(w) => (push_with_password(&mut data, w).map(|_| 0x06)?, 0x20),
            Message::PreAuthorization(f) => (bmps(&mut data, f).map(|_| 0x06)?, 0x22),
            Message::PartialReversal(f) => (bmps(&mut data, f).map(|_| 0x06)?, 0x23),
            Message::BookTotal(f) => (bmps(&mut data, f).map(|_| 0x06)?, 0x25),
            Message::Reversal(w) => (push_with_password(&mut data, w).map(|_| 0x06)?, 0x30),
            Message::Refund(w) => (push_with_password(&mut data, w).map(|_| 0x06)?, 0x31),
            Message::EndOfDay(w) => (push_with_password(&mut data, w).map(|_| 0x06)?, 0x50),
            Message::Diagnosis(f) => (bmps(&mut data, f).map(|_| 0x06)?, 0x70),
            Message::AbortRequest => (0x06, 0xB0),
            Message::ReadCard(r) => {
                data.push(r.timeout);
                bmps(&mut data, &r.fields)?;
                (0x06, 0xC0)
            }
            Message::StatusEnquiry(w) => (push_with_password(&mut data, w).map(|_| 0x05)?, 0x01),
            Message::Intermediate(i) => {
                data.push(i.status);
                match i.timeout {
                    Some(t) => data.push(t),
                    None if !i.fields.fields.is_empty() || i.fields.unparsed.is_some() => {
                        return Err(EncodeError::Invalid("intermediate status fields need a timeout byte".into()));
                    }
                    None => {}
                }
                bmps(&mut data, &i.fields)?;
                (0x04, 0xFF)
            }
            Message::StatusInformation(f) => (bmps(&mut data, f).map(|_| 0x04)?, 0x0F),
            Message::Completion(c) => {
                if let Some((version, status)) = &c.software {
                    let bytes: Vec<u8> = version.chars().map(|ch| u8::try_from(ch).unwrap_or(b'?')).collect();
                    data.extend(bcd::var_prefix(bytes.len(), 3).ok_or_else(|| {
                        EncodeError::Invalid(format!("software version of {} bytes is too long", bytes.len()))
                    })?);
                    data.extend(bytes);
                    data.push(*status);
                } else if data_starts_like_software(&c.fields) {
                    return Err(EncodeError::Invalid("completion fields would read as a software version".into()));
                }
                bmps(&mut data, &c.fields)?;
                (0x06, 0x0F)
            }
            Message::Abort(a) => {
                data.push(a.result_code);
                bmps(&mut data, &a.fields)?;
                (0x06, 0x1E)
            }
            Message::PrintLine(p) => {
                data.push(p.attribute);
                data.extend(p.text.chars().map(|ch| u8::try_from(ch).unwrap_or(b'?')));
                (0x06, 0xD1)
            }
            Message::PrintTextBlock(f) => (bmps(&mut data, f).map(|_| 0x06)?, 0xD3),
            Message::Ack => (0x80, 0x00),
            Message::Nak(code) => (0x84, *code),
            Message::Vendor(r) => {
                data.extend_from_slice(&r.data);
                (r.class, r.instr)
            }
        };
        Ok(apdu::build(class, instr, &data)?)
    }

    /// CLASS and INSTR, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Registration(_) => "Registration 06 00",
            Message::Authorization(_) => "Authorization 06 01",
            Message::LogOff => "Log-off 06 02",
            Message::RepeatReceipt(_) => "Repeat Receipt 06 20",
            Message::PreAuthorization(_) => "Pre-authorization 06 22",
            Message::PartialReversal(_) => "Partial reversal 06 23",
            Message::BookTotal(_) => "Book total 06 25",
            Message::Reversal(_) => "Reversal 06 30",
            Message::Refund(_) => "Refund 06 31",
            Message::EndOfDay(_) => "End-of-day 06 50",
            Message::Diagnosis(_) => "Diagnosis 06 70",
            Message::AbortRequest => "Abort 06 B0",
            Message::ReadCard(_) => "Read card 06 C0",
            Message::StatusEnquiry(_) => "Status Enquiry 05 01",
            Message::Intermediate(_) => "Intermediate status 04 FF",
            Message::StatusInformation(_) => "Status-Information 04 0F",
            Message::Completion(_) => "Completion 06 0F",
            Message::Abort(_) => "Abort 06 1E",
            Message::PrintLine(_) => "Print Line 06 D1",
            Message::PrintTextBlock(_) => "Print Text Block 06 D3",
            Message::Ack => "Ack 80 00",
            Message::Nak(_) => "Nak 84",
            Message::Vendor(_) => "vendor-specific",
        }
    }
}

fn push_with_password(data: &mut Vec<u8>, w: &WithPassword) -> Result<(), FieldTooLong> {
    data.extend(w.password);
    w.fields.encode_into(data)
}

/// Whether fields encoded without a software version would decode as one
/// (an F0-F9 tag first): such a message cannot be told apart, so it is refused.
fn data_starts_like_software(f: &Bmps) -> bool {
    let mut probe = Vec::new();
    if f.encode_into(&mut probe).is_err() {
        return false;
    }
    bcd::read_var_prefix(&probe, 3).is_some_and(|n| probe.len() > 3 + n)
}

/// Builders for the commands posd sends.
impl Message {
    /// Registration: `config` bits from [`config`], the currency's ISO 4217
    /// number, and the list of commands the ECR permits (TLV 26) when any.
    pub fn registration(password: Password, config: u8, currency: u16, permit: &[[u8; 2]]) -> Message {
        let cur = bcd::encode(u64::from(currency), 2).expect("ISO 4217 numbers have 3 digits");
        let mut fields = Bmps::default();
        if !permit.is_empty() {
            let tlv = Bmp::tlv(&[crate::tlv::permitted_commands(permit)]).expect("a short list");
            fields.fields.push(tlv);
        }
        Message::Registration(Registration { password, config, currency: Some([cur[0], cur[1]]), fields })
    }

    /// Authorization for `amount` minor units.
    pub fn authorization(amount: u64, currency: u16) -> Message {
        Message::Authorization([Bmp::amount(amount), Bmp::currency(currency)].into_iter().collect())
    }

    pub fn with_password(password: Password, fields: impl IntoIterator<Item = Bmp>) -> WithPassword {
        WithPassword { password, fields: fields.into_iter().collect() }
    }
}
