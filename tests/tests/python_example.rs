//! The worked register integration in Python (`examples/register.py`, grpcio)
//! runs against a live posd, over TCP and over posd's default transport, the
//! Unix socket. grpcio comes from PyPI into a virtualenv under `target/`,
//! made on first use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use posd_e2e::{Lane, run};

/// The virtualenv's python, made once for all the tests here (they run at once).
fn venv_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(make_venv).clone()
}

fn make_venv() -> PathBuf {
    posd_e2e::python_venv(
        "python-example-venv",
        &["-c", "import grpc, grpc_tools, grpc_status"],
        &["grpcio", "grpcio-tools", "grpcio-status"],
    )
}

/// Runs the example against the lane's posd and checks what it printed.
fn run_example(lane: &mut Lane, python: &Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/register.py");
    let (st, out, err) = run(Command::new(python).arg(script).args(["--addr", &lane.posd_addr, "--amount", "12.34"]));
    assert!(st.success(), "examples/register.py --addr {} failed:\n{out}\n{err}", lane.posd_addr);
    assert!(out.contains("PAYMENT_STATUS_CAPTURED, approved=True"), "{out}");
    assert!(out.contains("bad input is refused: INVALID_ARGUMENT INVALID_FIELD"), "{out}");
    assert!(out.contains("REFUND_STATUS_SUCCEEDED"), "{out}");
    assert!(out.contains("resume later with from_cursor="), "{out}");
    lane.responses.push(out);
}

#[tokio::test]
async fn the_python_register_example_takes_a_payment_and_refunds() {
    let python = venv_python();
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    run_example(&mut lane, &python);
    lane.finish();
}

/// grpcio names a Unix socket's path, percent-encoded, as each request's
/// `:authority` (`tmp%2F...%2Fposd.sock`); posd serves it all the same.
#[tokio::test]
async fn the_python_register_example_works_over_the_unix_socket() {
    let python = venv_python();
    let mut lane = Lane::prepare(&[], "");
    let socket = lane.listen_on_unix_socket();
    lane.start_posd();
    assert_eq!(lane.posd_addr, format!("unix:{}", socket.display()));
    lane.ready().await;
    run_example(&mut lane, &python);
    lane.finish();
}
