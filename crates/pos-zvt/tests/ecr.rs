//! The register's session of one command ([`Exchange`]), branch by branch,
//! with plain `Instant`s: what it sends, what it reports, when its timers
//! run out. Terminal messages are real captures (tests/data/zvt-captures)
//! where one fits, else built with pos-zvt's own types.

use std::time::{Duration, Instant};

use pos_link::LinkError;
use pos_zvt::codes::{intermediate_text, result_text};
use pos_zvt::ecr::{EcrEvent, Ending, Exchange, Notice, registered, registration, reply_to_unasked};
use pos_zvt::message::{Abort, Completion, DEFAULT_PASSWORD, Intermediate, PrintLine};
use pos_zvt::{Bmp, Bmps, Message};

const T3: Duration = Duration::from_secs(5);
const T4: Duration = Duration::from_secs(180);
const NO_EVENTS: [EcrEvent; 0] = [];

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A real APDU from the terminal, decoded.
fn capture(name: &str) -> Message {
    let path = format!("{}/../../tests/data/zvt-captures/{name}.blob", env!("CARGO_MANIFEST_DIR"));
    Message::decode(&std::fs::read(path).unwrap()).unwrap()
}

fn command() -> Message {
    Message::authorization(1234, 978)
}

fn intermediate(status: u8, timeout: Option<u8>) -> Message {
    Message::Intermediate(Intermediate { status, timeout, fields: Bmps::default() })
}

fn print_line(attribute: u8, text: &str) -> Message {
    Message::PrintLine(PrintLine { attribute, text: text.into() })
}

fn completion(fields: impl IntoIterator<Item = Bmp>) -> Message {
    Message::Completion(Completion { software: None, fields: fields.into_iter().collect() })
}

fn abort(code: u8) -> Message {
    Message::Abort(Abort { result_code: code, fields: Bmps::default() })
}

fn events(x: &mut Exchange) -> Vec<EcrEvent> {
    std::iter::from_fn(|| x.poll_event()).collect()
}

/// Everything the session wants sent, each delivered at `now`.
fn deliver(x: &mut Exchange, now: Instant) -> Vec<Message> {
    let mut sent = Vec::new();
    while let Some(m) = x.poll_transmit() {
        sent.push(m);
        x.sent(now);
    }
    sent
}

/// A session whose command was delivered at `t0` (T3 runs).
fn delivered(t0: Instant) -> Exchange {
    let mut x = Exchange::start(command(), T3, T4);
    assert_eq!(deliver(&mut x, t0), [command()]);
    x
}

/// A session whose command the terminal accepted with 80 00 at `t0` (T4 runs).
fn accepted(t0: Instant) -> Exchange {
    let mut x = delivered(t0);
    x.handle_message(Message::Ack, t0);
    assert_eq!(x.poll_transmit(), None, "80 00 is not answered");
    assert_eq!(events(&mut x), NO_EVENTS);
    x
}

fn lost(message: &str, started: bool) -> EcrEvent {
    EcrEvent::Done(Ending::Lost { message: message.into(), started })
}

#[test]
fn an_accepted_command_completes_with_the_terminal_s_id() {
    let t0 = Instant::now();
    let mut x = Exchange::start(command(), T3, T4);
    assert_eq!(x.poll_timeout(), None, "T3 runs from the command's delivery");
    assert_eq!(x.poll_transmit(), Some(command()));
    assert_eq!(x.poll_transmit(), None, "one message at a time");
    x.sent(t0);
    assert_eq!(x.poll_timeout(), Some(t0 + T3));

    x.handle_message(Message::Ack, t0 + secs(1));
    assert_eq!(x.poll_timeout(), Some(t0 + secs(1) + T4), "T4 runs from the 80 00");

    x.handle_message(capture("11-060f"), t0 + secs(2));
    assert_eq!(x.poll_transmit(), Some(Message::Ack));
    assert_eq!(events(&mut x), NO_EVENTS, "over only once the 80 00 is delivered");
    assert_eq!(x.poll_timeout(), None, "no timer while a message is being delivered");
    x.sent(t0 + secs(2));
    assert_eq!(events(&mut x), [EcrEvent::Done(Ending::Completed { terminal_id: "52523535".into() })]);

    // Over: nothing more to send, wait for or report.
    x.handle_message(abort(0x6C), t0 + secs(3));
    x.handle_timeout(t0 + secs(999));
    assert_eq!((x.poll_transmit(), x.poll_timeout(), x.poll_event()), (None, None, None));
}

