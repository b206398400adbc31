//! Scenario files: what the customer and the devices of one lane do,
//! payment by payment, with faults at named steps, and what posd is expected
//! to make of it. See `firmware-sim/README.md` for the format; the library is
//! in `firmware-sim/scenarios/`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::reader::{CardProfile, Customer, Fault, PinOutcome, Step};
use crate::zvt::{Plan, Scenario as ZvtOutcome, Step as ZvtStep};

/// The card device a scenario is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Native,
    Zvt,
    /// A nexo terminal (`firmware-sim nexo --scenario FILE`, or `firmware-sim lane --reader nexo`).
    Nexo,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// What happens, in a sentence or two, for the technician.
    pub description: String,
    /// The failure cases it covers, by reference (e.g. "offline-payments.md case 3").
    #[serde(default)]
    pub covers: Vec<String>,
    pub device: Device,
    /// The payments, in order; later payments follow the lane's defaults.
    #[serde(default, rename = "payment")]
    pub payments: Vec<PaymentStep>,
    /// How the card device is set up, applied when the lane starts.
    #[serde(default)]
    pub setup: DeviceSetup,
    #[serde(default)]
    pub printer: PrinterSetup,
    /// posd's surroundings the scenario needs (for the test runner and the technician).
    #[serde(default)]
    pub posd: PosdSetup,
    /// What posd must show for the last payment described (earlier ones set
    /// the stage, e.g. a good sale before the one that fails).
    pub expect: Expect,
}

/// One payment as the customer and the device live it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentStep {
    /// A named test card (see `firmware-sim lane --help`, `card` command).
    pub card: Option<String>,
    /// Milliseconds until the card is presented; absent: the lane's default;
    /// `wait_for_tap = true`: only when a technician taps it.
    pub present_after_ms: Option<u64>,
    #[serde(default)]
    pub wait_for_tap: bool,
    /// `ok`, `wrong` (three wrong offline PINs) or `abandon`.
    pub pin: Option<String>,
    pub pin_after_ms: Option<u64>,
    /// The customer presses cancel on the device this long after it asked for the card.
    pub cancel_after_ms: Option<u64>,
    /// ZVT: how the terminal ends the sale (`approve`, `decline 05`, `cancel`,
    /// `offline`, `busy`, `slow`, `disconnect`, `drop-after-result`, `init-required`).
    pub outcome: Option<String>,
    #[serde(default)]
    pub faults: Vec<FaultAt>,
}

/// A fault at a named step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAt {
    /// Native reader: `collect`, `pin`, `card` or `result`. ZVT: `start`,
    /// `result`, `receipt` or `completion`.
    pub at: String,
    /// `drop-ack`, `bad-crc`, `silent`, `coalesce` (ZVT on TCP), `disconnect` or `reboot` (native).
    pub fault: String,
    /// `disconnect`: when the device is plugged back; `reboot`: how long it takes.
    pub for_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSetup {
    /// Native reader: false when its encryption keys are missing (card
    /// results then carry no card data).
    pub reader_keys: Option<bool>,
    /// ZVT: false for a terminal that refuses Repeat Receipt (84 83).
    pub repeat_receipt: Option<bool>,
    /// ZVT: true for a terminal that keeps a result the register never
    /// confirmed instead of reversing it.
    pub keep_unconfirmed: Option<bool>,
}

