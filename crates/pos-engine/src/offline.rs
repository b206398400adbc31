//! Offline approval rules: may a payment that could not reach the gateway be
//! approved and queued? Checked in a fixed order (the order Adyen documents:
//! enabled, brand, stored count, amount caps, entry mode), with posd's extra
//! rules where they belong; the first failing rule is the refusal.

use std::time::Duration;

/// Per-terminal offline limits. Amounts are minor units of the payment's currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflinePolicy {
    pub enabled: bool,
    /// Largest single offline payment.
    pub max_payment_minor: i64,
    /// Largest stored (unsent) total per currency, this payment included.
    pub max_total_minor: i64,
    /// Most stored payments, this one included.
    pub max_payments: u32,
    /// Most stored payments per card (by the reader's card fingerprint), this one included.
    pub max_per_card: u32,
    /// Offline only if the gateway was reached within this long.
    pub readiness: Duration,
    /// Currencies allowed offline.
    pub currencies: Vec<String>,
    /// Brands allowed offline; empty: every brand.
    pub brands: Vec<String>,
    /// Alert when the oldest unsent payment is older than this.
    pub alert_after: Duration,
    /// Take no new offline payments while the oldest unsent one is older than this.
    pub stop_after: Duration,
    /// Expire unsent payments older than this.
    pub expire_after: Duration,
}

impl OfflinePolicy {
    /// The defaults: 100.00 per payment, 500.00 stored per currency, 500
    /// payments, 3 per card, online within 30 days; alert 12 h, stop 24 h,
    /// expire 72 h. `currency` is the terminal's (2-decimal amounts assumed
    /// for the caps; configure others explicitly).
    pub fn defaults_for(currency: &str) -> Self {
        Self {
            enabled: true,
            max_payment_minor: 10_000,
            max_total_minor: 50_000,
            max_payments: 500,
            max_per_card: 3,
            readiness: Duration::from_secs(30 * 24 * 3600),
            currencies: vec![currency.to_string()],
            brands: Vec::new(),
            alert_after: Duration::from_secs(12 * 3600),
            stop_after: Duration::from_secs(24 * 3600),
            expire_after: Duration::from_secs(72 * 3600),
        }
    }
}

/// How the card was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Chip,
    Contactless,
    Swipe,
    Manual,
    Unknown,
}

/// The payment asking for offline approval.
#[derive(Debug, Clone)]
pub struct OfflineCandidate<'a> {
    pub amount_minor: i64,
    pub currency: &'a str,
    pub brand: &'a str,
    pub entry: Entry,
    pub fallback: bool,
    pub cashback_minor: i64,
    pub refund: bool,
    /// True when the reader delivered encrypted card data.
    pub card_data: bool,
    /// True when the reader gave a card fingerprint (needed for the per-card limit).
    pub card_identified: bool,
}

/// What is already stored, as seen when the candidate asks.
#[derive(Debug, Clone, Default)]
pub struct QueueState {
    pub count: u32,
    /// Unsent total in the candidate's currency.
    pub total_minor: i64,
    /// Unsent payments with the candidate's card fingerprint.
    pub same_card: u32,
    pub oldest_age: Option<Duration>,
    /// Time since the gateway was last reached; `None`: never.
    pub since_online: Option<Duration>,
}

/// Why a payment may not be approved offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: String) -> Result<(), Refusal> {
    Err(Refusal { code, message })
}