#[test]
fn a_positive_84_00_and_an_80_00_with_data_accept_the_command_too() {
    let t0 = Instant::now();
    for acceptance in [Message::Nak(0x00), capture("21-8000")] {
        let mut x = delivered(t0);
        x.handle_message(acceptance, t0 + secs(1));
        assert_eq!(x.poll_transmit(), None);
        assert_eq!(x.poll_timeout(), Some(t0 + secs(1) + T4));
        x.handle_message(capture("06-060f"), t0 + secs(2));
        assert_eq!(deliver(&mut x, t0 + secs(2)), [Message::Ack]);
        assert_eq!(events(&mut x), [EcrEvent::Done(Ending::Completed { terminal_id: String::new() })]);
    }
}

#[test]
fn a_refusal_before_the_start_ends_the_command_refused() {
    let t0 = Instant::now();
    let mut x = delivered(t0);
    x.handle_message(Message::Nak(0x6B), t0 + secs(1));
    assert_eq!(x.poll_transmit(), None, "a refusal is not answered");
    assert_eq!(events(&mut x), [EcrEvent::Done(Ending::Refused { code: 0x6B, text: result_text(0x6B) })]);
    assert_eq!(x.poll_timeout(), None);
}

#[test]
fn t3_running_out_loses_a_command_that_did_not_start() {
    let t0 = Instant::now();
    let mut x = delivered(t0);
    x.handle_timeout(t0 + T3 - Duration::from_millis(1));
    assert_eq!(events(&mut x), NO_EVENTS, "too early");
    x.handle_timeout(t0 + T3);
    assert_eq!(events(&mut x), [lost("the terminal did not accept Authorization 06 01 within 5s (T3)", false)]);
}

#[test]
fn the_end_of_an_earlier_command_during_t3_is_acknowledged_not_taken() {
    let t0 = Instant::now();
    let mut x = delivered(t0);
    x.handle_message(capture("06-060f"), t0 + secs(1));
    assert_eq!(events(&mut x), [EcrEvent::Notice(Notice::StaleEnd("Completion 06 0F"))]);
    assert_eq!(deliver(&mut x, t0 + secs(1)), [Message::Ack]);
    x.handle_message(capture("23-061e"), t0 + secs(2));
    assert_eq!(events(&mut x), [EcrEvent::Notice(Notice::StaleEnd("Abort 06 1E"))]);
    assert_eq!(deliver(&mut x, t0 + secs(2)), [Message::Ack]);
    assert_eq!(events(&mut x), NO_EVENTS, "neither ended this command");
    assert_eq!(x.poll_timeout(), Some(t0 + T3), "nor restarted T3");

    x.handle_message(Message::Ack, t0 + secs(3));
    x.handle_message(completion([Bmp::terminal_id(29001234)]), t0 + secs(4));
    assert_eq!(deliver(&mut x, t0 + secs(4)), [Message::Ack]);
    assert_eq!(events(&mut x), [EcrEvent::Done(Ending::Completed { terminal_id: "29001234".into() })]);

    // Acknowledging a stale end can fail: the command had not started.
    let mut x = delivered(t0);
    x.handle_message(capture("06-060f"), t0 + secs(1));
    assert_eq!(x.poll_transmit(), Some(Message::Ack));
    x.send_failed(LinkError::Closed);
    let ended = events(&mut x).pop();
    assert_eq!(ended, Some(lost("acknowledging the terminal failed: link closed by the peer", false)));
}

#[test]
fn a_terminal_message_instead_of_80_00_means_the_command_started() {
    let t0 = Instant::now();
    let mut x = delivered(t0);
    x.handle_message(intermediate(0x0A, None), t0 + secs(1));
    assert_eq!(events(&mut x), [EcrEvent::Progress { code: 0x0A, text: intermediate_text(0x0A) }]);
    assert_eq!(deliver(&mut x, t0 + secs(1)), [Message::Ack]);
    assert_eq!(x.poll_timeout(), Some(t0 + secs(1) + T4), "T4 runs, not T3");
    x.handle_timeout(t0 + T3);
    assert_eq!(events(&mut x), NO_EVENTS);
    x.handle_timeout(t0 + secs(1) + T4);
    assert_eq!(events(&mut x), [lost("the terminal did not finish Authorization 06 01 within 180s (T4)", true)]);
}

