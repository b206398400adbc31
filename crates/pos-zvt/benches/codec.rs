//! ZVT codec throughput against the `zvt` crate (0.1.0) on the same APDUs:
//! real terminal captures (decode) and the messages posd sends (encode).
//! Prints a markdown table. `cargo bench -p pos-zvt --bench codec`
//!
//! Both sides are timed the same way: decoding includes reading every field
//! posd reads of that message (pos-zvt reads fields on demand; the oracle
//! parses them all up front).

use std::hint::black_box;
use std::time::{Duration, Instant};

use pos_zvt::Message;
use zvt::{ZvtSerializer, packets};

/// Runs `f` repeatedly for about `budget` and returns nanoseconds per call.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn capture(name: &str) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/zvt-captures");
    let path = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(name))
        .unwrap();
    std::fs::read(path).unwrap()
}

fn main() {
    let budget = Duration::from_millis(400);
    println!("| APDU | bytes | operation | pos-zvt ns | zvt 0.1.0 ns | zvt / pos-zvt |");
    println!("|---|---:|---|---:|---:|---:|");
    let row = |name: &str, bytes: usize, op: &str, ours: f64, theirs: f64| {
        println!("| {name} | {bytes} | {op} | {ours:.0} | {theirs:.0} | {:.2} |", theirs / ours);
    };

    // Decoding what terminals send.
    for (name, file) in [
        ("Status-Information (payment)", "05-040f"),
        ("Status-Information (with text)", "09-040f"),
        ("Intermediate status", "04-04ff"),
        ("Completion", "11-060f"),
        ("Print Text Block (1126 B)", "08-06d3"),
        ("Print Text Block (4093 B)", "24-06d3"),
    ] {
        let bytes = capture(file);
        // Ours keeps fields as bytes and reads them on demand: the decode is
        // timed with every field posd reads, as the oracle parses them all.
        let ours = time(budget, || {
            let m = Message::decode(black_box(&bytes)).unwrap();
            match &m {
                // A receipt's text block: posd reads its lines, nothing else.
                Message::PrintTextBlock(f) => {
                    if let Some(Ok(lines)) = f.text_lines() {
                        black_box(lines);
                    }
                }
                Message::StatusInformation(f) => {
                    black_box((
                        f.result_code(),
                        f.amount(),
                        f.currency(),
                        f.receipt_no(),
                        f.trace(),
                        f.masked_pan(),
                        f.card_name(),
                        f.auth_code(),
                        f.terminal_id(),
                        f.additional_text(),
                        f.payment_type(),
                    ));
                    if let Some(Ok(lines)) = f.text_lines() {
                        black_box(lines);
                    }
                }
                Message::Completion(c) => {
                    black_box((c.fields.payment_type(), c.fields.terminal_id(), c.fields.currency()));
                }
                _ => {}
            }
            black_box(m);
        });
        let theirs = match &file[3..] {
            "040f" => time(budget, || {
                black_box(packets::StatusInformation::zvt_deserialize(black_box(&bytes)).unwrap());
            }),
            "04ff" => time(budget, || {
                black_box(packets::IntermediateStatusInformation::zvt_deserialize(black_box(&bytes)).unwrap());
            }),
            "060f" => time(budget, || {
                black_box(packets::CompletionData::zvt_deserialize(black_box(&bytes)).unwrap());
            }),
            _ => time(budget, || {
                black_box(packets::PrintTextBlock::zvt_deserialize(black_box(&bytes)).unwrap());
            }),
        };
        row(name, bytes.len(), "decode", ours, theirs);
    }

    // Encoding what posd sends.
    let reg = Message::registration(pos_zvt::message::DEFAULT_PASSWORD, 0x1E, 978, &[]);
    let their_reg = packets::Registration { password: 123456, config_byte: 0x1E, currency: Some(978), tlv: None };
    let ours = time(budget, || {
        black_box(black_box(&reg).encode().unwrap());
    });
    let theirs = time(budget, || {
        black_box(black_box(&their_reg).zvt_serialize());
    });
    row("Registration", reg.encode().unwrap().len(), "encode", ours, theirs);
    let eod = Message::EndOfDay(pos_zvt::message::WithPassword {
        password: pos_zvt::message::DEFAULT_PASSWORD,
        fields: pos_zvt::Bmps::default(),
    });
    let their_eod = packets::EndOfDay { password: 123456 };
    let ours = time(budget, || {
        black_box(black_box(&eod).encode().unwrap());
    });
    let theirs = time(budget, || {
        black_box(black_box(&their_eod).zvt_serialize());
    });
    row("End-of-day", eod.encode().unwrap().len(), "encode", ours, theirs);
    let ack = Message::Ack;
    let ours = time(budget, || {
        black_box(black_box(&ack).encode().unwrap());
    });
    let theirs = time(budget, || {
        black_box(black_box(&packets::Ack {}).zvt_serialize());
    });
    row("Ack 80 00", 3, "encode", ours, theirs);
}