impl DeviceSetup {
    pub fn apply(&self, reader: &mut crate::reader::ReaderOptions, zvt: &mut crate::zvt::ZvtOptions) {
        if let Some(k) = self.reader_keys {
            reader.keys_loaded = k;
        }
        if let Some(r) = self.repeat_receipt {
            zvt.repeat_receipt = r;
        }
        if let Some(k) = self.keep_unconfirmed {
            zvt.keep_unconfirmed = k;
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrinterSetup {
    /// The paper runs out after this many printed lines.
    pub paper_out_after_lines: Option<u32>,
    /// `ok`, `near-end` or `out` from the start.
    pub paper: Option<String>,
    #[serde(default)]
    pub cover_open: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PosdSetup {
    /// `up` (default) or `down`: the central gateway refuses connections.
    pub gateway: Option<String>,
    /// The lane may approve offline (with generous limits).
    #[serde(default)]
    pub offline_allowed: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The amount the register asks for, in minor units (EUR).
    #[serde(default = "default_amount")]
    pub amount_minor: i64,
    /// The payment's final status, as posd's API names it in lower case
    /// (`captured`, `declined`, `canceled`, `failed`, `offline_approved`, ...).
    pub status: String,
    /// The failure or decline code, when the payment did not succeed.
    pub code: Option<String>,
    /// Register event kinds that must appear (e.g. `receipt_failed`).
    #[serde(default)]
    pub events: Vec<String>,
    /// Text every printed receipt of the payment must hold, together.
    #[serde(default)]
    pub receipt_contains: Vec<String>,
    /// Charges the gateway must hold afterwards.
    pub gateway_charges: Option<usize>,
    /// Lines the lane's transcript must hold (e.g. that a fault fired).
    #[serde(default)]
    pub transcript_contains: Vec<String>,
    /// The status of a second payment taken once the first has settled
    /// (the lane recovered by itself).
    pub next_payment: Option<String>,
}

fn default_amount() -> i64 {
    1000
}

impl ScenarioFile {
    pub fn load(path: &Path) -> Result<ScenarioFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<ScenarioFile, String> {
        let s: ScenarioFile = toml::from_str(text).map_err(|e| e.to_string())?;
        // Everything is checked now, so a bad file fails before the lane starts.
        match s.device {
            Device::Native => {
                s.customers(&Customer::default())?;
                if s.setup.repeat_receipt.is_some() || s.setup.keep_unconfirmed.is_some() {
                    return Err("setup.repeat_receipt and setup.keep_unconfirmed are for ZVT terminals".into());
                }
            }
            Device::Zvt => {
                s.zvt_plans()?;
                if s.setup.reader_keys.is_some() {
                    return Err("setup.reader_keys is for native readers".into());
                }
            }
            Device::Nexo => {
                s.nexo_plans()?;
                if s.setup != DeviceSetup::default() {
                    return Err("a nexo terminal takes no [setup]".into());
                }
            }
        }
        if let Some(p) = &s.printer.paper
            && !["ok", "near-end", "out"].contains(&p.as_str())
        {
            return Err(format!("printer.paper must be ok, near-end or out, not {p:?}"));
        }
        if let Some(g) = &s.posd.gateway
            && !["up", "down"].contains(&g.as_str())
        {
            return Err(format!("posd.gateway must be up or down, not {g:?}"));
        }
        Ok(s)
    }

    /// The native reader's customers, each starting from `standing`.
    pub fn customers(&self, standing: &Customer) -> Result<Vec<Customer>, String> {
        self.payments
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let at = |e: String| format!("payment {}: {e}", i + 1);
                if p.outcome.is_some() {
                    return Err(at("`outcome` is for ZVT terminals; a native reader's outcome comes from the gateway".into()));
                }
                let mut c = standing.clone();
                if let Some(name) = &p.card {
                    c.card = CardProfile::named(name).map_err(at)?;
                }
                if p.wait_for_tap {
                    c.present_after = None;
                } else if let Some(ms) = p.present_after_ms {
                    c.present_after = Some(Duration::from_millis(ms));
                }
                if let Some(pin) = &p.pin {
                    c.pin = PinOutcome::parse(pin).map_err(at)?;
                }
                if let Some(ms) = p.pin_after_ms {
                    c.pin_after = Duration::from_millis(ms);
                }
                c.cancel_after = p.cancel_after_ms.map(Duration::from_millis);
                c.faults = p
                    .faults
                    .iter()
                    .map(|f| {
                        let step = Step::parse(&f.at)?;
                        let d = Duration::from_millis(f.for_ms.unwrap_or(1000));
                        let fault = match f.fault.as_str() {
                            "drop-ack" | "bad-crc" | "silent" => Fault::Line(f.fault.clone()),
                            "disconnect" => Fault::Disconnect { back_after: d },
                            "reboot" => Fault::Reboot { takes: d },
                            other => {
                                return Err(format!(
                                    "unknown reader fault {other:?}; one of drop-ack, bad-crc, silent, disconnect, reboot"
                                ));
                            }
                        };
                        Ok((step, fault))
                    })
                    .collect::<Result<_, String>>()
                    .map_err(at)?;
                Ok(c)
            })
            .collect()
    }

    /// The nexo terminal's outcomes, one per payment.
    pub fn nexo_plans(&self) -> Result<Vec<crate::nexo::Scenario>, String> {
        self.payments
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let at = |e: String| format!("payment {}: {e}", i + 1);
                if p.card.is_some() || p.pin.is_some() || p.wait_for_tap || p.cancel_after_ms.is_some() {
                    return Err(
                        at("a nexo terminal reads the card itself; describe the payment with `outcome`".into()),
                    );
                }
                if !p.faults.is_empty() {
                    return Err(at("a nexo terminal takes no line faults; use an outcome instead".into()));
                }
                let words: Vec<&str> = p.outcome.as_deref().unwrap_or("approve").split_whitespace().collect();
                crate::nexo::Scenario::parse(&words).map_err(at)
            })
            .collect()
    }

