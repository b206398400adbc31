//! Opening the serial devices a link runs over (TCP streams come straight from
//! tokio; PTY pairs are in the `pty` module, behind the `pty` feature).
//! Behind the `io` feature.

use std::io;
use std::path::PathBuf;

/// Parity setting of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parity {
    #[default]
    None,
    Odd,
    Even,
}

/// Flow control of a serial line. `Hardware` is RTS/CTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlowControl {
    #[default]
    None,
    Software,
    Hardware,
}

/// How to open a serial device. The default is the ZVT line: 9600 8N2, no handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    pub path: PathBuf,
    pub baud: u32,
    /// 5 to 8.
    pub data_bits: u8,
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    pub flow_control: FlowControl,
}

impl SerialSettings {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 2,
            flow_control: FlowControl::None,
        }
    }
}

/// Opens a serial device (exclusively, raw mode) for use with a link driver.
/// Must be called inside a tokio runtime.
pub fn open_serial(s: &SerialSettings) -> io::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPortBuilderExt;
    let data_bits = match s.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        8 => tokio_serial::DataBits::Eight,
        n => return Err(invalid(format!("data bits must be 5 to 8, not {n}"))),
    };
    let stop_bits = match s.stop_bits {
        1 => tokio_serial::StopBits::One,
        2 => tokio_serial::StopBits::Two,
        n => return Err(invalid(format!("stop bits must be 1 or 2, not {n}"))),
    };
    let parity = match s.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    };
    let flow = match s.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    tokio_serial::new(s.path.to_string_lossy(), s.baud)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .parity(parity)
        .flow_control(flow)
        .open_native_async()
        .map_err(|e| io::Error::other(format!("cannot open serial device {}: {e}", s.path.display())))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}
