//! The server's listening socket, with every connection it accepts cut at once when the API
//! server "goes away" ([`crate::FakeKube::stop_listening`]): as when a real API server
//! restarts, open watches, exec and attach sessions (whose WebSocket streams are these same
//! connections, upgraded) end with an error and new connections are refused until it is back.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A TCP listener whose connections fail once `cut` is cancelled.
pub(crate) struct CutListener {
    pub(crate) inner: TcpListener,
    pub(crate) cut: CancellationToken,
}

impl axum::serve::Listener for CutListener {
    type Io = CutStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, address)) => {
                    let closed = CancellationToken::new();
                    watch_for_cut(&stream, self.cut.clone(), closed.clone());
                    return (
                        CutStream {
                            inner: stream,
                            cut: Box::pin(self.cut.clone().cancelled_owned()),
                            _closed: closed.drop_guard(),
                        },
                        address,
                    );
                }
                Err(error) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Shuts the socket down (both ways) when `cut` is cancelled before the connection is
/// closed, so that a connection nobody reads or writes at that moment (an idle watch) ends
/// too; a duplicate of the descriptor is used, dropped when the connection closes.
fn watch_for_cut(stream: &TcpStream, cut: CancellationToken, closed: CancellationToken) {
    use std::os::fd::AsFd;
    let socket = match stream.as_fd().try_clone_to_owned() {
        Ok(fd) => std::net::TcpStream::from(fd),
        Err(error) => {
            tracing::debug!(%error, "cannot duplicate a connection's socket");
            return;
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            () = cut.cancelled() => {
                if let Err(error) = socket.shutdown(std::net::Shutdown::Both) {
                    tracing::debug!(%error, "cannot shut a connection down");
                }
            }
            () = closed.cancelled() => {}
        }
    });
}

/// One accepted connection: reads and writes fail with `ConnectionReset` once cut, which makes
/// the HTTP server (or the WebSocket session) drop it and close the socket.
pub(crate) struct CutStream {
    inner: TcpStream,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Ends [`watch_for_cut`]'s task (and its descriptor) when the connection is dropped.
    _closed: tokio_util::sync::DropGuard,
}

impl CutStream {
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        self.cut.as_mut().poll(cx).is_ready()
    }
}

fn reset() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "the fake API server went away",
    )
}

impl AsyncRead for CutStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CutStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
