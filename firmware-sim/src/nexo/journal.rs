//! The terminal's journal: every payment request by SaleID and ServiceID
//! (running, or done with the answer it got), the booked transactions by
//! POITransactionID (for reversals), and the movements since the last
//! reconciliation (for its totals). No I/O and no clock: the caller passes
//! the time stamps.

use std::collections::HashMap;

use pos_nexo::codes::{ErrorCondition, PaymentInstrumentType, TransactionType};
use pos_nexo::payment::PaymentResponse;
use pos_nexo::reconciliation::{PaymentTotals, TransactionTotals};
use pos_nexo::{Decimal, MessageHeader, TransactionIdentification};

/// A payment request's name: its SaleID and ServiceID.
pub type PaymentKey = (String, String);

/// What the journal knows of one payment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The customer is still at the terminal.
    InProgress,
    /// Done: the answer's header and body, as sent (or as they would have
    /// been, when the connection was cut).
    Done { header: MessageHeader, response: Box<PaymentResponse> },
}

/// A payment the acquirer took (Success or Partial): what a reversal and
/// the reconciliation need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booked {
    pub poi_transaction_id: String,
    /// The Sale system's id of the transaction (`SaleTransactionID`).
    pub sale_transaction_id: String,
    /// An unreferenced refund (PaymentType Refund), not a sale.
    pub refund: bool,
    pub brand: String,
    pub currency: String,
    /// Authorized, in minor units.
    pub amount: i64,
}

/// A reversal the journal took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversed {
    /// The reversal's own transaction.
    pub poi_transaction: TransactionIdentification,
    pub currency: String,
    /// In minor units.
    pub amount: i64,
}

/// One money movement of the open reconciliation period.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Movement {
    brand: String,
    currency: String,
    kind: TransactionType,
    amount: i64,
}

/// The transaction types of the totals, in the order they are listed.
const KINDS: [TransactionType; 4] =
    [TransactionType::Debit, TransactionType::Credit, TransactionType::ReverseDebit, TransactionType::ReverseCredit];

#[derive(Debug, Default)]
pub struct Journal {
    payments: HashMap<PaymentKey, Entry>,
    /// The last payment request of each SaleID (TransactionStatus without a reference).
    last: HashMap<String, String>,
    /// Booked transactions, each with the amount reversed (once at most).
    booked: Vec<(Booked, Option<i64>)>,
    /// Movements since the last SaleReconciliation.
    period: Vec<Movement>,
    transactions: u64,
    reconciliations: u64,
}

impl Journal {
    /// Whether a request of this SaleID already used this ServiceID.
    pub fn knows(&self, key: &PaymentKey) -> bool {
        self.payments.contains_key(key)
    }

    /// A payment starts.
    pub fn start(&mut self, key: PaymentKey) {
        self.last.insert(key.0.clone(), key.1.clone());
        self.payments.insert(key, Entry::InProgress);
    }

    /// A running payment is forgotten (the terminal restarted before it was booked).
    pub fn forget(&mut self, key: &PaymentKey) {
        if self.payments.get(key) == Some(&Entry::InProgress) {
            self.payments.remove(key);
        }
    }

    /// A new POITransactionID (`<tender>.<reference>`), stamped `time_stamp`.
    /// No part is a run of 13 digits or more, so nothing mistakes it for a
    /// card number.
    pub fn next_transaction(&mut self, time_stamp: &str) -> TransactionIdentification {
        self.transactions += 1;
        let n = self.transactions;
        TransactionIdentification {
            transaction_id: format!("SIMT{n:08}.{}", 881_500_000_000 + n),
            time_stamp: time_stamp.to_owned(),
        }
    }

    /// A payment ends with `response` (under `header`); `booked` when the
    /// acquirer took it.
    pub fn finish(
        &mut self,
        key: PaymentKey,
        header: MessageHeader,
        response: PaymentResponse,
        booked: Option<Booked>,
    ) {
        if let Some(b) = booked {
            let kind = if b.refund { TransactionType::Credit } else { TransactionType::Debit };
            self.period.push(Movement { brand: b.brand.clone(), currency: b.currency.clone(), kind, amount: b.amount });
            self.booked.push((b, None));
        }
        self.last.insert(key.0.clone(), key.1.clone());
        self.payments.insert(key, Entry::Done { header, response: Box::new(response) });
    }

