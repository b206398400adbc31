//! The message model against real-looking documents: the shapes of Adyen's
//! Terminal API (its Node library's typings and test responses), written
//! here as our own fixtures. Reading is lenient, writing exact.

use pos_nexo::codes::{
    DocumentQualifier, EntryMode, ErrorCondition, GlobalStatus, MessageCategory, MessageClass, MessageType,
    PaymentInstrumentType, PaymentType, ReconciliationType, ResultType, ReversalReason, TransactionType,
};
use pos_nexo::diagnosis::DiagnosisRequest;
use pos_nexo::payment::{AmountsReq, PaymentData, PaymentRequest, PaymentTransaction, SaleData};
use pos_nexo::reconciliation::ReconciliationRequest;
use pos_nexo::reversal::{OriginalPoiTransaction, ReversalRequest};
use pos_nexo::service_id::{COUNTER_SPAN, MAX_LEN};
use pos_nexo::status::{AbortRequest, MERCHANT_ABORT, StatusOutcome, TransactionStatusRequest};
use pos_nexo::{
    Decimal, MessageHeader, MessageReference, RequestBody, ResponseBody, SaleToPoiRequest, SaleToPoiResponse,
    ServiceId, ServiceIdError, TransactionIdentification,
};

const SALE_ID: &str = "POSD-lane-1";
const POI_ID: &str = "V400m-324688179";

fn header(category: MessageCategory, counter: u64) -> MessageHeader {
    MessageHeader::request(category, &ServiceId::from_counter(counter), SALE_ID, POI_ID)
}

fn payment_request() -> SaleToPoiRequest {
    SaleToPoiRequest {
        header: header(MessageCategory::Payment, 1),
        body: PaymentRequest {
            sale_data: SaleData {
                sale_transaction_id: TransactionIdentification {
                    transaction_id: "01JF3Q5W7Y0000000000000000".into(),
                    time_stamp: "2026-12-07T10:00:00Z".into(),
                },
                sale_to_acquirer_data: Some("tenderOption=AskGratuity".into()),
                ..SaleData::default()
            },
            payment_transaction: PaymentTransaction { amounts_req: AmountsReq::new("EUR", 2500).unwrap() },
            payment_data: Some(PaymentData { payment_type: Some(PaymentType::Normal) }),
        }
        .into(),
    }
}

/// Reads a vector's plaintext (written by the reference library).
fn vector_plaintext(name: &str) -> String {
    let path = format!("{}/tests/vectors/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let vector: serde_json::Value = serde_json::from_str(&text).unwrap();
    vector["plaintext"].as_str().unwrap().to_owned()
}

#[test]
fn a_payment_request_is_written_with_the_data_dictionarys_names_and_an_exact_amount() {
    let text = serde_json::to_string(&payment_request()).unwrap();
    let expected = concat!(
        r#"{"SaleToPOIRequest":{"MessageHeader":{"ProtocolVersion":"3.0","MessageClass":"Service","#,
        r#""MessageCategory":"Payment","MessageType":"Request","ServiceID":"0000000001","SaleID":"POSD-lane-1","#,
        r#""POIID":"V400m-324688179"},"PaymentRequest":{"SaleData":{"SaleTransactionID":{"#,
        r#""TransactionID":"01JF3Q5W7Y0000000000000000","TimeStamp":"2026-12-07T10:00:00Z"},"#,
        r#""SaleToAcquirerData":"tenderOption=AskGratuity"},"PaymentTransaction":{"AmountsReq":{"#,
        r#""Currency":"EUR","RequestedAmount":25}},"PaymentData":{"PaymentType":"Normal"}}}}"#
    );
    assert_eq!(text, expected);
    // Byte for byte what the reference library encrypted for the same request.
    assert_eq!(text, vector_plaintext("payment_request"));
    let back: SaleToPoiRequest = serde_json::from_str(&text).unwrap();
    assert_eq!(back, payment_request());
}

#[test]
fn a_response_the_reference_library_wrote_reads_and_writes_back_byte_for_byte() {
    for name in ["payment_response", "status_not_found_aligned"] {
        let text = vector_plaintext(name);
        let response: SaleToPoiResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&response).unwrap(), text, "{name}");
    }
}

