//! Text from devices never carries a card number or a forged log line into
//! posd's database, log, events or the register's stream (issue 22 §4): a
//! reader whose collection failure message, serial number and firmware
//! version hold card numbers, line breaks, ANSI escapes and bidi overrides.

use pos_proto::terminal as pb;
use posd_e2e::{Lane, eventually, final_payment, status};

/// Luhn-valid test card numbers, as a misbehaving reader might echo them.
const PAN: &str = "4000056655665556";
const SERIAL_PAN: &str = "5555555555554444";
const FIRMWARE_PAN: &str = "378282246310005";
/// A log line of posd's format, to be forged by a line break.
const FORGED: &str = "1999-12-31T23:59:59Z  INFO posd: payment approved forged=yes";

/// Characters that could end, rewrite or reorder a log line.
fn forging(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Fails when `text` holds a card number, grouped or not (13 or more digits
/// joined by single spaces or hyphens; the scrub joins up to three), or a
/// character that could forge a log line.
fn assert_clean(what: &str, text: &str) {
    assert!(!text.chars().any(forging), "{what}: a line break or escape in {text:?}");
    let chars: Vec<char> = text.chars().collect();
    let mut digits = 0;
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_digit() {
            digits += 1;
            assert!(digits < 13, "{what}: a card number in {text:?}");
            continue;
        }
        let joins = matches!(c, ' ' | '-')
            && i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if !joins {
            digits = 0;
        }
    }
}

#[tokio::test]
async fn a_readers_text_is_scrubbed_before_it_is_stored_logged_or_streamed() {
    let message = format!("collect failed: card {PAN} / 4111 1111 1111 1111 unreadable\n{FORGED}\x1b[2J\u{202e}!");
    let serial = format!("SIM-{SERIAL_PAN} rev A\n{FORGED}");
    let firmware = format!("fw {FIRMWARE_PAN}\r\n{FORGED}\x1b[31m");
    let mut lane =
        Lane::start(&["--collect-fail-message", &message, "--serial", &serial, "--firmware-version", &firmware]);
    lane.reader_ready().await;

    // The payment fails with the reader's message, masked and on one line.
    let events = lane.pay("device-text", 1234).await;
    let p = final_payment(&events);
    assert_eq!(status(&p), pb::PaymentStatus::Failed);
    let failure = p.failure.clone().expect("a failure");
    assert_eq!(failure.code, "card_error");
    assert!(failure.message.contains("400005******5556"), "{:?}", failure.message);
    assert!(failure.message.contains("411111******1111"), "{:?}", failure.message);
    assert!(failure.message.contains(FORGED), "the text stays, on the same line: {:?}", failure.message);
    assert_clean("reason message", &failure.message);
    for h in &p.history {
        assert_clean("history", &h.cause);
    }
    assert!(p.history.iter().any(|h| h.cause.contains("400005******5556")), "{:?}", p.history);
    for e in &events {
        assert_clean("stream", &e.message);
    }

    // The stored payment says the same.
    let stored = lane
        .client()
        .await
        .get_payment(pb::GetPaymentRequest { payment_id: p.payment_id.clone() })
        .await
        .expect("the payment")
        .into_inner();
    lane.responses.push(format!("{stored:?}"));
    assert_eq!(stored.failure.as_ref().map(|f| f.message.as_str()), Some(failure.message.as_str()));
    for h in &stored.history {
        assert_clean("stored history", &h.cause);
    }

    // The reader's identity: masked for the register, in events and in the log.
    let terminal = lane
        .client()
        .await
        .get_terminal_status(pb::GetTerminalStatusRequest { terminal_id: "lane-1".into() })
        .await
        .expect("terminal status")
        .into_inner();
    lane.responses.push(format!("{terminal:?}"));
    assert!(terminal.reader_serial.starts_with("SIM-555555******4444"), "{:?}", terminal.reader_serial);
    // The line break joins the card number with the forged line's date
    // (three separators or fewer join groups): all of it is masked.
    assert!(terminal.reader_firmware.starts_with("fw 378282*****"), "{:?}", terminal.reader_firmware);
    assert!(!terminal.reader_firmware.contains(&FIRMWARE_PAN[6..]), "{:?}", terminal.reader_firmware);
    assert_clean("reader serial", &terminal.reader_serial);
    assert_clean("reader firmware", &terminal.reader_firmware);
    let connected = eventually("the reader_connected event", async || {
        lane.events().await.into_iter().find(|e| e.kind == "reader_connected")
    })
    .await;
    assert!(connected.message.contains("555555******4444"), "{:?}", connected.message);
    let events = lane.events().await;
    lane.responses.push(format!("{events:?}"));
    for e in &events {
        assert_clean("event", &e.message);
    }

    // posd's log: no forged line, no escape; the lines with the reader's
    // text carry it masked.
    let log = std::fs::read_to_string(lane.posd_log()).expect("posd's log");
    assert!(!log.chars().any(|c| forging(c) && c != '\n'), "an escape or override in posd's log");
    for line in log.lines() {
        assert!(!line.trim_start().starts_with("1999-12-31"), "a forged log line: {line:?}");
        if line.contains("forged=yes") {
            assert_clean("log line", line);
        }
    }
    let identified = log.lines().find(|l| l.contains("card reader identified")).expect("the reader identified");
    assert!(identified.contains("555555******4444") && identified.contains("378282*****"), "{identified}");
    assert!(!identified.contains(&FIRMWARE_PAN[6..]), "{identified}");
    assert!(log.contains("400005******5556"), "the failure is logged, masked");

    // The leak scan of posd's database, log and every answer seen.
    lane.finish();
}