/// The offline decision for one payment.
pub fn eligibility(p: &OfflinePolicy, c: &OfflineCandidate<'_>, q: &QueueState) -> Result<(), Refusal> {
    if !p.enabled {
        return refuse("offline_disabled", "Offline payments are switched off for this terminal".into());
    }
    if c.refund {
        return refuse("refund_offline", "Refunds need the gateway; they are never taken offline".into());
    }
    match q.since_online {
        None => {
            return refuse(
                "offline_not_ready",
                "This terminal has never reached the gateway, so it may not take payments offline".into(),
            );
        }
        Some(age) if age > p.readiness => {
            return refuse(
                "offline_not_ready",
                format!(
                    "The gateway was last reached {} days ago; offline needs contact within {} days",
                    age.as_secs() / 86_400,
                    p.readiness.as_secs() / 86_400
                ),
            );
        }
        Some(_) => {}
    }
    if !c.card_data {
        return refuse(
            "card_data_unavailable",
            "The reader delivered no encrypted card data (keys unavailable)".into(),
        );
    }
    if !c.card_identified {
        return refuse(
            "card_unidentified",
            "The reader gave no card fingerprint, so the per-card limit cannot be applied".into(),
        );
    }
    if !p.currencies.iter().any(|x| x == c.currency) {
        return refuse(
            "currency_not_allowed",
            format!("{} is not allowed offline (allowed: {})", c.currency, p.currencies.join(", ")),
        );
    }
    if !p.brands.is_empty() && !p.brands.iter().any(|b| b.eq_ignore_ascii_case(c.brand)) {
        return refuse("brand_not_allowed", format!("{} cards are not accepted offline", c.brand));
    }
    if q.count + 1 > p.max_payments {
        return refuse("store_full_count", format!("The offline store holds {} payments, its maximum", q.count));
    }
    if c.amount_minor > p.max_payment_minor {
        return refuse(
            "amount_over_limit",
            format!("{} is over the offline limit of {} per payment", c.amount_minor, p.max_payment_minor),
        );
    }
    if q.total_minor + c.amount_minor > p.max_total_minor {
        return refuse(
            "store_full_total",
            format!(
                "The offline store holds {} {}; this payment would pass the limit of {}",
                q.total_minor, c.currency, p.max_total_minor
            ),
        );
    }
    if q.same_card + 1 > p.max_per_card {
        return refuse("card_limit", format!("This card already has {} payments waiting offline", q.same_card));
    }
    match c.entry {
        Entry::Chip | Entry::Contactless => {}
        Entry::Swipe | Entry::Manual | Entry::Unknown => {
            return refuse("entry_mode_not_allowed", "Only chip and contactless payments may be taken offline".into());
        }
    }
    if c.fallback {
        return refuse("fallback_not_allowed", "A chip card that fell back to swipe may not be taken offline".into());
    }
    if c.cashback_minor > 0 {
        return refuse("cashback_not_allowed", "Cashback is never given offline".into());
    }
    if q.oldest_age.is_some_and(|a| a > p.stop_after) {
        return refuse(
            "queue_too_old",
            format!(
                "Offline payments have waited more than {} hours to be forwarded; no new ones until they are",
                p.stop_after.as_secs() / 3600
            ),
        );
    }
    Ok(())
}

/// How urgent the oldest unsent payment has become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AgeLevel {
    Fresh,
    Alert,
    Stop,
    Expire,
}