#[test]
fn an_intermediate_status_restarts_t4_and_extends_it_only_upward() {
    let t0 = Instant::now();
    let mut x = accepted(t0);
    // No timeout byte (the real capture: status 17, "please wait"): T4 as
    // configured, from now.
    let t1 = t0 + secs(100);
    x.handle_message(capture("04-04ff"), t1);
    assert_eq!(deliver(&mut x, t1), [Message::Ack]);
    assert_eq!(x.poll_timeout(), Some(t1 + T4));
    // One minute announced, shorter than T4: T4 still.
    let t2 = t1 + secs(100);
    x.handle_message(intermediate(0x42, Some(0x01)), t2);
    assert_eq!(deliver(&mut x, t2), [Message::Ack]);
    assert_eq!(x.poll_timeout(), Some(t2 + T4));
    // 17 minutes announced (BCD 0x17): longer, so taken.
    let t3 = t2 + secs(100);
    x.handle_message(intermediate(0x04, Some(0x17)), t3);
    assert_eq!(deliver(&mut x, t3), [Message::Ack]);
    assert_eq!(x.poll_timeout(), Some(t3 + secs(17 * 60)));
    assert_eq!(
        events(&mut x),
        [
            EcrEvent::Progress { code: 0x17, text: intermediate_text(0x17) },
            EcrEvent::Progress { code: 0x42, text: intermediate_text(0x42) },
            EcrEvent::Progress { code: 0x04, text: intermediate_text(0x04) },
        ]
    );
    x.handle_timeout(t3 + T4);
    assert_eq!(events(&mut x), NO_EVENTS, "the longer timeout holds");
    x.handle_timeout(t3 + secs(17 * 60));
    assert_eq!(events(&mut x), [lost("the terminal did not finish Authorization 06 01 within 180s (T4)", true)]);
}

/// A session that handed the real capture's Status-Information to the caller at `t1`.
fn with_result(t0: Instant, t1: Instant) -> Exchange {
    let mut x = accepted(t0);
    x.handle_message(capture("05-040f"), t1);
    let got = events(&mut x);
    let [EcrEvent::Result(outcome)] = got.as_slice() else { panic!("one Result: {got:?}") };
    assert!(outcome.approved());
    assert_eq!(outcome.amount, Some(2500));
    assert_eq!((outcome.receipt_no, outcome.trace), (Some(231), Some(975)));
    assert_eq!(outcome.masked_pan, "559883******8074");
    assert_eq!((outcome.card_name.as_str(), outcome.auth_code.as_str()), ("MasterCard", "750071"));
    assert_eq!(outcome.terminal_tid, "52523535");
    assert!(!outcome.offline, "payment type 0x60 is online");
    x
}

#[test]
fn a_result_waits_for_the_caller_and_stored_it_is_confirmed_with_80_00() {
    let t0 = Instant::now();
    let t1 = t0 + secs(30);
    let mut x = with_result(t0, t1);
    assert_eq!(x.poll_transmit(), None, "nothing goes out before the caller's decision");
    assert_eq!(x.poll_timeout(), None, "no timer while the caller decides");
    x.handle_timeout(t1 + secs(3600));
    assert_eq!(events(&mut x), NO_EVENTS);

    x.result_stored(true, t1 + secs(1));
    assert_eq!(x.poll_transmit(), Some(Message::Ack));
    assert_eq!(events(&mut x), NO_EVENTS, "confirmed only once the 80 00 is delivered");
    x.sent(t1 + secs(1));
    assert_eq!(events(&mut x), [EcrEvent::Confirmed]);
    assert_eq!(x.poll_timeout(), Some(t1 + T4), "T4 restarted by the 04 0F");

    x.handle_message(capture("06-060f"), t1 + secs(2));
    assert_eq!(deliver(&mut x, t1 + secs(2)), [Message::Ack]);
    assert_eq!(events(&mut x), [EcrEvent::Done(Ending::Completed { terminal_id: String::new() })]);
}

#[test]
fn a_result_the_caller_could_not_store_is_refused_with_84_66() {
    let t0 = Instant::now();
    let t1 = t0 + secs(30);
    let mut x = with_result(t0, t1);
    x.result_stored(false, t1 + secs(1));
    assert_eq!(events(&mut x), [EcrEvent::Notice(Notice::NotStored)]);
    assert_eq!(x.poll_transmit(), Some(Message::Nak(0x66)));
    x.sent(t1 + secs(1));
    assert_eq!(events(&mut x), [EcrEvent::Refused]);
    // A second answer is no answer.
    x.result_stored(true, t1 + secs(2));
    assert_eq!((x.poll_transmit(), x.poll_event()), (None, None));
}