/// An approved payment as Adyen's terminals answer it (the shape of the
/// Node library's sync test response), with fields posd does not read.
const APPROVED: &str = r#"{
  "SaleToPOIResponse": {
    "MessageHeader": {"MessageCategory": "Payment", "MessageClass": "Service", "MessageType": "Response",
                      "POIID": "P400Plus-275039202", "ProtocolVersion": "3.0", "SaleID": "001", "ServiceID": "001"},
    "PaymentResponse": {
      "POIData": {"POIReconciliationID": "1000",
                  "POITransactionID": {"TimeStamp": "2019-04-29T00:00:00.000Z",
                                       "TransactionID": "4r7i001556529591000.8515565295894301"}},
      "PaymentReceipt": [{
        "DocumentQualifier": "CashierReceipt",
        "OutputContent": {"OutputFormat": "Text", "OutputText": [
          {"CharacterStyle": "Bold", "EndOfLineFlag": true, "Text": "key=header1"},
          {"EndOfLineFlag": true, "Text": "name=Date&value=29%2f04%2f19&key=txdate"},
          {"CharacterStyle": "Bold", "EndOfLineFlag": true, "Text": "name=TOTAL&value=%e2%82%ac%c2%a01.00&key=totalAmount"}
        ]},
        "RequiredSignatureFlag": false
      }],
      "PaymentResult": {
        "AmountsResp": {"AuthorizedAmount": 1, "Currency": "EUR"},
        "OnlineFlag": true,
        "PaymentAcquirerData": {"AcquirerPOIID": "P400Plus-123456789",
                                "AcquirerTransactionID": {"TimeStamp": "2019-04-29T09:19:51.000Z",
                                                          "TransactionID": "8515565295894301"},
                                "ApprovalCode": "123456", "MerchantID": "TestMerchant"},
        "PaymentInstrumentData": {
          "CardData": {"EntryMode": ["Tapped"], "MaskedPan": "411111 **** 1111", "PaymentBrand": "mc",
                       "SensitiveCardData": {"ExpiryDate": "1225"}},
          "PaymentInstrumentType": "Card"
        }
      },
      "Response": {"AdditionalResponse": "tid=75039202&pspReference=8515565295894301&refusalReason=APPROVED&cardHolderName=N%2fA",
                   "Result": "Success"},
      "SaleData": {"SaleTransactionID": {"TimeStamp": "2019-04-29T09:19:49.000Z", "TransactionID": "001"}}
    }
  }
}"#;

#[test]
fn an_approved_payment_gives_every_field_posd_keeps() {
    let response: SaleToPoiResponse = serde_json::from_str(APPROVED).unwrap();
    assert_eq!(response.header.message_type, MessageType::Response);
    assert_eq!(response.header.message_class, MessageClass::Service);
    assert_eq!(response.header.poi_id, "P400Plus-275039202");
    assert_eq!(response.header.service_id.as_deref(), Some("001"));
    let ResponseBody::Payment(payment) = &response.body else { panic!("{:?}", response.body) };
    assert_eq!(payment.response.result, ResultType::Success);
    assert_eq!(payment.response.error_condition, None);
    // Terminal text is scrubbed by the one masking rule: a run of 13 or
    // more digits may be a card number, so a 16-digit reference is masked
    // like one (posd keys reversals on the
    // POITransactionID, which is kept as sent).
    assert_eq!(payment.response.additional("pspReference").as_deref(), Some("851556******4301"));
    assert_eq!(payment.response.additional("cardHolderName").as_deref(), Some("N/A"));
    assert_eq!(payment.response.additional("absent"), None);
    let poi = payment.poi_data.as_ref().unwrap();
    assert_eq!(poi.poi_transaction_id.transaction_id, "4r7i001556529591000.8515565295894301");
    assert_eq!(poi.poi_transaction_id.time_stamp, "2019-04-29T00:00:00.000Z");
    let result = payment.payment_result.as_ref().unwrap();
    let amounts = result.amounts_resp.as_ref().unwrap();
    assert_eq!(amounts.authorized_amount.unwrap().to_minor("EUR"), Ok(100));
    assert_eq!(amounts.currency.as_deref(), Some("EUR"));
    let card = result.card().unwrap();
    assert_eq!(card.masked_pan.as_deref(), Some("411111 **** 1111"));
    assert_eq!(card.payment_brand.as_deref(), Some("mc"));
    assert_eq!(card.entry_mode, vec![EntryMode::Tapped]);
    assert_eq!(
        result.payment_instrument_data.as_ref().unwrap().payment_instrument_type,
        Some(PaymentInstrumentType::Card)
    );
    let acquirer = result.payment_acquirer_data.as_ref().unwrap();
    assert_eq!(acquirer.approval_code.as_deref(), Some("123456"));
    assert_eq!(acquirer.acquirer_transaction_id.as_ref().unwrap().transaction_id, "8515565295894301");
    assert_eq!(payment.payment_receipt.len(), 1);
    assert_eq!(payment.payment_receipt[0].document_qualifier, DocumentQualifier::CashierReceipt);
    assert!(!payment.payment_receipt[0].required_signature_flag);
    assert_eq!(payment.payment_receipt[0].output_content.output_text.len(), 3);
    // The expiry date the terminal sent is not read, so it is not written either.
    let written = serde_json::to_string(&response).unwrap();
    assert!(!written.contains("ExpiryDate") && !written.contains("1225"), "{written}");
    let again: SaleToPoiResponse = serde_json::from_str(&written).unwrap();
    assert_eq!(again, response);
}

