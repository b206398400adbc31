#!/usr/bin/env node
// The reference side of posd's nexo encryption tests (tests/tests/nexo_crypto.rs):
// Adyen's own NexoCrypto from @adyen/api-library, the code its TerminalLocalAPI runs.
//
// Reads one JSON request on stdin and answers one JSON object on stdout:
//   {"op": "encrypt", "passphrase", "keyId", "keyVersion", "message": "<clear document>", "nonce"?: "<base64>"}
//     -> {"ok": true, "envelope": "<encrypted document>"}
//   {"op": "decrypt", "passphrase", "keyId", "keyVersion", "envelope": "<encrypted document>"}
//     -> {"ok": true, "message": "<clear document>"}
//   {"op": "derive", "passphrase"}
//     -> {"ok": true, "hmacKey": hex, "cipherKey": hex, "iv": hex}
// A request the library refuses answers {"ok": false, "error": "..."}.
// `nonce` fixes the nonce the library would otherwise draw (for known-answer vectors).

"use strict";

const NexoCrypto = require("@adyen/api-library/lib/src/security/nexoCrypto").default;
const NexoDerivedKeyGenerator = require("@adyen/api-library/lib/src/security/nexoDerivedKeyGenerator").default;

const DOCUMENT_KEYS = ["SaleToPOIRequest", "SaleToPOIResponse"];

function securityKey(req) {
    return {
        AdyenCryptoVersion: 1,
        KeyIdentifier: req.keyId,
        KeyVersion: req.keyVersion,
        Passphrase: req.passphrase,
    };
}

// The one document key (request or response) of a parsed document.
function documentKey(doc) {
    const keys = DOCUMENT_KEYS.filter((k) => Object.prototype.hasOwnProperty.call(doc, k));
    if (keys.length !== 1) {
        throw new Error(`expected exactly one of ${DOCUMENT_KEYS.join(", ")}`);
    }
    return keys[0];
}

// Encrypts the clear document text exactly as given (its bytes are what the HMAC covers).
function encrypt(req) {
    const top = documentKey(JSON.parse(req.message));
    const header = JSON.parse(req.message)[top].MessageHeader;
    const draw = NexoCrypto.generateRandomIvNonce;
    if (req.nonce !== undefined) {
        const nonce = Buffer.from(req.nonce, "base64");
        NexoCrypto.generateRandomIvNonce = () => Buffer.from(nonce);
    }
    try {
        const secured = NexoCrypto.encrypt(header, req.message, securityKey(req));
        return { ok: true, envelope: JSON.stringify({ [top]: secured }) };
    } finally {
        NexoCrypto.generateRandomIvNonce = draw;
    }
}

function decrypt(req) {
    const doc = JSON.parse(req.envelope);
    const message = new NexoCrypto().decrypt(doc[documentKey(doc)], securityKey(req));
    return { ok: true, message };
}

function derive(req) {
    const dk = NexoDerivedKeyGenerator.deriveKeyMaterial(req.passphrase);
    return {
        ok: true,
        hmacKey: dk.hmacKey.toString("hex"),
        cipherKey: dk.cipherKey.toString("hex"),
        iv: dk.iv.toString("hex"),
    };
}

// Answers one request; the library's refusals become {"ok": false}.
function answer(req) {
    const ops = { encrypt, decrypt, derive };
    const op = ops[req.op];
    if (op === undefined) {
        return { ok: false, error: `unknown op ${JSON.stringify(req.op)}` };
    }
    try {
        return op(req);
    } catch (e) {
        return { ok: false, error: String(e && e.message ? e.message : e) };
    }
}

module.exports = { answer };

if (require.main === module) {
    const chunks = [];
    process.stdin.on("data", (c) => chunks.push(c));
    process.stdin.on("end", () => {
        let req;
        try {
            req = JSON.parse(Buffer.concat(chunks).toString("utf-8"));
        } catch (e) {
            process.stderr.write(`nexo_crypto.js: stdin is not JSON: ${e.message}\n`);
            process.exit(2);
        }
        process.stdout.write(JSON.stringify(answer(req)) + "\n");
    });
}