#[test]
fn a_card_number_the_terminal_did_not_mask_is_masked_and_noted() {
    let t0 = Instant::now();
    let mut x = accepted(t0);
    let fields = [Bmp::result_code(0), Bmp::amount(1234), Bmp::masked_pan("5598831234568074"), Bmp::payment_type(0x40)];
    x.handle_message(Message::StatusInformation(fields.into_iter().collect()), t0 + secs(1));
    let got = events(&mut x);
    assert_eq!(got[0], EcrEvent::Notice(Notice::PanRemasked));
    let EcrEvent::Result(outcome) = &got[1] else { panic!("{got:?}") };
    assert_eq!(outcome.masked_pan, "559883******8074");
    assert!(outcome.offline, "payment type 0x40: approved offline");
    assert_eq!(got.len(), 2);
}

#[test]
fn an_abort_request_sends_06_b0_once() {
    let t0 = Instant::now();
    let mut x = accepted(t0);
    x.abort_requested(t0 + secs(1));
    assert_eq!(events(&mut x), [EcrEvent::Notice(Notice::AbortRequested)]);
    assert_eq!(deliver(&mut x, t0 + secs(1)), [Message::AbortRequest]);
    x.abort_requested(t0 + secs(2));
    assert_eq!((x.poll_transmit(), x.poll_event()), (None, None), "asked once");
    // The terminal's answer to the request is not acknowledged.
    x.handle_message(Message::Ack, t0 + secs(2));
    assert_eq!(x.poll_transmit(), None);
    x.handle_message(abort(0x6C), t0 + secs(3));
    assert_eq!(deliver(&mut x, t0 + secs(3)), [Message::Ack]);
    assert_eq!(events(&mut x), [EcrEvent::Done(Ending::Aborted { code: 0x6C, text: result_text(0x6C) })]);
}

#[test]
fn an_abort_request_before_the_terminal_accepted_goes_out_once_t4_runs() {
    let t0 = Instant::now();
    let mut x = delivered(t0);
    x.abort_requested(t0 + secs(1));
    assert_eq!((x.poll_transmit(), x.poll_event()), (None, None));
    x.handle_message(Message::Ack, t0 + secs(2));
    assert_eq!(events(&mut x), [EcrEvent::Notice(Notice::AbortRequested)]);
    assert_eq!(deliver(&mut x, t0 + secs(2)), [Message::AbortRequest]);
}

#[test]
fn no_abort_request_goes_out_after_a_result() {
    let t0 = Instant::now();
    let t1 = t0 + secs(30);
    let mut x = with_result(t0, t1);
    x.abort_requested(t1 + secs(1));
    x.result_stored(true, t1 + secs(2));
    assert_eq!(deliver(&mut x, t1 + secs(2)), [Message::Ack]);
    x.abort_requested(t1 + secs(3));
    assert_eq!(events(&mut x), [EcrEvent::Confirmed]);
    assert_eq!(x.poll_transmit(), None);
}

#[test]
fn print_lines_are_gathered_up_to_the_last_line() {
    let t0 = Instant::now();
    let mut x = accepted(t0);
    let card = "Karte 4242424242424242";
    let lines = [
        print_line(0x00, "Kundenbeleg   "),
        print_line(0xFF, ""),
        print_line(0x80, card),
        print_line(0x00, "Betrag EUR 12,34"),
    ];
    for line in lines {
        x.handle_message(line, t0 + secs(1));
        assert_eq!(deliver(&mut x, t0 + secs(1)), [Message::Ack]);
    }
    assert_eq!(events(&mut x), NO_EVENTS, "not the last line yet (0x80 and 0xFF are not last)");
    x.handle_message(print_line(0x81, "Danke"), t0 + secs(2));
    let masked = pos_mask::scrub(card);
    assert!(!masked.contains("4242424242424242"), "{masked}");
    let receipt = vec!["Kundenbeleg".to_string(), masked, "Betrag EUR 12,34".into(), "Danke".into()];
    assert_eq!(events(&mut x), [EcrEvent::Receipt(receipt)], "the 0xFF line feed is skipped");
    assert_eq!(deliver(&mut x, t0 + secs(2)), [Message::Ack]);

    // The next receipt starts empty.
    x.handle_message(print_line(0x81, "Händlerbeleg"), t0 + secs(3));
    assert_eq!(events(&mut x), [EcrEvent::Receipt(vec!["Händlerbeleg".into()])]);
}

