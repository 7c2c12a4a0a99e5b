//! The synthetic video stream: a one-line handshake, then numbered frames paced at the
//! display's frame rate.
//!
//! ```text
//! client: HELLO <token>\n
//! server: ERR not_booted|bad_token|bad_request\n   (then close)
//!     or: OK <width>x<height>@<fps> dpi=<dpi>\n
//!         FRAME <seq from 1> <unix_ms> <len>\n <len bytes> ...
//! ```
//!
//! A stream ends when `sim.stream.token` changes to a token other than the one its client
//! presented: the board daemon sets a new token when the instance is handed to its next player,
//! and the previous player must not keep watching.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{MissedTickBehavior, timeout};

use crate::state::{STREAM_TOKEN_PROP, State};

/// Bytes of synthetic payload in every frame.
pub const FRAME_PAYLOAD_LEN: usize = 1024;

/// How long a client has to send its HELLO line.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest HELLO line we read; anything longer is a bad request.
const MAX_HELLO_LEN: u64 = 512;

/// Accepts stream clients until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(client(stream, peer, Arc::clone(&state)));
            }
            Err(e) => {
                println!("stream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why a client was turned away; the text after `ERR `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Boot has not completed yet.
    NotBooted,
    /// The token does not match `sim.stream.token`.
    BadToken,
    /// No well-formed `HELLO <token>` line arrived in time.
    BadRequest,
}

impl Refusal {
    /// The wire code.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::NotBooted => "not_booted",
            Refusal::BadToken => "bad_token",
            Refusal::BadRequest => "bad_request",
        }
    }
}

/// Decides whether a HELLO line (with or without its line ending) is accepted, and returns the
/// token it presented. `expected` is the current `sim.stream.token`; empty accepts any
/// non-empty token.
pub fn check_hello<'l>(line: &'l str, booted: bool, expected: &str) -> Result<&'l str, Refusal> {
    let line = line.trim_end_matches(['\n', '\r']);
    let token = line
        .strip_prefix("HELLO ")
        .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace))
        .ok_or(Refusal::BadRequest)?;
    if !booted {
        return Err(Refusal::NotBooted);
    }
    if !token_accepted(token, expected) {
        return Err(Refusal::BadToken);
    }
    Ok(token)
}

/// Whether `token` is accepted while `sim.stream.token` is `expected` (empty accepts any).
pub fn token_accepted(token: &str, expected: &str) -> bool {
    expected.is_empty() || token == expected
}

/// One frame: header line plus payload, in one buffer so it goes out in one write.
pub fn frame(seq: u64, unix_ms: u128) -> Vec<u8> {
    let mut buf = format!("FRAME {seq} {unix_ms} {FRAME_PAYLOAD_LEN}\n").into_bytes();
    // A pattern that shifts with the sequence number, so a client can spot misaligned reads.
    buf.extend((0..FRAME_PAYLOAD_LEN as u64).map(|i| ((seq + i) % 251) as u8));
    buf
}

async fn client(stream: TcpStream, peer: SocketAddr, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    let read = timeout(HELLO_TIMEOUT, (&mut rd).take(MAX_HELLO_LEN).read_line(&mut line)).await;
    let verdict = match read {
        Ok(Ok(_)) if line.ends_with('\n') => {
            check_hello(&line, state.booted(), &state.prop(STREAM_TOKEN_PROP).unwrap_or_default())
                .map(str::to_string)
        }
        _ => Err(Refusal::BadRequest),
    };
    let token = match verdict {
        Ok(token) => token,
        Err(refusal) => {
            println!("stream: {peer} refused ({})", refusal.code());
            let _ = wr.write_all(format!("ERR {}\n", refusal.code()).as_bytes()).await;
            // Half-close and drain briefly: closing with unread input would send a reset that
            // can destroy the ERR line before the client reads it.
            let _ = wr.shutdown().await;
            let _ = timeout(Duration::from_secs(1), tokio::io::copy(&mut rd, &mut tokio::io::sink())).await;
            return;
        }
    };

    let d = state.display;
    let ok = format!("OK {}x{}@{} dpi={}\n", d.width, d.height, d.fps, d.dpi);
    if wr.write_all(ok.as_bytes()).await.is_err() {
        return;
    }
    let _player = state.player_joined();
    println!("stream: {peer} connected (players={})", state.players());
    let reason = send_frames(&mut wr, &mut rd, &state, &token).await;
    drop(_player);
    println!("stream: {peer} disconnected ({reason}, players={})", state.players());
}

/// Sends frames until the client goes away or its token stops being accepted; returns why it
/// stopped.
async fn send_frames(
    wr: &mut OwnedWriteHalf,
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    state: &State,
    token: &str,
) -> String {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(state.display.fps)));
    // A stalled client gets the next frame on time rather than a burst of stale ones.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut seq = 0u64;
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if !token_accepted(token, &state.prop(STREAM_TOKEN_PROP).unwrap_or_default()) {
                    return "stream token changed".to_string();
                }
                seq += 1;
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                if let Err(e) = wr.write_all(&frame(seq, now.as_millis())).await {
                    return format!("write failed: {e}");
                }
                state.frame_sent();
            }
            // Watching the read side notices a closed client even between frames.
            r = rd.read(&mut scratch) => match r {
                Ok(0) => return "closed by peer".to_string(),
                Ok(_) => {}
                Err(e) => return format!("read failed: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_checks_in_order() {
        assert_eq!(check_hello("HELLO tok\n", true, ""), Ok("tok"));
        assert_eq!(check_hello("HELLO tok\r\n", true, "tok"), Ok("tok"));
        assert_eq!(check_hello("HELLO tok\n", false, ""), Err(Refusal::NotBooted));
        assert_eq!(check_hello("HELLO tok\n", true, "other"), Err(Refusal::BadToken));
        assert_eq!(check_hello("HELLO \n", true, ""), Err(Refusal::BadRequest));
        assert_eq!(check_hello("GET / HTTP/1.1\n", false, ""), Err(Refusal::BadRequest));
        assert_eq!(check_hello("HELLO a b\n", true, ""), Err(Refusal::BadRequest));
    }

    #[test]
    fn frame_layout() {
        let f = frame(7, 1_700_000_000_000);
        let header = b"FRAME 7 1700000000000 1024\n";
        assert_eq!(&f[..header.len()], header);
        assert_eq!(f.len(), header.len() + FRAME_PAYLOAD_LEN);
        assert_eq!(f[header.len()], 7);
        assert_eq!(f[header.len() + 1], 8);
    }
}