    /// Every booked transaction, in order, with the amount reversed.
    pub fn booked(&self) -> &[(Booked, Option<i64>)] {
        &self.booked
    }

    /// What the journal knows of a payment request; `None`: never seen.
    pub fn status(&self, key: &PaymentKey) -> Option<Entry> {
        self.payments.get(key).cloned()
    }

    /// The ServiceID of the last payment request of `sale_id`.
    pub fn last_of(&self, sale_id: &str) -> Option<String> {
        self.last.get(sale_id).cloned()
    }

    /// Reverses the booked transaction `poi_transaction_id`, in full or by
    /// `amount` (in its currency), once: a second reversal, an amount above
    /// the booked one or zero is not allowed; an unknown transaction is not found.
    pub fn reverse(
        &mut self,
        poi_transaction_id: &str,
        amount: Option<Decimal>,
        time_stamp: &str,
    ) -> Result<Reversed, ErrorCondition> {
        let (booked, reversed) = self
            .booked
            .iter_mut()
            .find(|(b, _)| b.poi_transaction_id == poi_transaction_id)
            .ok_or(ErrorCondition::NotFound)?;
        if reversed.is_some() {
            return Err(ErrorCondition::NotAllowed);
        }
        let amount = match amount {
            None => booked.amount,
            Some(a) => a.to_minor(&booked.currency).map_err(|_| ErrorCondition::MessageFormat)?,
        };
        if amount <= 0 || amount > booked.amount {
            return Err(ErrorCondition::NotAllowed);
        }
        *reversed = Some(amount);
        let kind = if booked.refund { TransactionType::ReverseCredit } else { TransactionType::ReverseDebit };
        let movement = Movement { brand: booked.brand.clone(), currency: booked.currency.clone(), kind, amount };
        let currency = booked.currency.clone();
        self.period.push(movement);
        Ok(Reversed { poi_transaction: self.next_transaction(time_stamp), currency, amount })
    }

    /// The totals per brand and currency of the open period, and its
    /// POIReconciliationID; `close` ends the period (SaleReconciliation), so
    /// the next totals start from nothing.
    pub fn reconcile(&mut self, close: bool) -> (String, Vec<TransactionTotals>) {
        let mut groups: Vec<(&str, &str, Vec<&Movement>)> = Vec::new();
        for m in &self.period {
            match groups.iter_mut().find(|(brand, currency, _)| *brand == m.brand && *currency == m.currency) {
                Some((_, _, of)) => of.push(m),
                None => groups.push((m.brand.as_str(), m.currency.as_str(), vec![m])),
            }
        }
        let totals = groups
            .into_iter()
            .map(|(brand, currency, movements)| TransactionTotals {
                payment_instrument_type: Some(PaymentInstrumentType::Card),
                card_brand: Some(brand.to_owned()),
                payment_currency: Some(currency.to_owned()),
                payment_totals: KINDS
                    .iter()
                    .filter_map(|kind| {
                        let of: Vec<i64> = movements.iter().filter(|m| m.kind == *kind).map(|m| m.amount).collect();
                        (!of.is_empty()).then(|| PaymentTotals {
                            transaction_type: kind.clone(),
                            transaction_count: of.len() as u64,
                            transaction_amount: Decimal::from_minor(of.iter().sum(), currency).unwrap_or_default(),
                        })
                    })
                    .collect(),
                ..TransactionTotals::default()
            })
            .collect();
        let id = (self.reconciliations + 1).to_string();
        if close {
            self.reconciliations += 1;
            self.period.clear();
        }
        (id, totals)
    }

    /// Payment requests known, and movements in the open period.
    pub fn counts(&self) -> (usize, usize) {
        (self.payments.len(), self.period.len())
    }
}