#[test]
fn unknown_codes_fields_and_bodies_are_kept_or_ignored_never_a_failure() {
    let text = r#"{"SaleToPOIResponse": {
        "Unexpected": [1, 2, {"x": null}],
        "MessageHeader": {"MessageCategory": "Payment", "MessageClass": "Service", "MessageType": "Response",
                          "POIID": "V400m-1", "Gadget": true},
        "PaymentResponse": {
          "Response": {"Result": "Maybe", "ErrorCondition": "CardBlocked", "Extra": "x"},
          "PaymentResult": {"PaymentType": "Instalment",
                            "PaymentInstrumentData": {"CardData": {"EntryMode": ["Telepathy", "ICC", "Icc"]}}},
          "LoyaltyResult": [{"LoyaltyAccount": {}}]
        }},
        "Trailer": "ignored"}"#;
    let response: SaleToPoiResponse = serde_json::from_str(text).unwrap();
    let ResponseBody::Payment(payment) = &response.body else { panic!("{:?}", response.body) };
    assert_eq!(payment.response.result, ResultType::Other("Maybe".into()));
    assert_eq!(payment.response.error_condition, Some(ErrorCondition::Other("CardBlocked".into())));
    let result = payment.payment_result.as_ref().unwrap();
    assert_eq!(result.payment_type, Some(PaymentType::Other("Instalment".into())));
    assert_eq!(
        result.card().unwrap().entry_mode,
        vec![EntryMode::Other("Telepathy".into()), EntryMode::Icc, EntryMode::Icc]
    );
    // Unknown values are written back as they came; known ones as the dictionary spells them.
    let written = serde_json::to_string(&response).unwrap();
    assert!(written.contains(r#""Result":"Maybe","ErrorCondition":"CardBlocked""#), "{written}");
    assert!(written.contains(r#""EntryMode":["Telepathy","ICC","ICC"]"#), "{written}");
    assert!(!written.contains("Gadget") && !written.contains("Unexpected"), "{written}");

    // A body this crate does not model is named, not refused.
    let event = r#"{"SaleToPOIRequest": {"MessageHeader": {"MessageCategory": "Event", "MessageClass": "Event",
        "MessageType": "Notification", "POIID": "V400m-1"}, "EventNotification": {"EventToNotify": "Reject"}}}"#;
    let request: SaleToPoiRequest = serde_json::from_str(event).unwrap();
    assert_eq!(request.body, RequestBody::Other("EventNotification".into()));
    assert_eq!(request.header.message_type, MessageType::Notification);
}

