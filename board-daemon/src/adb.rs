//! A small ADB client: just enough of the wire protocol to run a `shell:` command on an instance
//! over TCP and read its output. The daemon uses it for readiness (`getprop sys.boot_completed`),
//! to launch the game and to check the foreground package.
//!
//! One TCP connection per command keeps instances independent: a hung instance only ever costs
//! its own timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const A_CNXN: u32 = 0x4e58_4e43;
const A_OPEN: u32 = 0x4e45_504f;
const A_OKAY: u32 = 0x5941_4b4f;
const A_WRTE: u32 = 0x4554_5257;
const A_CLSE: u32 = 0x4553_4c43;
const A_AUTH: u32 = 0x4854_5541;
const A_VERSION: u32 = 0x0100_0001;
const MAX_PAYLOAD: u32 = 256 * 1024;
const LOCAL_ID: u32 = 1;
/// Output beyond this is refused: readiness commands print a few lines.
const MAX_OUTPUT: usize = 1024 * 1024;

/// Why an ADB command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdbError {
    #[error("cannot connect to ADB at {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("ADB connection to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("ADB at {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("ADB at {addr} asks for authentication; instance images must run adbd without auth")]
    AuthRequired { addr: SocketAddr },
    #[error("ADB at {addr} broke the protocol: {detail}")]
    Protocol { addr: SocketAddr, detail: String },
    #[error("ADB at {addr} refused the shell service")]
    Refused { addr: SocketAddr },
}

/// Runs `command` through the `shell:` service at `addr` and returns what it printed.
pub async fn shell(addr: SocketAddr, command: &str, timeout: Duration) -> Result<String, AdbError> {
    match tokio::time::timeout(timeout, shell_inner(addr, command)).await {
        Ok(result) => result,
        Err(_) => Err(AdbError::Timeout { addr, timeout }),
    }
}

async fn shell_inner(addr: SocketAddr, command: &str) -> Result<String, AdbError> {
    let mut stream = TcpStream::connect(addr).await.map_err(|source| AdbError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let io = |source| AdbError::Io { addr, source };
    let protocol = |detail: String| AdbError::Protocol { addr, detail };

    stream.write_all(&encode(A_CNXN, A_VERSION, MAX_PAYLOAD, b"host::\0")).await.map_err(io)?;
    let (cmd, _, _, _) = read_message(&mut stream).await.map_err(io)?;
    match cmd {
        A_CNXN => {}
        A_AUTH => return Err(AdbError::AuthRequired { addr }),
        other => return Err(protocol(format!("expected CNXN, got {other:#x}"))),
    }
    let mut service = format!("shell:{command}").into_bytes();
    service.push(0);
    stream.write_all(&encode(A_OPEN, LOCAL_ID, 0, &service)).await.map_err(io)?;

    let mut output = Vec::new();
    loop {
        let (cmd, arg0, _, payload) = read_message(&mut stream).await.map_err(io)?;
        match cmd {
            A_OKAY => {}
            A_WRTE => {
                output.extend_from_slice(&payload);
                if output.len() > MAX_OUTPUT {
                    return Err(protocol("shell output exceeds 1 MiB".into()));
                }
                stream.write_all(&encode(A_OKAY, LOCAL_ID, arg0, &[])).await.map_err(io)?;
            }
            A_CLSE if arg0 == 0 && output.is_empty() => return Err(AdbError::Refused { addr }),
            A_CLSE => {
                // Best effort: the peer may already have closed the socket.
                let _ = stream.write_all(&encode(A_CLSE, LOCAL_ID, arg0, &[])).await;
                break;
            }
            other => return Err(protocol(format!("unexpected message {other:#x}"))),
        }
    }
    String::from_utf8(output).map_err(|_| protocol("shell output is not UTF-8".into()))
}

/// Encodes one message: a 24-byte little-endian header, then the payload.
fn encode(command: u32, arg0: u32, arg1: u32, payload: &[u8]) -> Vec<u8> {
    let checksum: u32 = payload.iter().map(|&b| u32::from(b)).fold(0u32, u32::wrapping_add);
    let mut message = Vec::with_capacity(24 + payload.len());
    for word in [command, arg0, arg1, payload.len() as u32, checksum, command ^ 0xffff_ffff] {
        message.extend_from_slice(&word.to_le_bytes());
    }
    message.extend_from_slice(payload);
    message
}

async fn read_message(stream: &mut TcpStream) -> std::io::Result<(u32, u32, u32, Vec<u8>)> {
    let mut header = [0u8; 24];
    stream.read_exact(&mut header).await?;
    let word = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (command, arg0, arg1, len, magic) = (word(0), word(4), word(8), word(12), word(20));
    if magic != command ^ 0xffff_ffff || len > MAX_PAYLOAD {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad ADB message header"));
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await?;
    Ok((command, arg0, arg1, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_protocol() {
        let msg = encode(A_OPEN, 1, 0, b"shell:ls\0");
        assert_eq!(&msg[0..4], b"OPEN");
        assert_eq!(u32::from_le_bytes(msg[12..16].try_into().unwrap()), 9);
        let sum: u32 = b"shell:ls\0".iter().map(|&b| b as u32).sum();
        assert_eq!(u32::from_le_bytes(msg[16..20].try_into().unwrap()), sum);
        assert_eq!(u32::from_le_bytes(msg[20..24].try_into().unwrap()), A_OPEN ^ 0xffff_ffff);
        assert_eq!(&encode(A_CNXN, 0, 0, &[])[0..4], b"CNXN");
        assert_eq!(&encode(A_WRTE, 0, 0, &[])[0..4], b"WRTE");
        assert_eq!(&encode(A_OKAY, 0, 0, &[])[0..4], b"OKAY");
        assert_eq!(&encode(A_CLSE, 0, 0, &[])[0..4], b"CLSE");
        assert_eq!(&encode(A_AUTH, 0, 0, &[])[0..4], b"AUTH");
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let err = shell(addr, "getprop", Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, AdbError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let err = shell(addr, "getprop", Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, AdbError::Connect { .. }), "{err}");
    }
}
