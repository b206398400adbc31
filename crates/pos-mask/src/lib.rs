//! Key-free card data hygiene, shared by posd, the simulators and the tests.
//! Nothing here holds or needs a key: the crypto lives in `pos-cardcrypt`,
//! with the reader simulator and the gateway, and the packaged posd does
//! not link it.
//!
//! # Layout
//! - `pan`: the one masking rule for card numbers ([`mask_pan`],
//!   [`is_well_masked`], [`well_masked`]) and [`luhn_valid`].
//! - `text`: [`scrub`], the one way text from a device (reader, payment
//!   terminal, printer, gateway) is made safe to store, log, stream or print.
//! - `id`: [`crockford32`] and [`crockford32_decode`], the alphabet of every
//!   id posd and the gateway make up (by the `data-encoding` crate).
//!
//! # The one masking rule
//! Of a card number at most the first 6 and the last 4 digits are shown,
//! every digit between is a `*` ([`mask_pan`]).
//! - A number of fewer than [`PAN_MIN_DIGITS`] (13) digits shows no digit.
//! - Other characters are not part of a number: [`mask_pan`] drops them;
//!   [`scrub`] takes digit groups joined by up to [`MAX_SEPARATORS`] spaces
//!   or hyphens as one number and drops those separators.
//! - A card number a device says it masked (a reader's `masked_pan`, a ZVT
//!   terminal's BMP 22) is kept only in exactly that form ([`is_well_masked`]:
//!   13 to 19 characters, 6 ASCII digits, `*`s, 4 ASCII digits). A whole card
//!   number sent unmasked, bare or grouped, is masked as [`scrub`] masks it;
//!   anything else (masked another way, middle digits shown, letters, too
//!   short, more than 19 digits, empty) shows no digit: one `*` per
//!   character, 4 to 19 of them ([`well_masked`]).

mod id;
mod pan;
mod text;

pub use id::{crockford32, crockford32_decode};
pub use pan::{PAN_MIN_DIGITS, is_well_masked, luhn_valid, mask_pan, well_masked};
#[doc(hidden)]
pub use text::digit_runs;
pub use text::{CUT_MARKER, MAX_SEPARATORS, SCRUB_LIMIT, is_digit_separator, is_unsafe_char, scrub, scrub_with_limit};
