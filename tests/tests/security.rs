//! Who may call posd, and how posd proves itself to the gateway: the register
//! API over TLS with required client certificates, secrets handed over as
//! systemd credentials, and a gateway that requires posd's certificate.

use pos_proto::terminal as pb;
use posd_e2e::{Lane, TestCa, final_payment, status};
use tonic::Code;

/// A TLS client for posd's API at `addr` with the given settings.
async fn client_with(
    addr: &str,
    tls: tonic::transport::ClientTlsConfig,
) -> pb::payment_terminal_client::PaymentTerminalClient<tonic::transport::Channel> {
    let endpoint = tonic::transport::Channel::from_shared(addr.to_string()).unwrap().tls_config(tls).unwrap();
    // The handshake may fail at connect or at the first call; `connect_lazy`
    // moves every failure to the call, where the test checks it.
    pb::payment_terminal_client::PaymentTerminalClient::new(endpoint.connect_lazy())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tls_api_serves_registers_with_a_certificate_and_refuses_every_other_client() {
    let pki = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new(pki.path(), "posd server CA");
    let register_ca = TestCa::new(pki.path(), "registers CA");
    let rogue_ca = TestCa::new(pki.path(), "rogue CA");
    let credentials = pki.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    // posd's key arrives as a systemd credential; the rest are plain paths.
    let (server_cert, server_key) = server_ca.issue(pki.path(), "posd", "posd lane PC", &["localhost", "127.0.0.1"]);
    std::fs::rename(&server_key, credentials.join("posd_api.key")).unwrap();
    let register1 = register_ca.issue(pki.path(), "register-1", "register-1", &[]);
    let register2 = register_ca.issue(pki.path(), "register-2", "register-2", &[]);
    let rogue = rogue_ca.issue(pki.path(), "rogue", "register-1", &[]);
    let config = format!(
        "[api]\nrefunds_allowed_from = [\"cn=register-1\"]\n[api.tls]\ncert_file = {server_cert:?}\n\
         key_file = \"credential:posd_api.key\"\nclient_ca_file = {:?}\n",
        register_ca.path
    );
    let mut lane = Lane::prepare(&[], &config);
    lane.posd_env.push(("CREDENTIALS_DIRECTORY".into(), credentials.to_string_lossy().into()));
    lane.start_posd();
    assert!(lane.posd_addr.starts_with("https://127.0.0.1:"), "posd announced {}", lane.posd_addr);
    lane.api_tls = Some(server_ca.client_tls(Some(&register1)));
    lane.ready().await;

    // A register with its certificate pays, and the audit names it.
    let p = final_payment(&lane.pay("tls-1", 1234).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured);
    let caller = &p.history.first().expect("history").cause;
    assert!(caller.contains("CN=register-1"), "caller recorded as {caller:?}");

    // Refunds are restricted by certificate name.
    let refund = |who: &(std::path::PathBuf, std::path::PathBuf), key: &str| {
        let tls = server_ca.client_tls(Some(who));
        let (addr, id, key) = (lane.posd_addr.clone(), p.payment_id.clone(), key.to_string());
        async move {
            client_with(&addr, tls)
                .await
                .refund_payment(pb::RefundPaymentRequest {
                    payment_id: id,
                    idempotency_key: key,
                    amount_minor: 100,
                    reason: "test".into(),
                })
                .await
        }
    };
    let denied = refund(&register2, "r-2").await.expect_err("register-2 may not refund");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("cn=register-2"), "{}", denied.message());
    refund(&register1, "r-1").await.expect("register-1 may refund");

    // Without a certificate, with one from another CA (even with the right
    // name), or without TLS at all: no call gets through.
    let probe = pb::GetPaymentRequest { payment_id: p.payment_id.clone() };
    let no_cert = client_with(&lane.posd_addr, server_ca.client_tls(None)).await.get_payment(probe.clone()).await;
    let wrong_ca =
        client_with(&lane.posd_addr, server_ca.client_tls(Some(&rogue))).await.get_payment(probe.clone()).await;
    let plain_addr = lane.posd_addr.replace("https://", "http://");
    let plain = match pb::payment_terminal_client::PaymentTerminalClient::connect(plain_addr).await {
        Ok(mut c) => c.get_payment(probe.clone()).await.map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    for (what, result) in
        [("no certificate", no_cert.map(|_| ())), ("rogue CA", wrong_ca.map(|_| ())), ("plain", plain)]
    {
        // The connection is closed under the call: the status is the
        // client's own, made from the transport error, never posd's answer.
        let e = result.expect_err(what);
        let transport = std::error::Error::source(&e).is_some() || e.code() == Code::Unavailable;
        assert!(transport, "{what}: {e:?}");
    }

    // posctl speaks TLS with the register's files.
    lane.posctl_args = ["--tls-ca", &server_ca.path.to_string_lossy()]
        .into_iter()
        .chain(["--tls-cert", &register1.0.to_string_lossy(), "--tls-key", &register1.1.to_string_lossy()])
        .map(String::from)
        .collect();
    let (st, out, err) = lane.posctl(&["payment", &p.payment_id]);
    assert!(st.success(), "posctl over TLS: {out}{err}");
    assert!(out.contains(&p.payment_id), "{out}");
    assert!(out.contains("  new -> created  payment requested by the register"), "{out}");
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_with_two_common_names_is_refused() {
    use tonic_types::StatusExt;
    let pki = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new(pki.path(), "posd server CA");
    let register_ca = TestCa::new(pki.path(), "registers CA");
    let (server_cert, server_key) = server_ca.issue(pki.path(), "posd", "posd lane PC", &["localhost", "127.0.0.1"]);
    let register1 = register_ca.issue(pki.path(), "register-1", "register-1", &[]);
    // Signed by the registers' CA, but naming two registers: posd used to
    // take the first name, so it passed as register-1, allowed to refund.
    let two_names = register_ca.issue_with_common_names(pki.path(), "two-names", &["register-1", "register-2"], &[]);
    let config = format!(
        "[api]\nrefunds_allowed_from = [\"cn=register-1\"]\n[api.tls]\ncert_file = {server_cert:?}\n\
         key_file = {server_key:?}\nclient_ca_file = {:?}\n",
        register_ca.path
    );
    let mut lane = Lane::prepare(&[], &config);
    lane.start_posd();
    lane.api_tls = Some(server_ca.client_tls(Some(&register1)));
    lane.ready().await;
    let p = final_payment(&lane.pay("tls-two-names", 1234).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured);

    // Every call with the two-name certificate is refused: a read, a
    // payment, and the refund its first name would be allowed.
    let mut client = client_with(&lane.posd_addr, server_ca.client_tls(Some(&two_names))).await;
    let read = client.get_payment(pb::GetPaymentRequest { payment_id: p.payment_id.clone() }).await.map(|_| ());
    let pay = posd_e2e::take(&mut client, "tls-two-names-2", 100).await.map(|_| ());
    let refund = client
        .refund_payment(pb::RefundPaymentRequest {
            idempotency_key: "r-two-names".into(),
            payment_id: p.payment_id.clone(),
            amount_minor: 100,
            reason: "test".into(),
        })
        .await
        .map(|_| ());
    for (what, result) in [("GetPayment", read), ("TakePayment", pay), ("RefundPayment", refund)] {
        let e = result.expect_err(what);
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        let reason = e.get_details_error_info().map(|i| i.reason);
        assert_eq!(reason.as_deref(), Some("AMBIGUOUS_CLIENT_CERTIFICATE"), "{what}: {e:?}");
        assert!(e.message().contains("2 common names"), "{what}: {}", e.message());
    }
    // Nothing was refunded or charged by it; register-1's own certificate still works.
    let after = lane.client().await.get_payment(pb::GetPaymentRequest { payment_id: p.payment_id }).await.unwrap();
    assert_eq!(after.into_inner().refunded_minor, 0);
    assert_eq!(lane.ledger().len(), 1);
    lane.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn posd_presents_its_client_certificate_from_a_credential_to_a_gateway_that_requires_one() {
    let pki = tempfile::tempdir().unwrap();
    let chain_ca = TestCa::new(pki.path(), "chain CA");
    let credentials = pki.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let (cert, key) = chain_ca.issue(&credentials, "store-0001", "store-0001", &[]);
    std::fs::rename(&cert, credentials.join("posd_gateway.pem")).unwrap();
    std::fs::rename(&key, credentials.join("posd_gateway.key")).unwrap();

    // Without its certificate posd cannot reach this gateway...
    let mut lane = Lane::start_with_tls_gateway(Some(&chain_ca.path), "");
    lane.start_posd();
    lane.reader_ready().await;
    let mut client = lane.client().await;
    let sync = posd_e2e::eventually("the gateway probe to fail", async || {
        let s = client.get_sync_status(pb::GetSyncStatusRequest {}).await.ok()?.into_inner();
        (!s.last_error.is_empty()).then_some(s)
    })
    .await;
    assert!(sync.last_online_at.is_none(), "posd reached a gateway that requires a client certificate: {sync:?}");

    // ...with it, handed over as systemd credentials, it pays online.
    lane.kill_posd();
    lane.gateway_config =
        "client_cert_file = \"credential:posd_gateway.pem\"\nclient_key_file = \"credential:posd_gateway.key\"\n"
            .into();
    lane.posd_env.push(("CREDENTIALS_DIRECTORY".into(), credentials.to_string_lossy().into()));
    lane.start_posd();
    lane.ready().await;
    let p = final_payment(&lane.pay("gw-mtls", 1234).await);
    assert_eq!(status(&p), pb::PaymentStatus::Captured);
    assert_eq!(lane.ledger().len(), 1);
    lane.finish();
}

#[test]
fn a_credential_posd_was_not_given_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("posd.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\nlisten = \"127.0.0.1:0\"\n[gateway]\nurl = \"https://gateway.example\"\n\
             client_cert_file = \"credential:posd_gateway.pem\"\nclient_key_file = \"credential:posd_gateway.key\"\n\
             [[lane]]\nid = \"lane-1\"\ncurrency = \"EUR\"\nreader = {{ tcp = \"127.0.0.1:9\" }}\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let (st, out, err) = posd_e2e::run(
        std::process::Command::new(posd_e2e::bin("posd")).arg("--config").arg(&cfg).env_remove("CREDENTIALS_DIRECTORY"),
    );
    assert!(!st.success(), "posd started without its credential: {out}");
    assert!(err.contains("credential:posd_gateway.pem") && err.contains("LoadCredential"), "{err}");
}
