#!/usr/bin/env node
// An independent Sale system for tests/tests/nexo_sim.rs: Adyen's own TerminalLocalAPI
// (@adyen/api-library) against `firmware-sim nexo` over HTTPS, encrypted with the shared key.
//
// Reads one JSON job on stdin:
//   {"endpoint": "https://127.x.y.z", "ca": "<CA PEM path>", "poiId", "saleId",
//    "keyId", "keyVersion", "passphrase",
//    "steps": [{"op": "pay", "serviceId", "amount": 12.5, "currency": "EUR"},
//              {"op": "status", "serviceId", "of": "<ServiceID asked about>"}]}
// and answers {"results": [{"op", "ok": true, "response": <SaleToPOIResponse>} |
//                          {"op", "ok": false, "error": "..."}]} on stdout, one result per step.
//
// The library appends ":8443/nexo/" to the endpoint, so the terminal must listen on port 8443.
// It pins the terminal's CA through `certificatePath` (read with fs, passed to https as `ca`)
// and checks the certificate's common name with helpers/checkServerIdentity.js
// (`<model>-<serial>.test|live.terminal.adyen.com`) instead of the host name; no
// NODE_EXTRA_CA_CERTS is needed.

"use strict";

const { Client, Config } = require("@adyen/api-library");
const TerminalLocalAPI = require("@adyen/api-library/lib/src/services/terminalLocalAPI").default;

function header(job, category, serviceId) {
    return {
        ProtocolVersion: "3.0",
        MessageClass: "Service",
        MessageCategory: category,
        MessageType: "Request",
        ServiceID: serviceId,
        SaleID: job.saleId,
        POIID: job.poiId,
    };
}

function request(job, step) {
    switch (step.op) {
        case "pay":
            return {
                SaleToPOIRequest: {
                    MessageHeader: header(job, "Payment", step.serviceId),
                    PaymentRequest: {
                        SaleData: {
                            SaleTransactionID: { TransactionID: `oracle-${step.serviceId}`, TimeStamp: new Date() },
                        },
                        PaymentTransaction: {
                            AmountsReq: { Currency: step.currency || "EUR", RequestedAmount: step.amount },
                        },
                    },
                },
            };
        case "status":
            return {
                SaleToPOIRequest: {
                    MessageHeader: header(job, "TransactionStatus", step.serviceId),
                    TransactionStatusRequest: {
                        MessageReference: { MessageCategory: "Payment", ServiceID: step.of, SaleID: job.saleId },
                        ReceiptReprintFlag: true,
                        DocumentQualifier: ["CashierReceipt", "CustomerReceipt"],
                    },
                },
            };
        default:
            throw new Error(`unknown op ${JSON.stringify(step.op)}`);
    }
}

async function run(job) {
    const config = new Config({
        environment: "TEST",
        apiKey: "not-used-by-a-local-terminal",
        terminalApiLocalEndpoint: job.endpoint,
        certificatePath: job.ca,
        connectionTimeoutMillis: 60000,
    });
    const api = new TerminalLocalAPI(new Client(config));
    const securityKey = {
        AdyenCryptoVersion: 1,
        KeyIdentifier: job.keyId,
        KeyVersion: job.keyVersion,
        Passphrase: job.passphrase,
    };
    const results = [];
    for (const step of job.steps) {
        try {
            const answer = await api.request(request(job, step), securityKey);
            // Through JSON: the library's Date objects become ISO strings.
            results.push({ op: step.op, ok: true, response: JSON.parse(JSON.stringify(answer.SaleToPOIResponse)) });
        } catch (e) {
            results.push({ op: step.op, ok: false, error: String(e && e.message ? e.message : e) });
        }
    }
    return { results };
}

const chunks = [];
process.stdin.on("data", (c) => chunks.push(c));
process.stdin.on("end", () => {
    let job;
    try {
        job = JSON.parse(Buffer.concat(chunks).toString("utf-8"));
    } catch (e) {
        process.stderr.write(`terminal_local.js: stdin is not JSON: ${e.message}\n`);
        process.exit(2);
    }
    run(job).then(
        (out) => process.stdout.write(JSON.stringify(out) + "\n"),
        (e) => {
            process.stderr.write(`terminal_local.js: ${e && e.stack ? e.stack : e}\n`);
            process.exit(1);
        },
    );
});
