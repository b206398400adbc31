#!/usr/bin/env python3
"""Generate ESC/POS byte fixtures with an independent encoder (python-escpos).

The ``pyescpos-*.bin`` files beside this script are the output of this script,
run once with python-escpos 3.1 (from PyPI; Pillow and qrcode come with it as
dependencies) under CPython 3.11.  They are produced by a third-party ESC/POS
*encoder* that shares no code with posd, so our own decoder can be tested
against byte streams it did not write itself.  ``README.md`` beside this script
lists every command in every file, byte for byte, and the text expected on
paper; the Rust tests are written against that listing.

The fixtures are committed; this script is kept only so they can be
regenerated or extended.  To rerun it (it needs no printer, it uses
``escpos.printer.Dummy``, which collects the bytes in memory)::

    pip install python-escpos==3.1
    python3 tests/data/escpos/generate.py

It writes the .bin files into the directory this script lives in and prints
their sizes and SHA-256 sums.  With python-escpos 3.1 the output is
deterministic: rerunning it gives byte-identical files.  A different
python-escpos version may emit different bytes (it warns on stderr); if so,
update README.md from a hexdump of the new files.
"""

import hashlib
import sys
from importlib.metadata import version
from pathlib import Path

from PIL import Image, ImageDraw

from escpos import capabilities
from escpos.printer import Dummy

EXPECTED_VERSION = "3.1"
OUT_DIR = Path(__file__).resolve().parent
PROFILE = "TM-T88V"


def new_printer() -> Dummy:
    """A Dummy printer with the Epson TM-T88V profile (default profile if absent)."""
    if PROFILE in capabilities.CAPABILITIES["profiles"]:
        return Dummy(profile=PROFILE)
    print(f"warning: profile {PROFILE} missing, using default", file=sys.stderr)
    return Dummy()


def receipt() -> bytes:
    p = new_printer()
    p.hw("INIT")
    # Forces CP858 (emits ESC t 19 at once) and disables automatic code page
    # switching, so every later text() is encoded as CP858.
    p.charcode("CP858")
    p.set(align="center", bold=True, double_height=True, double_width=True)
    p.text("ACME STORE\n")
    p.set(align="center", normal_textsize=True)
    p.text("Main Street 1\n")
    p.set(align="left")
    p.text("Coffee                       2.50\n")
    p.text("Total EUR                   12.34\n")
    p.text("Müller straße 5 €\n")
    # Function type A (guessed for EAN13): GS k 2 <digits> NUL.
    p.barcode("4006381333931", "EAN13", height=64, width=2, pos="BELOW", font="A")
    # Code 128 needs function type B and a code-set prefix ("{B") in the data:
    # GS k 73 <len> "{B..." .
    p.barcode("{BPOSD-123", "CODE128", function_type="B")
    # native=True: GS ( k commands instead of a rendered image.
    p.qr("https://example.com/r/pay_123", size=4, native=True)
    p.cut()
    return p.output


def test_image() -> Image.Image:
    """32x16 1-bit image: white, with a 1-dot black rectangle border."""
    img = Image.new("1", (32, 16), 1)
    ImageDraw.Draw(img).rectangle((0, 0, 31, 15), outline=0, fill=1)
    return img


def image() -> bytes:
    p = new_printer()
    p.hw("INIT")
    p.text("IMAGE\n")
    img = test_image()
    p.image(img, impl="bitImageRaster")  # GS v 0
    p.image(img, impl="bitImageColumn")  # ESC *
    p.text("AFTER\n")
    p.cut()
    return p.output


def layout() -> bytes:
    p = new_printer()
    p.hw("INIT")
    p.set(align="right")
    p.text("right\n")
    p.set(align="left", underline=1)
    p.text("under\n")
    p.set(underline=0, font="b")
    p.text("font b\n")
    p.set(font="a")
    p.line_spacing(50)
    p.text("spaced\n")
    p.line_spacing()
    p._raw(b"\x1b\x24\x20\x01")  # ESC $ nL nH: absolute position, dot 288
    p._raw(b"MID\n")
    p.cashdraw(2)
    p.ln(2)
    p.cut(mode="PART")
    return p.output


def main() -> None:
    ver = version("python-escpos")
    if ver != EXPECTED_VERSION:
        print(
            f"warning: python-escpos {ver} installed, fixtures were made with "
            f"{EXPECTED_VERSION}; output may differ",
            file=sys.stderr,
        )
    for name, make in (
        ("pyescpos-receipt.bin", receipt),
        ("pyescpos-image.bin", image),
        ("pyescpos-layout.bin", layout),
    ):
        data = make()
        (OUT_DIR / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
