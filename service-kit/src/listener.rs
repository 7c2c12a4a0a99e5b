//! The services' HTTP listener.

use axum::serve::{ListenerExt, TapIo};
use tokio::net::{TcpListener, TcpStream};

/// `listener` with TCP_NODELAY set on every accepted connection, so answers and event-stream
/// frames go out at once: without it, Nagle's algorithm holds a small write while an earlier one
/// is unacknowledged.
pub fn no_delay(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(set_no_delay as fn(&mut TcpStream))
}

fn set_no_delay(tcp: &mut TcpStream) {
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY on a connection");
    }
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    #[tokio::test]
    async fn accepted_connections_have_no_delay() {
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let mut listener = super::no_delay(inner);
        let client = tokio::net::TcpStream::connect(addr);
        let ((accepted, _), client) = tokio::join!(listener.accept(), client);
        assert!(accepted.nodelay().unwrap());
        // The client side keeps the default, so the flag above is the listener's doing.
        assert!(!client.unwrap().nodelay().unwrap());
    }
}
