//! Generated code for posd's three protobuf packages (sources in `proto/`).
//!
//! - [`terminal`]: `pos.terminal.v1`, the register API posd serves.
//! - [`gateway`]: `pos.gateway.v1`, the central gateway API posd calls.
//! - [`reader`]: `pos.reader.v1`, messages to and from a native card reader,
//!   carried over the link layer as APDUs of class [`reader::APDU_CLASS`].

pub mod terminal {
    tonic::include_proto!("pos.terminal.v1");
}

pub mod gateway {
    tonic::include_proto!("pos.gateway.v1");
}

pub mod reader {
    tonic::include_proto!("pos.reader.v1");

    /// APDU class of reader messages on the link.
    pub const APDU_CLASS: u8 = 0xE0;
    /// APDU instruction of a [`HostMessage`] (posd -> reader).
    pub const INSTR_HOST: u8 = 0x01;
    /// APDU instruction of a [`ReaderMessage`] (reader -> posd).
    pub const INSTR_READER: u8 = 0x02;
}

/// Encoded `FileDescriptorSet` of all three packages, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pos_descriptor");
