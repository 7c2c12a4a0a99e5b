//! Server-sent events off a byte stream: the rack's event stream arrives in chunks that can cut
//! a line ending (`\r` | `\n`) or a UTF-8 character in two, and one chunk often holds many
//! events (a packing pass emits one per new instance). Bytes are kept until their event is
//! complete, and each byte is scanned once. As in the HTML standard's parser, a block without
//! `data:` (a comment, a keep-alive) is no event.

/// One event: its `event:` name (`message` when none), its `id:` and its `data:` lines joined
/// by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: String,
    pub id: Option<String>,
    pub data: String,
}

/// Splits a byte stream into events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    /// Where the current event starts in `buffer`.
    start: usize,
    /// Bytes before this are scanned.
    scanned: usize,
    /// Where the current line starts in `buffer`.
    line: usize,
    /// The previous byte was a `\r` (a `\n` right after it ends nothing more).
    after_cr: bool,
}

impl SseDecoder {
    /// Feeds `bytes` and returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        // Only line endings matter: jump from one to the next (a byte-by-byte loop was a
        // visible share of the broker's CPU under load).
        while let Some(offset) = memchr::memchr2(b'\n', b'\r', &self.buffer[self.scanned..]) {
            let byte = self.buffer[self.scanned + offset];
            let crlf = offset == 0 && byte == b'\n' && self.after_cr;
            self.scanned += offset + 1;
            self.after_cr = byte == b'\r';
            if crlf {
                // The `\n` of a `\r\n`: the line ended at the `\r`.
                self.line = self.scanned;
                continue;
            }
            let empty = self.scanned - 1 == self.line;
            self.line = self.scanned;
            if empty {
                events.extend(parse(&self.buffer[self.start..self.scanned]));
                self.start = self.scanned;
            }
        }
        // What is left holds no line ending.
        if self.scanned < self.buffer.len() {
            self.after_cr = false;
            self.scanned = self.buffer.len();
        }
        // Drop what is consumed, once per feed rather than once per event.
        self.buffer.drain(..self.start);
        self.scanned -= self.start;
        self.line -= self.start;
        self.start = 0;
        events
    }
}

/// One complete block (its lines and the blank line that ends it); `None` without data.
fn parse(block: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(block);
    let mut event = SseEvent { name: "message".into(), id: None, data: String::new() };
    let mut has_data = false;
    for line in text.split(['\r', '\n']) {
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event.name = value.to_string(),
            "id" => event.id = Some(value.to_string()),
            "data" => {
                if has_data {
                    event.data.push('\n');
                }
                event.data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    has_data.then_some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent { name: name.into(), id: None, data: data.into() }
    }

    #[test]
    fn blocks_give_name_and_joined_data() {
        let mut d = SseDecoder::default();
        let events =
            d.feed(b"event: rack\nid: 3\ndata: {\"a\":1}\n\n: keep-alive\n\nevent: x\n\ndata: x\ndata:y\n\n");
        let rack = SseEvent { id: Some("3".into()), ..event("rack", "{\"a\":1}") };
        assert_eq!(events, [rack, event("message", "x\ny")], "blocks without data are no events");
        assert_eq!(d.feed(b"event: gap\ndata: {}\n"), [], "no blank line yet");
        assert_eq!(d.feed(b"\n"), [event("gap", "{}")]);
    }

    #[test]
    fn any_cut_of_the_stream_gives_the_same_events() {
        // CRLF, CR and LF endings, and a two-byte character.
        let stream =
            "event: rack\r\ndata: {\"reason\":\"caf\u{e9}\"}\r\n\r\nevent: rack\rdata: 2\r\rdata: 3\n\n";
        let want = [event("rack", "{\"reason\":\"caf\u{e9}\"}"), event("rack", "2"), event("message", "3")];
        let bytes = stream.as_bytes();
        for cut in 0..=bytes.len() {
            let mut d = SseDecoder::default();
            let mut got = d.feed(&bytes[..cut]);
            got.extend(d.feed(&bytes[cut..]));
            assert_eq!(got, want, "cut at byte {cut}");
        }
        let mut d = SseDecoder::default();
        let one_by_one: Vec<SseEvent> = bytes.iter().flat_map(|b| d.feed(&[*b])).collect();
        assert_eq!(one_by_one, want);
    }
}
