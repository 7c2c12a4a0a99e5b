//! The device side of ADB over TCP.
//!
//! Each connection has one reader (which owns the table of open streams, so no lock is
//! needed) and one writer fed by a bounded channel; each stream is its own task. A client
//! that stops reading only fills its own connection's channel, so other clients never notice.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::wire::{
    A_CLSE, A_CNXN, A_OKAY, A_OPEN, A_WRTE, HEADER_LEN, MAX_PAYLOAD, VERSION, command_name, decode_header,
    device_banner, encode,
};
use crate::shell;
use crate::state::State;

/// Payload limit before the host's CNXN tells us its own (adb's `MAX_PAYLOAD_V1`).
const INITIAL_MAX_PAYLOAD: usize = 4096;

/// Messages queued for one connection's writer. Small: it only has to absorb bursts, and a
/// full queue is how a slow client's back-pressure reaches its own streams.
const OUTBOX_DEPTH: usize = 64;

/// Prompt of the interactive `shell:` service.
const PROMPT: &str = "android_sim:/ $ ";

/// Accepts ADB connections until the task is dropped. With `hang` set, connections are
/// accepted and read but never answered, to simulate a wedged adbd.
pub async fn serve(listener: TcpListener, state: Arc<State>, hang: bool) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    if hang {
                        swallow(stream, peer).await;
                    } else {
                        connection(stream, peer, state).await;
                    }
                });
            }
            Err(e) => {
                // Usually EMFILE; back off instead of spinning on the error.
                println!("adb: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn swallow(mut stream: TcpStream, peer: SocketAddr) {
    println!("adb: {peer} connected (hanging: never answering)");
    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    println!("adb: {peer} disconnected");
}

async fn connection(stream: TcpStream, peer: SocketAddr, state: Arc<State>) {
    println!("adb: {peer} connected");
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (out, outbox) = mpsc::channel(OUTBOX_DEPTH);
    let reason = tokio::select! {
        r = read_loop(rd, out, state) => match r {
            Ok(()) => "closed by peer".to_string(),
            Err(e) => e.to_string(),
        },
        r = write_loop(wr, outbox) => match r {
            Ok(()) => "writer finished".to_string(),
            Err(e) => format!("write failed: {e}"),
        },
    };
    println!("adb: {peer} disconnected ({reason})");
}

async fn write_loop(mut wr: OwnedWriteHalf, mut outbox: mpsc::Receiver<Vec<u8>>) -> io::Result<()> {
    while let Some(message) = outbox.recv().await {
        wr.write_all(&message).await?;
    }
    Ok(())
}

/// What the reader forwards to a stream task.
#[derive(Debug)]
enum Inbound {
    /// The host acknowledged our last WRTE.
    Okay,
    /// The host wrote data (stdin).
    Write(Vec<u8>),
}

/// A service the host may open.
#[derive(Debug, PartialEq, Eq)]
enum Service {
    /// `shell:CMD` or `exec:CMD`: run once, send the output, close.
    Command(String),
    /// `shell:` with no command: a line-by-line prompt.
    Interactive,
}

fn parse_service(name: &str) -> Option<Service> {
    let (kind, command) = name.split_once(':')?;
    // Options after a comma (`shell,v2,raw:`) ask for the shell_v2 framing, which we do not
    // advertise and do not speak; `shell,raw:` is plain and fine.
    let shell = kind == "shell" || kind.starts_with("shell,") && !kind.contains("v2");
    match (shell || kind == "exec", command.trim().is_empty()) {
        (true, false) => Some(Service::Command(command.to_string())),
        (true, true) if shell => Some(Service::Interactive),
        _ => None,
    }
}

async fn read_loop(rd: OwnedReadHalf, out: mpsc::Sender<Vec<u8>>, state: Arc<State>) -> io::Result<()> {
    let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "writer gone");
    let mut rd = BufReader::new(rd);
    let mut streams: HashMap<u32, mpsc::UnboundedSender<Inbound>> = HashMap::new();
    let mut last_id: u32 = 0;
    let mut max_payload = INITIAL_MAX_PAYLOAD;
    loop {
        let mut raw = [0u8; HEADER_LEN];
        match rd.read_exact(&mut raw).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let header = decode_header(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut data = vec![0u8; header.data_length as usize];
        rd.read_exact(&mut data).await?;
        match header.command {
            A_CNXN => {
                max_payload = (header.arg1 as usize).clamp(256, MAX_PAYLOAD as usize);
                // A new handshake on a live connection means the host restarted its side:
                // forget streams, as adbd does.
                streams.clear();
                let banner = device_banner(&state.model);
                let reply = encode(A_CNXN, VERSION, MAX_PAYLOAD, banner.as_bytes());
                out.send(reply).await.map_err(|_| closed())?;
            }
            A_OPEN => {
                let remote = header.arg0;
                let name = String::from_utf8_lossy(&data);
                let name = name.trim_end_matches('\0');
                let Some(service) = parse_service(name).filter(|_| remote != 0) else {
                    // Refusal: CLSE with local id 0.
                    out.send(encode(A_CLSE, 0, remote, b"")).await.map_err(|_| closed())?;
                    continue;
                };
                // Finished streams leave closed senders behind; sweep them before adding.
                streams.retain(|_, tx| !tx.is_closed());
                let local = loop {
                    last_id = last_id.wrapping_add(1);
                    if last_id != 0 && !streams.contains_key(&last_id) {
                        break last_id;
                    }
                };
                let (tx, inbox) = mpsc::unbounded_channel();
                streams.insert(local, tx);
                // OKAY goes into the outbox before the task can queue any WRTE, so the host
                // always sees them in order.
                out.send(encode(A_OKAY, local, remote, b"")).await.map_err(|_| closed())?;
                let stream =
                    Stream { local, remote, out: out.clone(), inbox, pending: VecDeque::new(), max_payload };
                tokio::spawn(stream.run(service, Arc::clone(&state)));
            }
            A_OKAY => {
                if let Some(tx) = streams.get(&header.arg1) {
                    let _ = tx.send(Inbound::Okay);
                }
            }
            A_WRTE => {
                if let Some(tx) = streams.get(&header.arg1) {
                    // The stream task acknowledges once it has taken the data: that is the
                    // flow control which keeps this unbounded channel short.
                    let _ = tx.send(Inbound::Write(data));
                }
            }
            A_CLSE => {
                // Dropping the sender ends the stream task's inbox.
                streams.remove(&header.arg1);
            }
            other => {
                // AUTH (we never ask for it), STLS, SYNC and unknown words: ignored.
                println!("adb: ignoring {} message", command_name(other));
            }
        }
    }
}

/// The host closed the stream or the connection went away.
#[derive(Debug)]
struct Gone;

/// One open stream, owned by its task.
struct Stream {
    local: u32,
    remote: u32,
    out: mpsc::Sender<Vec<u8>>,
    inbox: mpsc::UnboundedReceiver<Inbound>,
    /// Input that arrived while we were waiting for an OKAY.
    pending: VecDeque<Vec<u8>>,
    max_payload: usize,
}

impl Stream {
    async fn run(mut self, service: Service, state: Arc<State>) {
        let result = match service {
            Service::Command(command) => {
                let output = shell::run(&command, &state);
                self.write(output.text.as_bytes()).await
            }
            Service::Interactive => self.interactive(&state).await,
        };
        if result.is_ok() {
            let _ = self.send(A_CLSE, b"").await;
        }
    }

    async fn interactive(&mut self, state: &State) -> Result<(), Gone> {
        let mut line = Vec::new();
        self.write(PROMPT.as_bytes()).await?;
        loop {
            let data = self.input().await?;
            for byte in data {
                match byte {
                    // Ctrl-D on an empty line, as in a terminal.
                    0x04 if line.is_empty() => return Ok(()),
                    b'\n' => {
                        let text = String::from_utf8_lossy(&line).trim().to_string();
                        line.clear();
                        if text == "exit" {
                            return Ok(());
                        }
                        let mut reply = shell::run(&text, state).text;
                        reply.push_str(PROMPT);
                        self.write(reply.as_bytes()).await?;
                    }
                    b'\r' => {}
                    other => line.push(other),
                }
            }
        }
    }

    /// Next chunk of host input, acknowledged so the host may send more.
    async fn input(&mut self) -> Result<Vec<u8>, Gone> {
        if let Some(data) = self.pending.pop_front() {
            return Ok(data);
        }
        loop {
            match self.inbox.recv().await.ok_or(Gone)? {
                Inbound::Write(data) => {
                    self.send(A_OKAY, b"").await?;
                    return Ok(data);
                }
                Inbound::Okay => {}
            }
        }
    }

    /// Sends `data` in WRTE messages, waiting for the host's OKAY after each one.
    async fn write(&mut self, data: &[u8]) -> Result<(), Gone> {
        for chunk in data.chunks(self.max_payload) {
            self.send(A_WRTE, chunk).await?;
            loop {
                match self.inbox.recv().await.ok_or(Gone)? {
                    Inbound::Okay => break,
                    Inbound::Write(input) => {
                        self.send(A_OKAY, b"").await?;
                        self.pending.push_back(input);
                    }
                }
            }
        }
        Ok(())
    }

    async fn send(&self, command: u32, data: &[u8]) -> Result<(), Gone> {
        self.out.send(encode(command, self.local, self.remote, data)).await.map_err(|_| Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services() {
        assert_eq!(parse_service("shell:getprop x"), Some(Service::Command("getprop x".into())));
        assert_eq!(parse_service("exec:wm size"), Some(Service::Command("wm size".into())));
        assert_eq!(parse_service("shell,raw:ls"), Some(Service::Command("ls".into())));
        assert_eq!(parse_service("shell:"), Some(Service::Interactive));
        assert_eq!(parse_service("shell,v2,raw:ls"), None);
        assert_eq!(parse_service("exec:"), None);
        assert_eq!(parse_service("sync:"), None);
        assert_eq!(parse_service("reboot:"), None);
        assert_eq!(parse_service("framebuffer:"), None);
    }
}
