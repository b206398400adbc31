//! The simulated printer's paper: lays decoded ESC/POS commands out as a
//! receipt, as plain text (a character grid of font A columns) and as a
//! black-and-white picture (PNG, one pixel per printer dot).

use pos_escpos::decode::Op;

/// Dots per font A character (12 x 24); font B is 9 x 17.
const FONT_A: (u32, u32) = (12, 24);
const FONT_B: (u32, u32) = (9, 17);
/// Default line pitch (`ESC 2`), in dots.
const DEFAULT_SPACING: u32 = 30;

/// Character style in force.
#[derive(Debug, Clone, Copy, Default)]
struct Style {
    bold: bool,
    underline: bool,
    reverse: bool,
    font_b: bool,
    width: u8,
    height: u8,
}

impl Style {
    fn cell(&self) -> (u32, u32) {
        let (w, h) = if self.font_b { FONT_B } else { FONT_A };
        (w * u32::from(self.width.max(1)), h * u32::from(self.height.max(1)))
    }
}

/// One glyph placed on the current line.
#[derive(Debug, Clone)]
struct Glyph {
    x: u32,
    ch: char,
    style: Style,
}

/// A graphic on its own band: barcode, QR code or image, as a bitmap.
#[derive(Debug, Clone)]
struct Bitmap {
    width: u32,
    height: u32,
    /// Row-major, true = black.
    dots: Vec<bool>,
    /// Text form for the plain-text rendering.
    caption: Vec<String>,
    /// A barcode's human-readable digits, drawn above and/or below it.
    hri_above: Option<String>,
    hri_below: Option<String>,
}

impl Bitmap {
    fn new(width: u32, height: u32, dots: Vec<bool>, caption: Vec<String>) -> Bitmap {
        Bitmap { width, height, dots, caption, hri_above: None, hri_below: None }
    }

    /// Dots the band takes on paper: the picture, its HRI lines, a margin.
    fn band_height(&self) -> u32 {
        let hri_lines = u32::from(self.hri_above.is_some()) + u32::from(self.hri_below.is_some());
        self.height + hri_lines * FONT_A.1 + 8
    }
}

/// A band of the receipt: a line of text or a graphic.
#[derive(Debug, Clone)]
enum Band {
    Line { glyphs: Vec<Glyph>, shift: u32, height: u32 },
    Graphic { bitmap: Bitmap, x: u32 },
    Feed(u32),
}

/// One receipt being printed.
#[derive(Debug)]
pub struct Paper {
    /// Printable width in dots (576 for 48 columns of font A).
    width: u32,
    bands: Vec<Band>,
    line: Vec<Glyph>,
    x: u32,
    /// True once `ESC $`/`ESC \` placed text: alignment no longer applies.
    positioned: bool,
    style: Style,
    align: u8,
    left_margin: u32,
    area: Option<u32>,
    spacing: u32,
    code_page: u8,
    barcode_height: u32,
    barcode_module: u32,
    hri: u8,
    qr_module: u32,
    qr_data: Vec<u8>,
    /// Anything on this paper yet (a job with nothing printed is not saved).
    pub printed: bool,
}

impl Paper {
    pub fn new(columns: u32) -> Paper {
        Paper {
            width: columns * FONT_A.0,
            bands: Vec::new(),
            line: Vec::new(),
            x: 0,
            positioned: false,
            style: Style { width: 1, height: 1, ..Default::default() },
            align: 0,
            left_margin: 0,
            area: None,
            spacing: DEFAULT_SPACING,
            code_page: 19,
            barcode_height: 162,
            barcode_module: 3,
            hri: 0,
            qr_module: 3,
            qr_data: Vec::new(),
            printed: false,
        }
    }

    fn area(&self) -> u32 {
        self.area.unwrap_or(self.width).min(self.width.saturating_sub(self.left_margin))
    }