    /// The ZVT terminal's plans, one per sale.
    pub fn zvt_plans(&self) -> Result<Vec<Plan>, String> {
        self.payments
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let at = |e: String| format!("payment {}: {e}", i + 1);
                if p.card.is_some() || p.pin.is_some() || p.wait_for_tap || p.cancel_after_ms.is_some() {
                    return Err(at(
                        "a ZVT terminal reads the card itself; describe the sale with `outcome` (e.g. \"cancel\")"
                            .into(),
                    ));
                }
                let words: Vec<&str> = p.outcome.as_deref().unwrap_or("approve").split_whitespace().collect();
                let outcome = ZvtOutcome::parse(&words).map_err(at)?;
                let faults = p
                    .faults
                    .iter()
                    .map(|f| {
                        let step = ZvtStep::parse(&f.at)?;
                        match f.fault.as_str() {
                            name @ ("drop-ack" | "bad-crc" | "coalesce" | "silent" | "disconnect") => {
                                Ok((step, name.to_string()))
                            }
                            other => Err(format!(
                                "unknown ZVT fault {other:?}; one of drop-ack, bad-crc, coalesce, silent, disconnect"
                            )),
                        }
                    })
                    .collect::<Result<_, String>>()
                    .map_err(at)?;
                Ok(Plan { outcome, faults })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_scenario_becomes_customers() {
        let s = ScenarioFile::parse(
            r#"
            description = "x"
            device = "native"
            [[payment]]
            card = "visa-apple-pay"
            present_after_ms = 0
            cancel_after_ms = 20
            faults = [{ at = "card", fault = "disconnect", for_ms = 300 }]
            [expect]
            status = "canceled"
            "#,
        )
        .unwrap();
        let c = s.customers(&Customer::default()).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].card, CardProfile::named("visa-apple-pay").unwrap());
        assert_eq!(c[0].present_after, Some(Duration::ZERO));
        assert_eq!(c[0].cancel_after, Some(Duration::from_millis(20)));
        assert_eq!(c[0].faults, vec![(Step::Card, Fault::Disconnect { back_after: Duration::from_millis(300) })]);
        assert_eq!(s.expect.amount_minor, 1000);
    }

    #[test]
    fn a_nexo_scenario_becomes_outcomes() {
        let s = ScenarioFile::parse(
            "description = \"x\"\ndevice = \"nexo\"\n[[payment]]\n[[payment]]\noutcome = \"lost-answer\"\n\
             [expect]\nstatus = \"captured\"\n",
        )
        .unwrap();
        use crate::nexo::Scenario;
        assert_eq!(s.nexo_plans().unwrap(), vec![Scenario::Approve, Scenario::LostAnswer]);
    }

    #[test]
    fn mistakes_are_named_before_the_lane_starts() {
        let base = "description = \"x\"\n[expect]\nstatus = \"captured\"\n";
        let bad = [
            ("device = \"native\"\n[[payment]]\ncard = \"diners\"\n", "unknown card"),
            ("device = \"native\"\n[[payment]]\nfaults = [{ at = \"later\", fault = \"silent\" }]\n", "unknown step"),
            ("device = \"native\"\n[[payment]]\noutcome = \"approve\"\n", "for ZVT terminals"),
            ("device = \"zvt\"\n[[payment]]\ncard = \"visa\"\n", "reads the card itself"),
            ("device = \"zvt\"\n[[payment]]\noutcome = \"maybe\"\n", "unknown scenario"),
            ("device = \"zvt\"\n[[payment]]\nfaults = [{ at = \"pin\", fault = \"bad-crc\" }]\n", "unknown ZVT step"),
            (
                "device = \"zvt\"\n[[payment]]\nfaults = [{ at = \"result\", fault = \"reboot\" }]\n",
                "unknown ZVT fault",
            ),
            ("device = \"native\"\n[printer]\npaper = \"wet\"\n", "printer.paper"),
            ("device = \"native\"\n[setup]\nrepeat_receipt = false\n", "are for ZVT terminals"),
            ("device = \"zvt\"\n[setup]\nreader_keys = false\n", "for native readers"),
            ("device = \"nexo\"\n[[payment]]\noutcome = \"maybe\"\n", "unknown scenario"),
            ("device = \"nexo\"\n[[payment]]\npin = \"ok\"\n", "reads the card itself"),
            ("device = \"nexo\"\n[[payment]]\nfaults = [{ at = \"result\", fault = \"silent\" }]\n", "no line faults"),
            ("device = \"nexo\"\n[setup]\nrepeat_receipt = false\n", "no [setup]"),
            ("device = \"native\"\ncolour = \"red\"\n", "unknown field"),
        ];
        for (text, want) in bad {
            // The device line is a top-level key: it goes before the tables.
            let (head, tables) = text.split_once('\n').unwrap();
            let doc = format!("{head}\n{base}{tables}");
            let err = ScenarioFile::parse(&doc).unwrap_err();
            assert!(err.contains(want), "{doc}\n=> {err}");
        }
    }
}
