//! posd protects its own state at start: a second posd does not take the API
//! socket a live posd serves, and a state directory that lost its database
//! is not taken for a new install.

use pos_proto::terminal as pb;
use posd_e2e::{Lane, final_payment, status};

#[tokio::test]
async fn a_second_posd_on_the_same_socket_refuses_to_start_and_the_first_still_answers() {
    let mut first = Lane::prepare(&[], "");
    let socket = first.listen_on_unix_socket();
    first.start_posd();
    first.ready().await;

    // Another state directory (with its own gateway and reader), the same socket.
    let mut second = Lane::prepare(&[], "");
    second.listen = first.listen.clone();
    let exit = second.run_posd_until_exit().await;
    assert_eq!(exit.code(), Some(2), "a refused start exits as other failed starts do");
    let log = std::fs::read_to_string(second.posd_log()).unwrap();
    assert!(log.contains(&format!("another posd is serving {}", socket.display())), "{log}");
    assert!(!second.state_dir().join("posd.db").exists(), "refused before it opened a database");

    assert!(socket.exists(), "the socket stays");
    let p = final_payment(&first.pay("after-the-second-start", 1_500).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured, "the first posd still answers: {p:?}");
    let (st, out, err) = first.posctl(&["status", "--json"]);
    assert!(st.success() && out.contains("\"reader_connected\": true"), "{out}{err}");

    // A posd that was killed leaves its socket behind; the next start takes it over.
    first.kill_posd();
    assert!(socket.exists());
    first.start_posd();
    first.ready().await;
    first.finish();
}

#[tokio::test]
async fn a_state_directory_whose_database_was_emptied_refuses_to_start() {
    let mut lane = Lane::start(&[]);
    lane.ready().await;
    lane.pay("before-the-loss", 1_200).await;
    let (db, marker) = (lane.state_dir().join("posd.db"), lane.state_dir().join("posd.db.initialized"));
    assert!(marker.exists(), "posd marks a state directory that holds its database");
    lane.terminate_posd();
    assert!(lane.wait_posd_exit().await.success());

    // The database emptied while posd was stopped (a failed restore, a disk fault).
    std::fs::File::options().write(true).open(&db).unwrap().set_len(0).unwrap();
    for f in ["posd.db-wal", "posd.db-shm"] {
        let _ = std::fs::remove_file(lane.state_dir().join(f));
    }
    let exit = lane.run_posd_until_exit().await;
    assert_eq!(exit.code(), Some(2), "a refused start exits as other failed starts do");
    let log = std::fs::read_to_string(lane.posd_log()).unwrap();
    assert!(log.contains(&format!("{} is empty (0 bytes)", db.display())), "{log}");
    assert!(log.contains("posd backup"), "says how to restore: {log}");
    assert!(log.contains(&format!("delete {}", marker.display())), "says how to start over: {log}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "left as it was, for whoever restores it");

    // Starting over on purpose: the marker deleted.
    std::fs::remove_file(&marker).unwrap();
    lane.start_posd();
    lane.ready().await;
    assert!(marker.exists());
    let (st, out, err) = lane.posctl(&["payments", "--json"]);
    assert!(st.success(), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["payments"].as_array().map(Vec::len), Some(0), "a new, empty database: {out}");
    lane.finish();
}

/// A development machine without the group `posd-clients` hears about it
/// once per state directory, not at every start.
#[tokio::test]
async fn a_missing_clients_group_is_warned_about_once() {
    let mut lane = Lane::prepare(&[], "");
    lane.listen_on_unix_socket();
    for _ in 0..2 {
        lane.start_posd();
        lane.ready().await;
        lane.terminate_posd();
        assert!(lane.wait_posd_exit().await.success());
    }
    let log = std::fs::read_to_string(lane.posd_log()).unwrap();
    let warned = log.lines().filter(|l| l.contains("WARN") && l.contains("group posd-clients does not exist")).count();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    if group.lines().any(|l| l.starts_with("posd-clients:")) {
        assert_eq!(warned, 0, "the group exists here: nothing to warn about\n{log}");
    } else {
        assert_eq!(warned, 1, "two starts, one warning\n{log}");
    }
    lane.finish();
}
