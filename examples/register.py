#!/usr/bin/env python3
"""A register's integration with posd, in Python with grpcio.

Takes a card payment (following its progress, and re-attaching with the same
idempotency key if the connection drops), reads the offline queue's status,
refunds part of the payment, and resumes the event stream from a cursor.

    python3 -m pip install grpcio grpcio-tools grpcio-status
    python3 examples/register.py --addr 127.0.0.1:50051 --amount 12.34
    python3 examples/register.py --addr unix:/run/posd/posd.sock   # posd's default API socket

Stubs are generated from proto/ at start (grpc_tools), so nothing else is
needed. Exit code 0 when the payment was approved (online or offline).
"""

import argparse
import importlib
import os
import sys
import tempfile
import time
import uuid

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_stubs():
    """Generates the register API's Python modules into a temporary directory."""
    out = tempfile.mkdtemp(prefix="posd-stubs-")
    proto_dir = os.path.join(ROOT, "proto")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main([
        "protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
        os.path.join(proto_dir, "pos/terminal/v1/terminal.proto"),
    ])
    if rc != 0:
        sys.exit("could not generate the stubs from proto/")
    sys.path.insert(0, out)
    pb = importlib.import_module("pos.terminal.v1.terminal_pb2")
    rpc = importlib.import_module("pos.terminal.v1.terminal_pb2_grpc")
    return pb, rpc


def error_reason(err):
    """The google.rpc.ErrorInfo reason posd attaches to every error."""
    try:
        from grpc_status import rpc_status
        from google.rpc import error_details_pb2
    except ImportError:
        return ""
    status = rpc_status.from_call(err)
    if status is None:
        return ""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def to_minor(text, exponent=2):
    whole, _, frac = text.partition(".")
    if len(frac) > exponent:
        sys.exit(f"{text}: at most {exponent} decimals")
    return int(whole) * 10**exponent + int((frac or "0").ljust(exponent, "0"))


def take_payment(stub, pb, key, amount_minor, terminal):
    """Starts the payment, or re-attaches to it: the same key and parameters
    always mean the same payment, so a dropped stream is simply called again."""
    request = pb.TakePaymentRequest(
        idempotency_key=key,
        order_reference="order-" + key[-6:],
        amount=pb.Money(amount_minor=amount_minor, currency="EUR"),
        terminal_id=terminal,
        capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
    )
    for attempt in range(5):
        last = None
        try:
            for event in stub.TakePayment(request, timeout=180):
                print("  ...", event.message, flush=True)
                last = event
            return last.payment
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                print(f"  connection lost ({err.code().name}); re-attaching with the same key", flush=True)
                time.sleep(0.5 * (attempt + 1))
                continue
            print(f"refused: {err.code().name} {error_reason(err)}: {err.details()}", file=sys.stderr)
            sys.exit(4)
    sys.exit("posd unreachable")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default=os.environ.get("POSD_ADDR", "127.0.0.1:50051"))
    ap.add_argument("--amount", default="12.34")
    ap.add_argument("--terminal", default="lane-1")
    args = ap.parse_args()

    pb, rpc = load_stubs()
    stub = rpc.PaymentTerminalStub(grpc.insecure_channel(args.addr))

    key = "example-" + uuid.uuid4().hex
    payment = take_payment(stub, pb, key, to_minor(args.amount), args.terminal)
    status = pb.PaymentStatus.Name(payment.status)
    print(f"payment {payment.payment_id}: {status}, approved={payment.approved}, offline={payment.offline}")
    if payment.card.masked_pan:
        print(f"  card {payment.card.brand} {payment.card.masked_pan}")

    # The same key again returns the same payment: safe to retry blindly.
    again = take_payment(stub, pb, key, to_minor(args.amount), args.terminal)
    assert again.payment_id == payment.payment_id

    # A bad request names its field (google.rpc.BadRequest) and a reason code.
    try:
        list(stub.TakePayment(pb.TakePaymentRequest(idempotency_key="", terminal_id=args.terminal,
                                                    amount=pb.Money(amount_minor=100, currency="EUR"))))
    except grpc.RpcError as err:
        print(f"bad input is refused: {err.code().name} {error_reason(err)}: {err.details()}")

    sync = stub.GetSyncStatus(pb.GetSyncStatusRequest())
    print(f"gateway online={sync.online}, queued offline={sync.queue_depth}")

    if payment.approved and status == "PAYMENT_STATUS_CAPTURED":
        refund = stub.RefundPayment(pb.RefundPaymentRequest(
            idempotency_key=key + "-refund", payment_id=payment.payment_id, amount_minor=100, reason="example"))
        print(f"refund {refund.refund_id}: {pb.RefundStatus.Name(refund.status)}")

    # Events: read what is there, remember the last cursor; a register that
    # reconnects passes it as from_cursor and misses nothing.
    cursor = 0
    stream = stub.StreamEvents(pb.StreamEventsRequest(from_cursor=0), timeout=1.0)
    try:
        for event in stream:
            cursor = event.cursor
            print(f"  event {event.cursor} {event.kind} {event.payment_id}")
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    print(f"resume later with from_cursor={cursor}")
    return 0 if payment.approved else 1


if __name__ == "__main__":
    sys.exit(main())
