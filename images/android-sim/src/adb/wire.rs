//! ADB message framing: a 24-byte little-endian header followed by a payload. No I/O here.

use std::fmt;

/// Size of the fixed message header.
pub const HEADER_LEN: usize = 24;

/// Protocol version we answer with; from this version on peers skip the payload checksum.
pub const VERSION: u32 = 0x0100_0001;

/// Largest payload we send, and announce in our CNXN.
pub const MAX_PAYLOAD: u32 = 256 * 1024;

/// Largest payload we accept. Hosts may announce 1 MiB before learning our limit, so allow it.
pub const MAX_INCOMING_PAYLOAD: u32 = 1024 * 1024;

/// Connect (handshake; arg0 = version, arg1 = max payload, data = banner).
pub const A_CNXN: u32 = u32::from_le_bytes(*b"CNXN");
/// Open a stream (arg0 = sender's local id, data = service name).
pub const A_OPEN: u32 = u32::from_le_bytes(*b"OPEN");
/// Stream ready / write acknowledged (arg0 = local id, arg1 = remote id).
pub const A_OKAY: u32 = u32::from_le_bytes(*b"OKAY");
/// Data on a stream (arg0 = local id, arg1 = remote id).
pub const A_WRTE: u32 = u32::from_le_bytes(*b"WRTE");
/// Close a stream (arg0 = local id or 0 for refusal, arg1 = remote id).
pub const A_CLSE: u32 = u32::from_le_bytes(*b"CLSE");
/// Authentication; a host only sends it in answer to ours, and we never ask.
pub const A_AUTH: u32 = u32::from_le_bytes(*b"AUTH");

/// A decoded message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Command word (`A_CNXN`, `A_OPEN`, ...).
    pub command: u32,
    /// First argument.
    pub arg0: u32,
    /// Second argument.
    pub arg1: u32,
    /// Length of the payload that follows.
    pub data_length: u32,
    /// Byte sum of the payload (named crc32 in adb's sources, but a plain sum).
    pub data_check: u32,
}

/// Why a header could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// `magic` is not `command ^ 0xffffffff`: the peer does not speak ADB or the stream is
    /// out of step.
    BadMagic { command: u32, magic: u32 },
    /// The payload is longer than we accept.
    TooLong { data_length: u32 },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadMagic { command, magic } => write!(
                f,
                "bad header magic {magic:#010x} for command {command:#010x}; peer is not speaking ADB"
            ),
            WireError::TooLong { data_length } => {
                write!(f, "payload of {data_length} bytes exceeds the {MAX_INCOMING_PAYLOAD}-byte limit")
            }
        }
    }
}

impl std::error::Error for WireError {}

/// The checksum adb puts in the header: the sum of the payload bytes.
pub fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |sum, &b| sum.wrapping_add(u32::from(b)))
}

/// Encodes a whole message (header and payload) into one buffer, so it goes out in one write.
pub fn encode(command: u32, arg0: u32, arg1: u32, data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len()).expect("ADB payloads are far below 4 GiB");
    let mut buf = Vec::with_capacity(HEADER_LEN + data.len());
    for word in [command, arg0, arg1, len, checksum(data), command ^ 0xffff_ffff] {
        buf.extend_from_slice(&word.to_le_bytes());
    }
    buf.extend_from_slice(data);
    buf
}

/// Decodes a header. The checksum is not verified: hosts at version 0x01000001 leave it 0.
pub fn decode_header(bytes: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
    let word = |i: usize| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let header =
        Header { command: word(0), arg0: word(1), arg1: word(2), data_length: word(3), data_check: word(4) };
    let magic = word(5);
    if magic != header.command ^ 0xffff_ffff {
        return Err(WireError::BadMagic { command: header.command, magic });
    }
    if header.data_length > MAX_INCOMING_PAYLOAD {
        return Err(WireError::TooLong { data_length: header.data_length });
    }
    Ok(header)
}

/// Printable name of a command word, for logs.
pub fn command_name(command: u32) -> String {
    let bytes = command.to_le_bytes();
    if bytes.iter().all(u8::is_ascii_uppercase) {
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        format!("{command:#010x}")
    }
}

/// The banner of our CNXN. No features are advertised, so hosts use the plain `shell:` service.
pub fn device_banner(model: &str) -> String {
    format!(
        "device::ro.product.name=android_sim;ro.product.model={model};ro.product.device=android_sim;features="
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_words_match_adb() {
        // Values from adb's protocol description.
        assert_eq!(A_CNXN, 0x4e58_4e43);
        assert_eq!(A_OPEN, 0x4e45_504f);
        assert_eq!(A_OKAY, 0x5941_4b4f);
        assert_eq!(A_WRTE, 0x4554_5257);
        assert_eq!(A_CLSE, 0x4553_4c43);
        assert_eq!(A_AUTH, 0x4854_5541);
    }

    #[test]
    fn checksum_is_a_byte_sum() {
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"\x01\x02\xff"), 0x102);
        assert_eq!(checksum(&[0xff; 1000]), 255_000);
    }

    #[test]
    fn encode_lays_out_the_header() {
        let msg = encode(A_WRTE, 7, 9, b"hi");
        assert_eq!(msg.len(), HEADER_LEN + 2);
        assert_eq!(&msg[0..4], b"WRTE");
        assert_eq!(&msg[4..8], &7u32.to_le_bytes());
        assert_eq!(&msg[8..12], &9u32.to_le_bytes());
        assert_eq!(&msg[12..16], &2u32.to_le_bytes());
        assert_eq!(&msg[16..20], &(u32::from(b'h') + u32::from(b'i')).to_le_bytes());
        assert_eq!(&msg[20..24], &(A_WRTE ^ 0xffff_ffff).to_le_bytes());
        assert_eq!(&msg[24..], b"hi");
    }

    #[test]
    fn decode_round_trips_encode() {
        let msg = encode(A_OPEN, 3, 0, b"shell:ls\0");
        let header = decode_header(msg[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(
            header,
            Header { command: A_OPEN, arg0: 3, arg1: 0, data_length: 9, data_check: checksum(b"shell:ls\0") }
        );
    }

    #[test]
    fn decode_rejects_bad_magic_and_huge_payloads() {
        let mut msg = encode(A_OKAY, 1, 2, b"");
        msg[20] ^= 1;
        assert!(matches!(
            decode_header(msg[..HEADER_LEN].try_into().unwrap()),
            Err(WireError::BadMagic { .. })
        ));
        let mut msg = encode(A_WRTE, 1, 2, b"");
        msg[12..16].copy_from_slice(&(MAX_INCOMING_PAYLOAD + 1).to_le_bytes());
        assert!(matches!(
            decode_header(msg[..HEADER_LEN].try_into().unwrap()),
            Err(WireError::TooLong { .. })
        ));
    }

    #[test]
    fn names_and_banner() {
        assert_eq!(command_name(A_CNXN), "CNXN");
        assert_eq!(command_name(1), "0x00000001");
        assert_eq!(
            device_banner("Pixel"),
            "device::ro.product.name=android_sim;ro.product.model=Pixel;ro.product.device=android_sim;features="
        );
    }
}