    /// Applies one command. Status and drawer commands are the caller's.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Text(bytes) => {
                for &b in bytes {
                    self.put(self.decode_char(b));
                }
            }
            Op::LineFeed => self.end_line(),
            Op::CarriageReturn => {}
            Op::Tab => {
                let tab = 8 * FONT_A.0;
                self.x = (self.x / tab + 1) * tab;
            }
            Op::Init => {
                let columns = self.width / FONT_A.0;
                let (bands, printed) = (std::mem::take(&mut self.bands), self.printed);
                let line = std::mem::take(&mut self.line);
                *self = Paper { bands, line, printed, ..Paper::new(columns) };
            }
            Op::Bold(on) | Op::DoubleStrike(on) => self.style.bold = *on,
            Op::Underline(n) => self.style.underline = *n > 0,
            Op::Reverse(on) => self.style.reverse = *on,
            Op::PrintMode(n) => {
                self.style.font_b = n & 0x01 != 0;
                self.style.bold = n & 0x08 != 0;
                self.style.height = if n & 0x10 != 0 { 2 } else { 1 };
                self.style.width = if n & 0x20 != 0 { 2 } else { 1 };
                self.style.underline = n & 0x80 != 0;
            }
            Op::Size { width, height } => {
                self.style.width = *width;
                self.style.height = *height;
            }
            Op::Font(f) => self.style.font_b = *f == 1,
            Op::Align(a) => self.align = *a,
            Op::LeftMargin(d) => self.left_margin = u32::from(*d).min(self.width),
            Op::PrintAreaWidth(d) => self.area = Some(u32::from(*d)),
            Op::AbsolutePosition(d) => {
                self.x = u32::from(*d).min(self.area());
                self.positioned = true;
            }
            Op::RelativePosition(d) => {
                self.x = (i64::from(self.x) + i64::from(*d)).clamp(0, i64::from(self.area())) as u32;
                self.positioned = true;
            }
            Op::LineSpacing(n) => self.spacing = n.map_or(DEFAULT_SPACING, u32::from),
            Op::CodePage(n) => self.code_page = *n,
            Op::FeedLines(n) => {
                self.end_line_if_any();
                self.bands.push(Band::Feed(u32::from(*n) * self.spacing));
            }
            Op::FeedDots(n) => {
                self.end_line_if_any();
                self.bands.push(Band::Feed(u32::from(*n)));
            }
            Op::Barcode { kind, data } => self.barcode(*kind, data),
            Op::BarcodeHeight(h) => self.barcode_height = u32::from(*h).max(1),
            Op::BarcodeWidth(w) => self.barcode_module = u32::from(*w).clamp(1, 6),
            Op::BarcodeHri(n) => self.hri = *n,
            Op::QrModuleSize(n) => self.qr_module = u32::from(*n).clamp(1, 16),
            Op::QrStore(data) => self.qr_data = data.clone(),
            Op::QrPrint => self.qr(),
            Op::Image { width, height, data } => {
                let (w, h) = (u32::from(*width), u32::from(*height));
                let stride = w.div_ceil(8) as usize;
                let dots = (0..h as usize)
                    .flat_map(|y| (0..w as usize).map(move |x| (y, x)))
                    .map(|(y, x)| data.get(y * stride + x / 8).is_some_and(|b| b & (0x80 >> (x % 8)) != 0))
                    .collect();
                self.graphic(Bitmap::new(w, h, dots, vec![format!("[image {w}x{h}]")]));
            }
            _ => {}
        }
    }

    fn decode_char(&self, b: u8) -> char {
        match self.code_page {
            // PC858, and PC850 (the same but for 0xD5).
            19 | 2 => pos_escpos::codepage::decode_byte(b),
            _ if b < 0x80 => b as char,
            // Other code pages: shown as in PC858 (the simulator speaks Western Europe).
            _ => pos_escpos::codepage::decode_byte(b),
        }
    }

    fn put(&mut self, ch: char) {
        let (w, _) = self.style.cell();
        if self.x + w > self.area() {
            self.end_line();
        }
        self.line.push(Glyph { x: self.x, ch, style: self.style });
        self.x += w;
        self.printed = true;
    }

    fn end_line_if_any(&mut self) {
        if !self.line.is_empty() {
            self.end_line();
        }
    }

    fn end_line(&mut self) {
        let glyphs = std::mem::take(&mut self.line);
        let used = glyphs.iter().map(|g| g.x + g.style.cell().0).max().unwrap_or(0);
        let free = self.area().saturating_sub(used);
        let shift = self.left_margin
            + match (self.positioned, self.align) {
                (true, _) | (_, 0) => 0,
                (_, 1) => free / 2,
                _ => free,
            };
        let tallest = glyphs.iter().map(|g| g.style.cell().1).max().unwrap_or(0);
        self.bands.push(Band::Line { glyphs, shift, height: tallest.max(self.spacing) });
        self.x = 0;
        self.positioned = false;
        self.printed = true;
    }

    fn graphic(&mut self, bitmap: Bitmap) {
        self.end_line_if_any();
        let free = self.area().saturating_sub(bitmap.width);
        let x = self.left_margin
            + match self.align {
                0 => 0,
                1 => free / 2,
                _ => free,
            };
        self.bands.push(Band::Graphic { bitmap, x });
        self.printed = true;
    }

    fn barcode(&mut self, kind: u8, data: &[u8]) {
        let text = String::from_utf8_lossy(data).to_string();
        let (name, modules, hri) = match kind {
            2 | 67 => ("EAN-13", barcoders::sym::ean13::EAN13::new(&text).map(|b| b.encode()).ok(), text.clone()),
            73 => {
                let (converted, readable) = code128_for_barcoders(data);
                ("Code 128", barcoders::sym::code128::Code128::new(converted).map(|b| b.encode()).ok(), readable)
            }
            _ => ("barcode", None, text.clone()),
        };
        let h = self.barcode_height;
        let m = self.barcode_module;
        let mut caption = Vec::new();
        if self.hri & 1 != 0 {
            caption.push(hri.clone());
        }
        caption.push(format!("[{name} {hri}]"));
        if self.hri & 2 != 0 {
            caption.push(hri.clone());
        }
        let bitmap = match modules {
            Some(bits) => {
                let width = bits.len() as u32 * m;
                let dots =
                    (0..h).flat_map(|_| bits.iter().flat_map(|&b| std::iter::repeat_n(b == 1, m as usize))).collect();
                Bitmap {
                    hri_above: (self.hri & 1 != 0).then(|| hri.clone()),
                    hri_below: (self.hri & 2 != 0).then(|| hri.clone()),
                    ..Bitmap::new(width, h, dots, caption)
                }
            }
            None => {
                caption = vec![format!("[unprintable {name} {hri}]")];
                Bitmap::new(0, 0, vec![], caption)
            }
        };
        self.graphic(bitmap);
    }

    fn qr(&mut self) {
        let data = std::mem::take(&mut self.qr_data);
        let text = String::from_utf8_lossy(&data).to_string();
        let bitmap = match qrcode::QrCode::new(&data) {
            Ok(code) => {
                let n = code.width() as u32;
                let m = self.qr_module;
                let colors = code.to_colors();
                let size = n * m;
                let dots = (0..size)
                    .flat_map(|y| (0..size).map(move |x| (x, y)))
                    .map(|(x, y)| colors[((y / m) * n + x / m) as usize] == qrcode::Color::Dark)
                    .collect();
                Bitmap::new(size, size, dots, vec![format!("[QR {text}]")])
            }
            Err(_) => Bitmap::new(0, 0, vec![], vec![format!("[unprintable QR {text}]")]),
        };
        self.graphic(bitmap);
    }

    /// The receipt as text, one line per printed line, laid out in font A
    /// columns (a wider character takes its columns, padded with spaces).
    pub fn text(&mut self) -> String {
        self.end_line_if_any();
        let columns = (self.width / FONT_A.0) as usize;
        let mut out = String::new();
        for band in &self.bands {
            match band {
                Band::Line { glyphs, shift, .. } => {
                    let mut row: Vec<char> = Vec::new();
                    for g in glyphs {
                        // Narrower fonts keep one column per character.
                        let col = (((shift + g.x) / FONT_A.0) as usize).max(row.len());
                        let span = (g.style.cell().0 / FONT_A.0).max(1) as usize;
                        if row.len() < col + span {
                            row.resize(col + span, ' ');
                        }
                        row[col] = g.ch;
                    }
                    out.push_str(row.iter().collect::<String>().trim_end());
                    out.push('\n');
                }
                Band::Graphic { bitmap, x } => {
                    for c in &bitmap.caption {
                        let len = c.chars().count();
                        let pad = if *x == 0 {
                            0
                        } else {
                            let centre = (*x + bitmap.width / 2) / FONT_A.0;
                            (centre as usize).saturating_sub(len / 2).min(columns.saturating_sub(len))
                        };
                        out.push_str(&" ".repeat(pad));
                        out.push_str(c);
                        out.push('\n');
                    }
                }
                Band::Feed(dots) => {
                    for _ in 0..(dots / DEFAULT_SPACING) {
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    /// The receipt as a PNG picture, one pixel per dot.
    pub fn png(&mut self) -> Vec<u8> {
        self.end_line_if_any();
        let margin = 8;
        let width = self.width + 2 * margin;
        let height: u32 = margin * 2
            + self
                .bands
                .iter()
                .map(|b| match b {
                    Band::Line { height, .. } => *height,
                    Band::Graphic { bitmap, .. } => bitmap.band_height(),
                    Band::Feed(d) => *d,
                })
                .sum::<u32>();
        let mut canvas = Canvas { width, height, dots: vec![false; (width * height) as usize] };
        let mut y = margin;
        for band in &self.bands {
            match band {
                Band::Line { glyphs, shift, height } => {
                    for g in glyphs {
                        let (w, h) = g.style.cell();
                        let top = y + height - h;
                        canvas.glyph(margin + shift + g.x, top, w, h, g.ch, g.style);
                    }
                    y += height;
                }
                Band::Graphic { bitmap, x } => {
                    let top = y;
                    // HRI characters in font A, centred on the barcode.
                    let mut hri = |text: &str, at: u32| {
                        let len = text.chars().count() as u32 * FONT_A.0;
                        let left = (margin + x + bitmap.width / 2).saturating_sub(len / 2);
                        for (i, ch) in text.chars().enumerate() {
                            canvas.glyph(left + i as u32 * FONT_A.0, at, FONT_A.0, FONT_A.1, ch, Style::default());
                        }
                    };
                    let mut bars = top + 4;
                    if let Some(t) = &bitmap.hri_above {
                        hri(t, bars);
                        bars += FONT_A.1;
                    }
                    if let Some(t) = &bitmap.hri_below {
                        hri(t, bars + bitmap.height);
                    }
                    for by in 0..bitmap.height {
                        for bx in 0..bitmap.width {
                            if bitmap.dots[(by * bitmap.width + bx) as usize] {
                                canvas.set(margin + x + bx, bars + by);
                            }
                        }
                    }
                    y += bitmap.band_height();
                }
                Band::Feed(d) => y += d,
            }
        }
        canvas.encode()
    }
}

/// ESC/POS Code 128 data (`{A`/`{B`/`{C` code set switches, set C as one
/// byte per digit pair) in barcoders' notation, and the human-readable text.
fn code128_for_barcoders(data: &[u8]) -> (String, String) {
    let (mut out, mut readable) = (String::new(), String::new());
    let mut set = b'B';
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'{' && i + 1 < data.len() {
            match data[i + 1] {
                c @ (b'A' | b'B' | b'C') => {
                    set = c;
                    out.push(match c {
                        b'A' => '\u{00C0}',
                        b'B' => '\u{0181}',
                        _ => '\u{0106}',
                    });
                }
                b'{' => {
                    out.push('{');
                    readable.push('{');
                }
                _ => {}
            }
            i += 2;
            continue;
        }
        if set == b'C' {
            let pair = format!("{:02}", data[i].min(99));
            out.push_str(&pair);
            readable.push_str(&pair);
        } else {
            out.push(data[i] as char);
            readable.push(data[i] as char);
        }
        i += 1;
    }
    (out, readable)
}

struct Canvas {
    width: u32,
    height: u32,
    dots: Vec<bool>,
}

impl Canvas {
    fn set(&mut self, x: u32, y: u32) {
        if x < self.width && y < self.height {
            self.dots[(y * self.width + x) as usize] = true;
        }
    }

    /// Draws an 8x8 glyph scaled into a `w` x `h` cell.
    fn glyph(&mut self, x0: u32, y0: u32, w: u32, h: u32, ch: char, style: Style) {
        let rows = glyph_rows(ch);
        for py in 0..h {
            for px in 0..w {
                let (gx, gy) = (px * 8 / w, py * 8 / h);
                let mut on = rows[gy as usize] & (1 << gx) != 0;
                if style.bold && !on && gx > 0 {
                    on = rows[gy as usize] & (1 << (gx - 1)) != 0;
                }
                if style.underline && py + 2 >= h {
                    on = true;
                }
                if on != style.reverse {
                    self.set(x0 + px, y0 + py);
                }
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width, self.height);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::One);
            let mut writer = enc.write_header().expect("PNG header into memory");
            let stride = self.width.div_ceil(8) as usize;
            let mut data = vec![0xffu8; stride * self.height as usize];
            for y in 0..self.height as usize {
                for x in 0..self.width as usize {
                    if self.dots[y * self.width as usize + x] {
                        data[y * stride + x / 8] &= !(0x80 >> (x % 8));
                    }
                }
            }
            writer.write_image_data(&data).expect("PNG data into memory");
        }
        out
    }
}

/// The 8x8 rows of a character (bit 0 is the leftmost dot); `?` if the font
/// has none.
fn glyph_rows(ch: char) -> [u8; 8] {
    use font8x8::legacy::{BASIC_LEGACY, BLOCK_LEGACY, BOX_LEGACY, LATIN_LEGACY};
    let c = ch as u32;
    match c {
        0x20..=0x7e => BASIC_LEGACY[c as usize],
        0xa0..=0xff => LATIN_LEGACY[(c - 0xa0) as usize],
        0x2500..=0x257f => BOX_LEGACY[(c - 0x2500) as usize],
        0x2580..=0x259f => BLOCK_LEGACY[(c - 0x2580) as usize],
        // The euro sign: a C with two bars.
        0x20ac => [0x38, 0x44, 0x1f, 0x04, 0x1f, 0x44, 0x38, 0x00],
        _ => BASIC_LEGACY[b'?' as usize],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pos_escpos::decode::Decoder;

    fn render(bytes: &[u8], columns: u32) -> String {
        let mut paper = Paper::new(columns);
        for op in Decoder::new().push(bytes) {
            paper.apply(&op);
        }
        paper.text()
    }

    #[test]
    fn alignment_size_and_positioning_lay_out_as_on_paper() {
        let text = render(b"\x1ba\x01centre\n\x1ba\x02right\n\x1ba\x00\x1d!\x11BIG\n\x1d!\x00\x1b$\x30\x00at 4\n", 32);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("{}centre", " ".repeat(13)));
        assert_eq!(lines[1], format!("{}right", " ".repeat(27)));
        assert_eq!(lines[2], "B I G");
        assert_eq!(lines[3], "    at 4");
    }

    #[test]
    fn long_lines_wrap_at_the_print_area() {
        let text = render(&[b'x'; 40], 32);
        assert_eq!(text, format!("{}\n{}\n", "x".repeat(32), "x".repeat(8)));
    }

    #[test]
    fn a_receipt_renders_to_a_png() {
        let mut r = pos_escpos::Receipt::new(pos_escpos::Width::Cols48);
        r.line("Hello €").ean13("400638133393").unwrap().qr("https://example.com").unwrap().cut();
        let mut paper = Paper::new(48);
        for op in Decoder::new().push(r.bytes()) {
            paper.apply(&op);
        }
        let png = paper.png();
        assert_eq!(&png[1..4], b"PNG");
        let text = paper.text();
        assert!(
            text.contains("Hello €")
                && text.contains("[EAN-13 4006381333931]")
                && text.contains("[QR https://example.com]"),
            "{text}"
        );
    }

    /// Black dots per row of a rendered PNG.
    fn dark_rows(png_bytes: &[u8]) -> Vec<u32> {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        let stride = info.line_size;
        (0..info.height as usize)
            .map(|y| {
                (0..info.width as usize).filter(|x| buf[y * stride + x / 8] & (0x80 >> (x % 8)) == 0).count() as u32
            })
            .collect()
    }

    #[test]
    fn hri_digits_are_drawn_under_the_barcode_in_the_picture() {
        let picture = |hri: u8| {
            let mut paper = Paper::new(48);
            let bytes = [&[0x1D, b'H', hri][..], b"\x1dk\x02400638133393\x00"].concat();
            for op in Decoder::new().push(&bytes) {
                paper.apply(&op);
            }
            dark_rows(&paper.png())
        };
        let (plain, below) = (picture(0), picture(2));
        assert_eq!(below.len() as u32, plain.len() as u32 + FONT_A.1, "one text line taller");
        // Under the bars (the rows the plain barcode does not have) there are
        // the digits' dots, about 13 characters' worth.
        let bars_end = plain.iter().rposition(|&n| n > 0).unwrap();
        let text_dots: u32 = below[bars_end + 1..].iter().sum();
        assert!(text_dots > 13 * 10, "{text_dots} dots of HRI text");
    }
}