#[test]
fn a_text_block_is_one_receipt() {
    let t0 = Instant::now();
    let mut x = accepted(t0);
    let Message::PrintTextBlock(f) = capture("08-06d3") else { panic!("a text block") };
    let raw = f.text_lines().unwrap().unwrap();
    x.handle_message(Message::PrintTextBlock(f), t0 + secs(1));
    let got = events(&mut x);
    let [EcrEvent::Receipt(lines)] = got.as_slice() else { panic!("one Receipt: {got:?}") };
    assert_eq!(lines.len(), raw.len());
    assert!(lines.contains(&"         ** Customer Receipt **".to_string()), "{lines:?}");
    assert!(lines.iter().all(|l| !l.ends_with(' ')), "trailing blanks trimmed: {lines:?}");
    assert_eq!(deliver(&mut x, t0 + secs(1)), [Message::Ack]);
}

#[test]
fn a_completion_flushes_print_lines_without_a_last_line() {
    let t0 = Instant::now();
    let mut x = accepted(t0);
    x.handle_message(print_line(0x00, "Kassenschnitt"), t0 + secs(1));
    assert_eq!(deliver(&mut x, t0 + secs(1)), [Message::Ack]);
    x.handle_message(completion([]), t0 + secs(2));
    assert_eq!(x.poll_transmit(), Some(Message::Ack));
    assert_eq!(events(&mut x), NO_EVENTS, "nothing before the 80 00 is delivered");
    x.sent(t0 + secs(2));
    assert_eq!(
        events(&mut x),
        [
            EcrEvent::Receipt(vec!["Kassenschnitt".into()]),
            EcrEvent::Done(Ending::Completed { terminal_id: String::new() }),
        ]
    );
}

#[test]
fn an_abort_from_the_terminal_ends_the_command_even_if_its_80_00_fails() {
    let t0 = Instant::now();
    let aborted = EcrEvent::Done(Ending::Aborted { code: 0xB8, text: result_text(0xB8) });
    let mut x = accepted(t0);
    x.handle_message(capture("23-061e"), t0 + secs(1));
    assert_eq!(deliver(&mut x, t0 + secs(1)), [Message::Ack]);
    assert_eq!(events(&mut x), std::slice::from_ref(&aborted));

    let mut x = accepted(t0);
    x.handle_message(capture("23-061e"), t0 + secs(1));
    assert_eq!(x.poll_transmit(), Some(Message::Ack));
    x.send_failed(LinkError::Closed);
    assert_eq!(events(&mut x), [aborted]);
}

#[test]
fn t4_running_out_loses_a_started_command() {
    let t0 = Instant::now();
    let mut x = accepted(t0);
    x.handle_timeout(t0 + T4 - Duration::from_millis(1));
    assert_eq!(events(&mut x), NO_EVENTS);
    x.handle_timeout(t0 + T4);
    assert_eq!(events(&mut x), [lost("the terminal did not finish Authorization 06 01 within 180s (T4)", true)]);
}

#[test]
fn an_unknown_message_is_acknowledged_and_noted() {
    let t0 = Instant::now();
    let mut x = accepted(t0);
    x.handle_message(capture("20-040c"), t0 + secs(1));
    assert_eq!(events(&mut x), [EcrEvent::Notice(Notice::Ignored("vendor-specific"))]);
    assert_eq!(deliver(&mut x, t0 + secs(1)), [Message::Ack]);
}

#[test]
fn a_failed_send_loses_the_command_saying_what_failed() {
    let t0 = Instant::now();
    let failed = |x: &mut Exchange| {
        assert!(x.poll_transmit().is_some());
        x.send_failed(LinkError::Io("broken pipe".into()));
        let ended = events(x).pop();
        assert_eq!(x.poll_timeout(), None);
        ended
    };

    let mut x = Exchange::start(command(), T3, T4);
    let ended = failed(&mut x);
    assert_eq!(ended, Some(lost("sending Authorization 06 01 failed: link I/O error: broken pipe", false)));

    let mut x = accepted(t0);
    x.handle_message(intermediate(0x0A, None), t0);
    let ended = failed(&mut x);
    assert_eq!(ended, Some(lost("acknowledging the terminal failed: link I/O error: broken pipe", true)));

    let mut x = accepted(t0);
    x.abort_requested(t0);
    let ended = failed(&mut x);
    assert_eq!(ended, Some(lost("sending the abort failed: link I/O error: broken pipe", true)));

    let mut x = with_result(t0, t0);
    x.result_stored(true, t0);
    let ended = failed(&mut x);
    assert_eq!(ended, Some(lost("confirming the result failed: link I/O error: broken pipe", true)));

    // No receipt either after a lost completion.
    let mut x = accepted(t0);
    x.handle_message(print_line(0x00, "unfinished"), t0);
    assert_eq!(deliver(&mut x, t0), [Message::Ack]);
    x.handle_message(capture("06-060f"), t0);
    assert_eq!(x.poll_transmit(), Some(Message::Ack));
    x.send_failed(LinkError::Io("broken pipe".into()));
    let ended = lost("acknowledging the completion failed: link I/O error: broken pipe", true);
    assert_eq!(events(&mut x), [ended]);
}