#[test]
fn wrong_pin_is_written_as_the_dictionary_spells_it_and_read_either_way() {
    assert_eq!(serde_json::to_string(&ErrorCondition::WrongPin).unwrap(), r#""WrongPIN""#);
    for spelling in [r#""WrongPIN""#, r#""WrongPin""#] {
        assert_eq!(serde_json::from_str::<ErrorCondition>(spelling).unwrap(), ErrorCondition::WrongPin);
    }
    assert_eq!(serde_json::from_str::<GlobalStatus>(r#""Ok""#).unwrap(), GlobalStatus::Ok);
    assert_eq!(serde_json::to_string(&GlobalStatus::Ok).unwrap(), r#""OK""#);
    for (condition, wire) in [
        (ErrorCondition::Aborted, "Aborted"),
        (ErrorCondition::Busy, "Busy"),
        (ErrorCondition::Cancel, "Cancel"),
        (ErrorCondition::DeviceOut, "DeviceOut"),
        (ErrorCondition::InProgress, "InProgress"),
        (ErrorCondition::NotFound, "NotFound"),
        (ErrorCondition::Refusal, "Refusal"),
        (ErrorCondition::UnavailableService, "UnavailableService"),
    ] {
        assert_eq!(condition.as_str(), wire);
        assert_eq!(ErrorCondition::from_wire(wire), condition);
    }
}

#[test]
fn a_message_without_header_or_body_or_still_encrypted_is_refused_with_a_reason() {
    let no_header = r#"{"SaleToPOIResponse": {"PaymentResponse": {"Response": {"Result": "Success"}}}}"#;
    let err = serde_json::from_str::<SaleToPoiResponse>(no_header).unwrap_err().to_string();
    assert!(err.contains("MessageHeader"), "{err}");
    let encrypted = r#"{"SaleToPOIRequest": {"MessageHeader": {"MessageCategory": "Payment", "MessageClass": "Service",
        "MessageType": "Request", "POIID": "V400m-1"}, "NexoBlob": "AAAA", "SecurityTrailer": {}}}"#;
    let err = serde_json::from_str::<SaleToPoiRequest>(encrypted).unwrap_err().to_string();
    assert!(err.contains("NexoBlob"), "{err}");
    let wrong_direction = serde_json::to_string(&payment_request()).unwrap();
    let err = serde_json::from_str::<SaleToPoiResponse>(&wrong_direction).unwrap_err().to_string();
    assert!(err.contains("SaleToPOIResponse"), "{err}");
}

#[test]
fn an_amount_the_currency_cannot_hold_or_a_negative_one_is_refused_not_rounded() {
    let with = |amount: &str| {
        format!(
            r#"{{"SaleToPOIResponse": {{"MessageHeader": {{"MessageCategory": "Payment", "MessageClass": "Service",
            "MessageType": "Response", "POIID": "V400m-1"}}, "PaymentResponse": {{"Response": {{"Result": "Success"}},
            "PaymentResult": {{"AmountsResp": {{"Currency": "EUR", "AuthorizedAmount": {amount}}}}}}}}}}}"#
        )
    };
    let read = |amount: &str| serde_json::from_str::<SaleToPoiResponse>(&with(amount));
    let authorized = |response: SaleToPoiResponse| {
        let ResponseBody::Payment(payment) = response.body else { panic!() };
        payment.payment_result.unwrap().amounts_resp.unwrap().authorized_amount.unwrap()
    };
    assert_eq!(authorized(read("4.35").unwrap()).to_minor("EUR"), Ok(435));
    assert_eq!(authorized(read("1.15").unwrap()).to_minor("EUR"), Ok(115));
    assert!(authorized(read("1.005").unwrap()).to_minor("EUR").is_err());
    for bad in ["-1", "1e2", "\"1.00\"", "null2"] {
        assert!(read(bad).is_err(), "{bad}");
    }
    // JSON null is an absent amount.
    let ResponseBody::Payment(payment) = read("null").unwrap().body else { panic!() };
    assert_eq!(payment.payment_result.unwrap().amounts_resp.unwrap().authorized_amount, None);
}

