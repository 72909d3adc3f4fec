//! Response bodies: a whole buffer (every JSON route), or a stream of chunks
//! a handler's task writes as they are ready (the chat routes' server-sent
//! events). A stream ends when its writer is dropped; when the client goes
//! away the runtime drops the body, the writer's next send fails, and the
//! task producing it stops (so an upstream model request is cancelled).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::mpsc;

/// How many chunks a stream buffers before its writer waits for the client.
const STREAM_BUFFER: usize = 32;

#[derive(Debug)]
pub enum Body {
    Full(Bytes),
    Stream(mpsc::Receiver<Bytes>),
}

/// The writing end of a streamed [`Body`].
#[derive(Debug, Clone)]
pub struct BodyWriter(mpsc::Sender<Bytes>);

/// The client is gone: nobody reads what is written next.
#[derive(Debug, thiserror::Error)]
#[error("the client closed the response stream")]
pub struct ClientGone;

impl Body {
    pub fn empty() -> Self {
        Body::Full(Bytes::new())
    }

    /// A streamed body and the writer that feeds it.
    pub fn channel() -> (BodyWriter, Self) {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        (BodyWriter(sender), Body::Stream(receiver))
    }

    /// The whole body, for a buffered body; `None` for a stream.
    #[cfg(test)]
    pub(crate) fn as_full(&self) -> Option<&Bytes> {
        match self {
            Body::Full(bytes) => Some(bytes),
            Body::Stream(_) => None,
        }
    }

    /// Reads a body to its end (a stream until its writer is done).
    pub async fn collect(self) -> Bytes {
        match self {
            Body::Full(bytes) => bytes,
            Body::Stream(mut receiver) => {
                let mut all = bytes::BytesMut::new();
                while let Some(chunk) = receiver.recv().await {
                    all.extend_from_slice(&chunk);
                }
                all.freeze()
            }
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body::Full(bytes)
    }
}

impl BodyWriter {
    /// Sends one chunk; fails once the client has gone.
    pub async fn send(&self, chunk: impl Into<Bytes>) -> Result<(), ClientGone> {
        self.0.send(chunk.into()).await.map_err(|_| ClientGone)
    }

    /// Resolves when the client has gone, to stop work nobody will read.
    pub async fn closed(&self) {
        self.0.closed().await;
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) if bytes.is_empty() => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(Some(Ok(Frame::data(std::mem::take(bytes))))),
            Body::Stream(receiver) => receiver
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(bytes) if bytes.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

/// A streamed body as the `Stream` of frames `vercel_runtime` takes.
impl futures::Stream for Body {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        HttpBody::poll_frame(self, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_stream_carries_chunks_in_order_and_ends_with_its_writer() {
        let (writer, body) = Body::channel();
        tokio::spawn(async move {
            writer.send("data: 1\n\n").await.unwrap();
            writer.send("data: 2\n\n").await.unwrap();
        });
        let bytes = body.collect().await;
        assert_eq!(&bytes[..], b"data: 1\n\ndata: 2\n\n");
    }

    #[tokio::test]
    async fn the_writer_learns_when_the_client_has_gone() {
        let (writer, body) = Body::channel();
        drop(body);
        writer.closed().await;
        assert!(writer.send("late").await.is_err());
    }

    #[tokio::test]
    async fn a_full_body_is_one_frame_with_an_exact_size() {
        let body = Body::from(Bytes::from_static(b"{}"));
        assert_eq!(HttpBody::size_hint(&body).exact(), Some(2));
        let collected = BodyExt::collect(body).await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"{}");
    }
}
