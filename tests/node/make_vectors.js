#!/usr/bin/env node
// Writes the known-answer vectors of crates/pos-nexo/tests/vectors/ with Adyen's own
// NexoDerivedKeyGenerator and NexoCrypto (@adyen/api-library, the version pinned in
// package.json), each then decrypted by the library again to prove it.
//
//   cd tests/node && npm ci && node make_vectors.js
//
// The inputs are fixed, so running it again rewrites the same files.

"use strict";

const fs = require("fs");
const path = require("path");
const { answer } = require("./nexo_crypto");

const LIBRARY = "@adyen/api-library " + require("@adyen/api-library/package.json").version;
const OUT = path.join(__dirname, "..", "..", "crates", "pos-nexo", "tests", "vectors");

function call(req) {
    const res = answer(req);
    if (!res.ok) {
        throw new Error(`${req.op}: ${res.error}`);
    }
    return res;
}

// A clear document as one line of JSON (the bytes encrypted).
function doc(value) {
    return JSON.stringify(value);
}

// A header as posd writes it (field order included).
function header(category, type, serviceId) {
    return {
        ProtocolVersion: "3.0",
        MessageClass: "Service",
        MessageCategory: category,
        MessageType: type,
        ServiceID: serviceId,
        SaleID: "POSD-lane-1",
        POIID: "V400m-324688179",
    };
}

// A response document whose text is a whole number of AES blocks (a full block of padding).
function blockAligned(build) {
    for (let filler = ""; ; filler += "x") {
        const text = doc(build(filler));
        if (Buffer.byteLength(text, "utf-8") % 16 === 0) {
            return text;
        }
    }
}

const VECTORS = [
    {
        name: "payment_request",
        what: "a PaymentRequest for 25.00 EUR as posd writes it (field order included)",
        passphrase: "mysupersecretpassphrase",
        keyId: "posd-lane-key",
        keyVersion: 1,
        nonce: "000102030405060708090a0b0c0d0e0f",
        plaintext: doc({
            SaleToPOIRequest: {
                MessageHeader: header("Payment", "Request", "0000000001"),
                PaymentRequest: {
                    SaleData: {
                        SaleTransactionID: { TransactionID: "01JF3Q5W7Y0000000000000000", TimeStamp: "2026-12-07T10:00:00Z" },
                        SaleToAcquirerData: "tenderOption=AskGratuity",
                    },
                    PaymentTransaction: { AmountsReq: { Currency: "EUR", RequestedAmount: 25 } },
                    PaymentData: { PaymentType: "Normal" },
                },
            },
        }),
    },
    {
        name: "payment_response",
        what: "an approved PaymentResponse with a receipt line and non-ASCII text (UTF-8)",
        passphrase: "Correct-Horse_Battery.Staple!42",
        keyId: "Store17",
        keyVersion: 3,
        nonce: "f0e1d2c3b4a5968778695a4b3c2d1e0f",
        plaintext: doc({
            SaleToPOIResponse: {
                MessageHeader: header("Payment", "Response", "0000000002"),
                PaymentResponse: {
                    Response: { Result: "Success", AdditionalResponse: "refusalReason=&pspReference=8815573255107661" },
                    SaleData: { SaleTransactionID: { TransactionID: "01JF3Q5W7Y0000000000000001", TimeStamp: "2026-12-07T10:00:05Z" } },
                    POIData: { POITransactionID: { TransactionID: "4r7i001557325515012.8815573255107661", TimeStamp: "2026-12-07T10:00:31.000Z" } },
                    PaymentResult: {
                        AmountsResp: { Currency: "EUR", AuthorizedAmount: 12.5 },
                        PaymentInstrumentData: {
                            PaymentInstrumentType: "Card",
                            CardData: { MaskedPan: "541333 **** 0010", PaymentBrand: "mc", EntryMode: ["Contactless"] },
                        },
                        PaymentAcquirerData: { ApprovalCode: "123456" },
                    },
                    PaymentReceipt: [
                        {
                            DocumentQualifier: "CustomerReceipt",
                            RequiredSignatureFlag: false,
                            OutputContent: {
                                OutputFormat: "Text",
                                OutputText: [
                                    { Text: "name=TOTAL&value=%e2%82%ac%c2%a012.50&key=totalAmount" },
                                    { Text: "name=Gr%c3%bc%c3%9fe&key=thanks" },
                                    { Text: "Danke schön – €" },
                                ],
                            },
                        },
                    ],
                },
            },
        }),
    },
    {
        name: "status_not_found_aligned",
        what: "a TransactionStatusResponse Failure/NotFound whose text is a whole number of blocks (a full padding block)",
        passphrase: "p",
        keyId: "k",
        keyVersion: 7,
        nonce: "ffffffffffffffffffffffffffffffff",
        plaintext: blockAligned((filler) => ({
            SaleToPOIResponse: {
                MessageHeader: header("TransactionStatus", "Response", "0000000003"),
                TransactionStatusResponse: {
                    Response: { Result: "Failure", ErrorCondition: "NotFound", AdditionalResponse: "message=" + filler },
                },
            },
        })),
    },
];

fs.mkdirSync(OUT, { recursive: true });
for (const v of VECTORS) {
    const nonce = Buffer.from(v.nonce, "hex").toString("base64");
    const key = { passphrase: v.passphrase, keyId: v.keyId, keyVersion: v.keyVersion };
    const material = call({ op: "derive", passphrase: v.passphrase });
    const { envelope } = call({ op: "encrypt", ...key, message: v.plaintext, nonce });
    const { message } = call({ op: "decrypt", ...key, envelope });
    if (message !== v.plaintext) {
        throw new Error(`${v.name}: the library does not decrypt its own ciphertext to the plaintext`);
    }
    const secured = Object.values(JSON.parse(envelope))[0];
    const vector = {
        source: `${LIBRARY}: NexoDerivedKeyGenerator.deriveKeyMaterial, NexoCrypto.encrypt (nonce fixed), NexoCrypto.decrypt; tests/node/make_vectors.js`,
        what: v.what,
        passphrase: v.passphrase,
        key_identifier: v.keyId,
        key_version: v.keyVersion,
        key_material: { hmac_key: material.hmacKey, cipher_key: material.cipherKey, iv: material.iv },
        nonce,
        plaintext: v.plaintext,
        nexo_blob: secured.NexoBlob,
        hmac: secured.SecurityTrailer.Hmac,
        document: envelope,
    };
    const file = path.join(OUT, `${v.name}.json`);
    fs.writeFileSync(file, JSON.stringify(vector, null, 2) + "\n");
    console.log(`wrote ${path.relative(process.cwd(), file)}`);
}