#[test]
fn transaction_status_answers_tell_in_progress_not_found_and_the_repeated_payment() {
    let status = |inner: &str| {
        let text = format!(
            r#"{{"SaleToPOIResponse": {{"MessageHeader": {{"MessageCategory": "TransactionStatus",
            "MessageClass": "Service", "MessageType": "Response", "POIID": "V400m-1", "SaleID": "POSD-lane-1",
            "ServiceID": "0000000002"}}, "TransactionStatusResponse": {inner}}}}}"#
        );
        let response: SaleToPoiResponse = serde_json::from_str(&text).unwrap();
        let ResponseBody::TransactionStatus(status) = response.body else { panic!("{:?}", response.body) };
        status
    };
    let in_progress = status(r#"{"Response": {"Result": "Failure", "ErrorCondition": "InProgress"}}"#);
    assert_eq!(in_progress.payment_outcome(), StatusOutcome::InProgress);
    let not_found = status(r#"{"Response": {"Result": "Failure", "ErrorCondition": "NotFound"}}"#);
    assert_eq!(not_found.payment_outcome(), StatusOutcome::NotFound);
    let busy = status(r#"{"Response": {"Result": "Failure", "ErrorCondition": "Busy"}}"#);
    assert_eq!(busy.payment_outcome(), StatusOutcome::Unsettled);
    let repeated = status(
        r#"{"Response": {"Result": "Success"},
            "MessageReference": {"MessageCategory": "Payment", "SaleID": "POSD-lane-1", "ServiceID": "0000000001"},
            "RepeatedMessageResponse": {
              "MessageHeader": {"MessageCategory": "Payment", "MessageClass": "Service", "MessageType": "Response",
                                "POIID": "V400m-1", "SaleID": "POSD-lane-1", "ServiceID": "0000000001"},
              "RepeatedResponseMessageBody": {"PaymentResponse": {
                "Response": {"Result": "Failure", "ErrorCondition": "Refusal", "AdditionalResponse": "refusalReason=Not%20enough%20balance"},
                "POIData": {"POITransactionID": {"TransactionID": "8815573255107661", "TimeStamp": "2026-12-07T10:00:31Z"}},
                "SaleData": {"SaleTransactionID": {"TransactionID": "01JF3Q5W7Y0000000000000000", "TimeStamp": "2026-12-07T10:00:00Z"}}
              }}}}"#,
    );
    let StatusOutcome::Repeated(payment) = repeated.payment_outcome() else { panic!("{repeated:?}") };
    assert_eq!(payment.response.error_condition, Some(ErrorCondition::Refusal));
    assert_eq!(payment.response.additional("refusalReason").as_deref(), Some("Not enough balance"));
    assert_eq!(payment.poi_data.as_ref().unwrap().poi_transaction_id.transaction_id, "8815573255107661");
    let reference = repeated.message_reference.as_ref().unwrap();
    assert_eq!(reference.service_id.as_deref(), Some("0000000001"));
    assert_eq!(reference.message_category, Some(MessageCategory::Payment));
}

#[test]
fn transaction_status_abort_reversal_diagnosis_and_reconciliation_requests_are_written_exactly() {
    let service = ServiceId::from_counter(1);
    let cases: Vec<(SaleToPoiRequest, &str)> = vec![
        (
            SaleToPoiRequest {
                header: header(MessageCategory::TransactionStatus, 2),
                body: TransactionStatusRequest {
                    message_reference: Some(MessageReference::payment(&service, SALE_ID)),
                    receipt_reprint_flag: Some(true),
                    document_qualifier: vec![DocumentQualifier::CashierReceipt, DocumentQualifier::CustomerReceipt],
                }
                .into(),
            },
            concat!(
                r#""TransactionStatusRequest":{"MessageReference":{"MessageCategory":"Payment","ServiceID":"0000000001","#,
                r#""SaleID":"POSD-lane-1"},"ReceiptReprintFlag":true,"DocumentQualifier":["CashierReceipt","CustomerReceipt"]}"#
            ),
        ),
        (
            SaleToPoiRequest {
                header: header(MessageCategory::Abort, 3),
                body: AbortRequest {
                    message_reference: MessageReference::payment(&service, SALE_ID),
                    abort_reason: MERCHANT_ABORT.into(),
                }
                .into(),
            },
            concat!(
                r#""AbortRequest":{"MessageReference":{"MessageCategory":"Payment","ServiceID":"0000000001","#,
                r#""SaleID":"POSD-lane-1"},"AbortReason":"MerchantAbort"}"#
            ),
        ),
        (
            SaleToPoiRequest {
                header: header(MessageCategory::Reversal, 4),
                body: ReversalRequest {
                    original_poi_transaction: OriginalPoiTransaction {
                        poi_transaction_id: TransactionIdentification {
                            transaction_id: "8815573255107661".into(),
                            time_stamp: "2026-12-07T10:00:31Z".into(),
                        },
                        ..OriginalPoiTransaction::default()
                    },
                    reversal_reason: ReversalReason::MerchantCancel,
                    reversed_amount: Some(Decimal::from_minor(550, "EUR").unwrap()),
                    sale_data: None,
                }
                .into(),
            },
            concat!(
                r#""ReversalRequest":{"OriginalPOITransaction":{"POITransactionID":{"TransactionID":"8815573255107661","#,
                r#""TimeStamp":"2026-12-07T10:00:31Z"}},"ReversalReason":"MerchantCancel","ReversedAmount":5.5}"#
            ),
        ),
        (
            SaleToPoiRequest {
                header: header(MessageCategory::Diagnosis, 5),
                body: DiagnosisRequest { host_diagnosis_flag: Some(true), poi_id: None }.into(),
            },
            r#""DiagnosisRequest":{"HostDiagnosisFlag":true}"#,
        ),
        (
            SaleToPoiRequest {
                header: header(MessageCategory::Reconciliation, 6),
                body: ReconciliationRequest {
                    reconciliation_type: ReconciliationType::SaleReconciliation,
                    poi_reconciliation_id: None,
                }
                .into(),
            },
            r#""ReconciliationRequest":{"ReconciliationType":"SaleReconciliation"}"#,
        ),
    ];
    for (request, body) in cases {
        let text = serde_json::to_string(&request).unwrap();
        let category = request.header.message_category.as_str();
        let service_id = request.header.service_id.as_deref().unwrap();
        let expected = [
            r#"{"SaleToPOIRequest":{"MessageHeader":{"ProtocolVersion":"3.0","MessageClass":"Service","MessageCategory":""#,
            category,
            r#"","MessageType":"Request","ServiceID":""#,
            service_id,
            r#"","SaleID":"POSD-lane-1","POIID":"V400m-324688179"},"#,
            body,
            "}}",
        ]
        .concat();
        assert_eq!(text, expected);
        let back: SaleToPoiRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, request);
    }
}

