//! A player on an instance's stream port: `HELLO <token>`, the answer line (`OK ...` or
//! `ERR <code>`), then numbered frames, and noticing when the instance ends the stream.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How long any one read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to a stream port after its handshake.
pub struct Player {
    /// The answer to the HELLO, without its line ending.
    pub reply: String,
    reader: BufReader<OwnedReadHalf>,
    _writer: OwnedWriteHalf,
    next_seq: u64,
}

impl Player {
    /// Connects to `host:port`, sends `HELLO <token>` and reads the answer line.
    pub async fn connect(host: &str, port: u16, token: &str) -> Player {
        let stream = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .unwrap_or_else(|_| panic!("connecting to the stream at {host}:{port} timed out"))
            .unwrap_or_else(|e| panic!("connect to the stream at {host}:{port}: {e}"));
        let (rd, mut writer) = stream.into_split();
        let mut reader = BufReader::new(rd);
        writer.write_all(format!("HELLO {token}\n").as_bytes()).await.expect("send HELLO");
        let mut reply = String::new();
        tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut reply))
            .await
            .unwrap_or_else(|_| panic!("no answer to HELLO from {host}:{port}"))
            .unwrap_or_else(|e| panic!("read the answer to HELLO from {host}:{port}: {e}"));
        Player { reply: reply.trim_end().to_string(), reader, _writer: writer, next_seq: 1 }
    }

    /// Whether the stream accepted the token.
    pub fn accepted(&self) -> bool {
        self.reply.starts_with("OK ")
    }

    /// Reads `n` more frames, checking their headers and sequence numbers.
    pub async fn frames(&mut self, n: u64) {
        assert!(self.accepted(), "no frames after {:?}", self.reply);
        for _ in 0..n {
            let mut header = String::new();
            tokio::time::timeout(READ_TIMEOUT, self.reader.read_line(&mut header))
                .await
                .expect("a frame in time")
                .expect("read a frame header");
            let fields: Vec<&str> = header.split_whitespace().collect();
            assert!(fields.len() == 4 && fields[0] == "FRAME", "frame header {header:?}");
            assert_eq!(fields[1].parse::<u64>().ok(), Some(self.next_seq), "frame sequence in {header:?}");
            let len: usize = fields[3].parse().expect("frame length");
            let mut payload = vec![0u8; len];
            tokio::time::timeout(READ_TIMEOUT, self.reader.read_exact(&mut payload))
                .await
                .expect("a frame payload in time")
                .expect("read the frame payload");
            self.next_seq += 1;
        }
    }

    /// Waits until the instance ends the stream (end of stream or a reset), discarding what
    /// still arrives; panics if it keeps streaming for `within`.
    pub async fn wait_ended(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.reader.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => panic!("the stream still runs {within:?} later"),
            }
        }
    }
}

/// The answer line to `HELLO <token>` at `host:port` (the connection is closed afterwards).
pub async fn hello(host: &str, port: u16, token: &str) -> String {
    Player::connect(host, port, token).await.reply
}

/// Plays as the holder of `token`: `HELLO`, expects `OK ...`, then reads `frames` numbered frames
/// with their payloads. Returns the `OK` line.
pub async fn play(host: &str, port: u16, token: &str, frames: u64) -> String {
    let mut player = Player::connect(host, port, token).await;
    assert!(player.accepted(), "the player is accepted at {host}:{port}: {:?}", player.reply);
    player.frames(frames).await;
    player.reply
}
