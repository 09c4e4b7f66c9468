//! Connected TCP sockets over loopback for unit tests of code that reads or writes them.

use tokio::net::{TcpListener, TcpStream};

/// A connected pair: the server's (accepted) end and the peer's.
pub(crate) async fn connected_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (server, peer)
}
