//! The worked register integration in Python (`examples/register.py`, grpcio)
//! runs against a live posd. grpcio comes from PyPI into a virtualenv under
//! `target/`, made on first use.

use std::path::PathBuf;
use std::process::Command;

use posd_e2e::{Lane, run};

fn venv_python() -> PathBuf {
    let target = posd_e2e::bin("posd").parent().unwrap().parent().unwrap().to_path_buf();
    let venv = target.join("python-example-venv");
    let python = venv.join("bin/python");
    let ready =
        python.exists() && run(Command::new(&python).args(["-c", "import grpc, grpc_tools, grpc_status"])).0.success();
    if !ready {
        let (st, out, err) = run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        assert!(st.success(), "python3 -m venv: {out}{err}");
        let (st, out, err) = run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "grpcio",
            "grpcio-tools",
            "grpcio-status",
        ]));
        assert!(st.success(), "pip install grpcio: {out}{err}");
    }
    python
}

#[tokio::test]
async fn the_python_register_example_takes_a_payment_and_refunds() {
    let python = venv_python();
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/register.py");
    let (st, out, err) = run(Command::new(&python).arg(script).args(["--addr", &lane.posd_addr, "--amount", "12.34"]));
    assert!(st.success(), "examples/register.py failed:\n{out}\n{err}");
    assert!(out.contains("PAYMENT_STATUS_CAPTURED, approved=True"), "{out}");
    assert!(out.contains("bad input is refused: INVALID_ARGUMENT INVALID_FIELD"), "{out}");
    assert!(out.contains("REFUND_STATUS_SUCCEEDED"), "{out}");
    assert!(out.contains("resume later with from_cursor="), "{out}");
    lane.responses.push(out);
    lane.finish();
}
