//! The simulated gateway refuses card data moved to another payment or
//! replayed under another key, and replays its first answer for a repeated key.

use pos_cardcrypt::{BaseKey, Binding, CardData};
use pos_proto::gateway::gateway_client::GatewayClient;
use pos_proto::gateway::{AuthorizeRequest, GetTransactionRequest, Outcome, ReverseRequest};

fn blob(amount: i64, key: &str) -> Vec<u8> {
    let card = CardData { pan: "4242424242424242".into(), expiry: "3012".into(), track2_equivalent: "x".into() };
    let binding = Binding { amount_minor: amount, currency: "EUR", terminal_id: "s/lane-1", transaction_key: key };
    pos_cardcrypt::encrypt(&BaseKey::test_key(), "SIM-1", &card, &binding)
}

fn request(key: &str, amount: i64, encrypted_card: Vec<u8>) -> AuthorizeRequest {
    AuthorizeRequest {
        transaction_key: key.into(),
        terminal_id: "s/lane-1".into(),
        amount_minor: amount,
        currency: "EUR".into(),
        encrypted_card,
        masked_pan: "424242******4242".into(),
        brand: "visa".into(),
        entry_mode: 1,
        capture: true,
    }
}

#[tokio::test]
async fn rebound_replayed_and_repeated_requests() {
    let dir = tempfile::tempdir().unwrap();
    let sim = gateway_sim::start(gateway_sim::Options {
        listen: "127.0.0.1:0".into(),
        control: "127.0.0.1:0".into(),
        db: dir.path().join("ledger.db"),
        base_key: BaseKey::test_key(),
        tls: None,
        client_ca: None,
    })
    .await
    .unwrap();
    let mut gw = GatewayClient::connect(format!("http://{}", sim.listen_addr)).await.unwrap();
    let outcome = |t: &pos_proto::gateway::Transaction| Outcome::try_from(t.outcome).unwrap();

    let first = gw.authorize(request("k1", 1234, blob(1234, "k1"))).await.unwrap().into_inner().transaction.unwrap();
    assert_eq!(outcome(&first), Outcome::Approved);
    // Same key, same request: the first answer again, no new charge.
    let again = gw.authorize(request("k1", 1234, blob(1234, "k1"))).await;
    // A fresh encryption has a fresh nonce, so it is a different request under the same key.
    assert_eq!(again.unwrap_err().code(), tonic::Code::AlreadyExists);
    let b = blob(1234, "k2");
    let t = gw.authorize(request("k2", 1234, b.clone())).await.unwrap().into_inner().transaction.unwrap();
    let replay = gw.authorize(request("k2", 1234, b.clone())).await.unwrap().into_inner().transaction.unwrap();
    assert_eq!(t, replay, "an identical repeat replays the first answer");
    // The same blob under another key: refused as replayed card data.
    let t = gw.authorize(request("k3", 1234, b)).await.unwrap().into_inner().transaction.unwrap();
    assert_eq!((outcome(&t), t.decline_code.as_str()), (Outcome::Declined, "card_data_replayed"));
    // A blob bound to another amount: it does not decrypt.
    let t = gw.authorize(request("k4", 9999, blob(1234, "k4"))).await.unwrap().into_inner().transaction.unwrap();
    assert_eq!((outcome(&t), t.decline_code.as_str()), (Outcome::Declined, "invalid_card_data"));
    // A reversed key is a tombstone: a late authorization under it is refused.
    let rev = ReverseRequest {
        transaction_key: "k5".into(),
        reason: "timeout".into(),
        amount_minor: 500,
        currency: "EUR".into(),
        terminal_id: "s/lane-1".into(),
    };
    assert_eq!(outcome(&gw.reverse(rev).await.unwrap().into_inner()), Outcome::Reversed);
    let late = gw.authorize(request("k5", 500, blob(500, "k5"))).await.unwrap().into_inner().transaction.unwrap();
    assert_eq!(outcome(&late), Outcome::Reversed);
    let status = gw.get_transaction(GetTransactionRequest { transaction_key: "k5".into() }).await.unwrap().into_inner();
    assert_eq!(outcome(&status), Outcome::Reversed);
    let missing = gw.get_transaction(GetTransactionRequest { transaction_key: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}