#[test]
fn a_refund_without_reference_is_a_payment_of_type_refund() {
    let mut request = payment_request();
    let RequestBody::Payment(payment) = &mut request.body else { panic!() };
    assert_eq!(payment.payment_type(), PaymentType::Normal);
    payment.payment_data = Some(PaymentData { payment_type: Some(PaymentType::Refund) });
    let text = serde_json::to_string(&request).unwrap();
    assert!(text.contains(r#""PaymentData":{"PaymentType":"Refund"}"#), "{text}");
    let back: SaleToPoiRequest = serde_json::from_str(&text).unwrap();
    let RequestBody::Payment(payment) = back.body else { panic!() };
    assert_eq!(payment.payment_type(), PaymentType::Refund);
    // Absent PaymentData is a sale.
    let RequestBody::Payment(mut sale) = payment_request().body else { panic!() };
    sale.payment_data = None;
    assert_eq!(sale.payment_type(), PaymentType::Normal);
}

#[test]
fn diagnosis_and_reconciliation_answers_read_status_and_totals() {
    let diagnosis = r#"{"SaleToPOIResponse": {"MessageHeader": {"MessageCategory": "Diagnosis", "MessageClass": "Service",
        "MessageType": "Response", "POIID": "V400m-1"}, "DiagnosisResponse": {"Response": {"Result": "Success"},
        "POIStatus": {"GlobalStatus": "OK", "CommunicationOKFlag": true, "PEDOKFlag": true},
        "HostStatus": [{"AcquirerID": "TestAcquirer", "IsReachableFlag": false}]}}}"#;
    let response: SaleToPoiResponse = serde_json::from_str(diagnosis).unwrap();
    let ResponseBody::Diagnosis(d) = &response.body else { panic!("{:?}", response.body) };
    assert_eq!(d.poi_status.as_ref().unwrap().global_status, GlobalStatus::Ok);
    assert_eq!(d.poi_status.as_ref().unwrap().communication_ok_flag, Some(true));
    assert_eq!(d.host_status[0].acquirer_id, "TestAcquirer");
    assert_eq!(d.host_status[0].is_reachable_flag, Some(false));
    assert_eq!(response.body.response().unwrap().result, ResultType::Success);

    let reconciliation = r#"{"SaleToPOIResponse": {"MessageHeader": {"MessageCategory": "Reconciliation",
        "MessageClass": "Service", "MessageType": "Response", "POIID": "V400m-1"}, "ReconciliationResponse": {
        "Response": {"Result": "Success"}, "ReconciliationType": "SaleReconciliation", "POIReconciliationID": "1000",
        "TransactionTotals": [
          {"PaymentInstrumentType": "Card", "CardBrand": "mc", "PaymentCurrency": "EUR", "PaymentTotals": [
            {"TransactionType": "Debit", "TransactionCount": 3, "TransactionAmount": 125.5},
            {"TransactionType": "Credit", "TransactionCount": 1, "TransactionAmount": 10}]},
          {"PaymentInstrumentType": "Card", "CardBrand": "visa", "PaymentCurrency": "JPY", "PaymentTotals": [
            {"TransactionType": "ReverseDebit", "TransactionCount": 1, "TransactionAmount": 1200}]}]}}}"#;
    let response: SaleToPoiResponse = serde_json::from_str(reconciliation).unwrap();
    let ResponseBody::Reconciliation(r) = &response.body else { panic!("{:?}", response.body) };
    assert_eq!(r.reconciliation_type, Some(ReconciliationType::SaleReconciliation));
    assert_eq!(r.poi_reconciliation_id.as_deref(), Some("1000"));
    let totals: Vec<(String, TransactionType, u64, i64)> = r
        .transaction_totals
        .iter()
        .flat_map(|group| {
            let currency = group.payment_currency.clone().unwrap();
            let brand = group.card_brand.clone().unwrap();
            group.payment_totals.iter().map(move |t| {
                (
                    brand.clone(),
                    t.transaction_type.clone(),
                    t.transaction_count,
                    t.transaction_amount.to_minor(&currency).unwrap(),
                )
            })
        })
        .collect();
    assert_eq!(
        totals,
        vec![
            ("mc".to_owned(), TransactionType::Debit, 3, 12550),
            ("mc".to_owned(), TransactionType::Credit, 1, 1000),
            ("visa".to_owned(), TransactionType::ReverseDebit, 1, 1200),
        ]
    );
}