#[test]
fn a_failed_line_loses_the_command() {
    let t0 = Instant::now();
    let mut x = delivered(t0);
    x.line_failed(LinkError::Closed);
    assert_eq!(events(&mut x), [lost("line to the terminal failed: link closed by the peer", false)]);

    let mut x = accepted(t0);
    x.line_failed(LinkError::Closed);
    assert_eq!(events(&mut x), [lost("line to the terminal failed: link closed by the peer", true)]);
}

#[test]
fn messages_that_come_while_a_send_is_under_way_wait_their_turn() {
    let t0 = Instant::now();
    let mut x = accepted(t0);
    x.handle_message(intermediate(0x0A, None), t0 + secs(1));
    assert_eq!(x.poll_transmit(), Some(Message::Ack));
    x.handle_message(capture("05-040f"), t0 + secs(2));
    x.handle_message(capture("06-060f"), t0 + secs(2));
    assert_eq!(events(&mut x), [EcrEvent::Progress { code: 0x0A, text: intermediate_text(0x0A) }]);
    x.sent(t0 + secs(2));
    assert!(matches!(events(&mut x).as_slice(), [EcrEvent::Result(_)]), "the result, and nothing after it yet");
    x.result_stored(true, t0 + secs(3));
    assert_eq!(deliver(&mut x, t0 + secs(3)), [Message::Ack, Message::Ack], "80 00 to the result, then to 06 0F");
    assert_eq!(events(&mut x), [EcrEvent::Confirmed, EcrEvent::Done(Ending::Completed { terminal_id: String::new() })]);
}

#[test]
fn unasked_messages_are_answered_and_a_result_nobody_waits_for_is_refused() {
    assert_eq!(reply_to_unasked(None), Some(Message::Ack), "an undecodable APDU");
    assert_eq!(reply_to_unasked(Some(&Message::Ack)), None);
    assert_eq!(reply_to_unasked(Some(&Message::Nak(0x9C))), None);
    assert_eq!(reply_to_unasked(Some(&capture("05-040f"))), Some(Message::Nak(0x66)));
    for m in [capture("04-04ff"), capture("06-060f"), capture("23-061e"), capture("08-06d3"), capture("20-040c")] {
        assert_eq!(reply_to_unasked(Some(&m)), Some(Message::Ack), "{}", m.name());
    }
}

#[test]
fn the_registration_and_what_its_ending_means() {
    // Password 123456, config 1E (ECR prints payment and administration
    // receipts, intermediate status, ECR controls payment), EUR, and TLV 26
    // permitting 06 D3.
    let bytes: [u8; 17] =
        [0x06, 0x00, 0x0E, 0x12, 0x34, 0x56, 0x1E, 0x09, 0x78, 0x06, 0x06, 0x26, 0x04, 0x0A, 0x02, 0x06, 0xD3];
    assert_eq!(registration(DEFAULT_PASSWORD, 978).encode().unwrap(), bytes);

    assert_eq!(registered(Ending::Completed { terminal_id: "52523535".into() }), Ok("52523535".into()));
    let refused = Ending::Refused { code: 0x6B, text: result_text(0x6B) };
    let why = "the terminal answered 6B: function deactivated (terminal not registered)";
    assert_eq!(registered(refused), Err(why.into()));
    let aborted = Ending::Aborted { code: 0x9A, text: result_text(0x9A) };
    assert_eq!(registered(aborted), Err("the terminal answered 9A: ZVT protocol error".into()));
    let gone = Ending::Lost { message: "line to the terminal failed: link closed by the peer".into(), started: false };
    assert_eq!(registered(gone), Err("line to the terminal failed: link closed by the peer".into()));
}