pub fn age_level(p: &OfflinePolicy, age: Duration) -> AgeLevel {
    if age > p.expire_after {
        AgeLevel::Expire
    } else if age > p.stop_after {
        AgeLevel::Stop
    } else if age > p.alert_after {
        AgeLevel::Alert
    } else {
        AgeLevel::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OfflinePolicy {
        OfflinePolicy::defaults_for("EUR")
    }

    fn candidate() -> OfflineCandidate<'static> {
        OfflineCandidate {
            amount_minor: 2000,
            currency: "EUR",
            brand: "visa",
            entry: Entry::Chip,
            fallback: false,
            cashback_minor: 0,
            refund: false,
            card_data: true,
            card_identified: true,
        }
    }

    fn queue() -> QueueState {
        QueueState { since_online: Some(Duration::from_secs(60)), ..Default::default() }
    }

    fn code(r: Result<(), Refusal>) -> &'static str {
        r.err().map(|r| r.code).unwrap_or("ok")
    }

    #[test]
    fn defaults_allow_a_small_chip_payment() {
        assert_eq!(code(eligibility(&policy(), &candidate(), &queue())), "ok");
    }

    #[test]
    fn each_rule_has_its_own_code() {
        let p = policy();
        let c = candidate();
        let q = queue();
        assert_eq!(code(eligibility(&OfflinePolicy { enabled: false, ..p.clone() }, &c, &q)), "offline_disabled");
        assert_eq!(code(eligibility(&p, &OfflineCandidate { refund: true, ..c.clone() }, &q)), "refund_offline");
        assert_eq!(code(eligibility(&p, &c, &QueueState { since_online: None, ..q.clone() })), "offline_not_ready");
        let stale = QueueState { since_online: Some(Duration::from_secs(31 * 86_400)), ..q.clone() };
        assert_eq!(code(eligibility(&p, &c, &stale)), "offline_not_ready");
        assert_eq!(
            code(eligibility(&p, &OfflineCandidate { card_data: false, ..c.clone() }, &q)),
            "card_data_unavailable"
        );
        assert_eq!(
            code(eligibility(&p, &OfflineCandidate { card_identified: false, ..c.clone() }, &q)),
            "card_unidentified"
        );
        assert_eq!(
            code(eligibility(&p, &OfflineCandidate { currency: "USD", ..c.clone() }, &q)),
            "currency_not_allowed"
        );
        let visa_only = OfflinePolicy { brands: vec!["mastercard".into()], ..p.clone() };
        assert_eq!(code(eligibility(&visa_only, &c, &q)), "brand_not_allowed");
        assert_eq!(code(eligibility(&p, &c, &QueueState { count: 500, ..q.clone() })), "store_full_count");
        assert_eq!(
            code(eligibility(&p, &OfflineCandidate { amount_minor: 10_001, ..c.clone() }, &q)),
            "amount_over_limit"
        );
        assert_eq!(
            code(eligibility(&p, &OfflineCandidate { amount_minor: 10_000, ..c.clone() }, &q)),
            "ok",
            "100.00 itself is allowed"
        );
        assert_eq!(code(eligibility(&p, &c, &QueueState { total_minor: 48_001, ..q.clone() })), "store_full_total");
        assert_eq!(
            code(eligibility(&p, &c, &QueueState { total_minor: 48_000, ..q.clone() })),
            "ok",
            "500.00 in total is allowed"
        );
        assert_eq!(code(eligibility(&p, &c, &QueueState { same_card: 3, ..q.clone() })), "card_limit");
        for entry in [Entry::Swipe, Entry::Manual] {
            assert_eq!(code(eligibility(&p, &OfflineCandidate { entry, ..c.clone() }, &q)), "entry_mode_not_allowed");
        }
        assert_eq!(code(eligibility(&p, &OfflineCandidate { entry: Entry::Contactless, ..c.clone() }, &q)), "ok");
        assert_eq!(
            code(eligibility(&p, &OfflineCandidate { fallback: true, ..c.clone() }, &q)),
            "fallback_not_allowed"
        );
        assert_eq!(
            code(eligibility(&p, &OfflineCandidate { cashback_minor: 500, ..c.clone() }, &q)),
            "cashback_not_allowed"
        );
        let old = QueueState { oldest_age: Some(Duration::from_secs(25 * 3600)), ..q.clone() };
        assert_eq!(code(eligibility(&p, &c, &old)), "queue_too_old");
    }

    #[test]
    fn the_first_failing_rule_in_the_documented_order_wins() {
        // Disabled beats everything; count beats amount; amount beats entry mode.
        let c = OfflineCandidate { amount_minor: 1_000_000, entry: Entry::Swipe, ..candidate() };
        let full = QueueState { count: 500, ..queue() };
        assert_eq!(code(eligibility(&OfflinePolicy { enabled: false, ..policy() }, &c, &full)), "offline_disabled");
        assert_eq!(code(eligibility(&policy(), &c, &full)), "store_full_count");
        assert_eq!(code(eligibility(&policy(), &c, &queue())), "amount_over_limit");
    }

    #[test]
    fn ageing_levels() {
        let p = policy();
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(age_level(&p, h(1)), AgeLevel::Fresh);
        assert_eq!(age_level(&p, h(13)), AgeLevel::Alert);
        assert_eq!(age_level(&p, h(25)), AgeLevel::Stop);
        assert_eq!(age_level(&p, h(73)), AgeLevel::Expire);
    }
}