#[test]
fn the_answer_header_mirrors_the_request_header() {
    let request = header(MessageCategory::Payment, 9);
    let answer = request.response();
    assert_eq!(answer.message_type, MessageType::Response);
    assert_eq!(MessageHeader { message_type: MessageType::Request, ..answer }, request);
}

#[test]
fn service_ids_are_one_to_ten_ascii_alphanumerics_made_from_a_counter() {
    for good in ["1", "0000000001", "AbC123xyz0", "Z"] {
        assert_eq!(ServiceId::parse(good).unwrap().as_str(), good);
    }
    assert_eq!(ServiceId::parse(""), Err(ServiceIdError::Empty));
    assert_eq!(ServiceId::parse("12345678901"), Err(ServiceIdError::TooLong));
    for bad in ["12-4", "12 4", "ab_c", "é1", "１２"] {
        assert!(ServiceId::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(ServiceId::from_counter(0).as_str(), "0000000000");
    assert_eq!(ServiceId::from_counter(42).as_str(), "0000000042");
    assert_eq!(ServiceId::from_counter(COUNTER_SPAN - 1).as_str(), "9999999999");
    assert_eq!(ServiceId::from_counter(COUNTER_SPAN + 7), ServiceId::from_counter(7));
    for n in [0, 1, 99, COUNTER_SPAN - 1, u64::MAX] {
        let id = ServiceId::from_counter(n);
        assert_eq!(id.as_str().len(), MAX_LEN);
        assert_eq!(ServiceId::parse(id.as_str()).as_ref(), Ok(&id));
    }
}
