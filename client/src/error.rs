//! The client's error type.

use tonic::Code;

/// An error from the client library.
///
/// Business rejections are *not* errors: they come back as a `result` code in the
/// response (see [`crate::result_name`]). An `Error` means the call itself failed:
/// a gRPC status other than OK, a transport failure, or bad client input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server (or the channel) answered with a non-OK gRPC status. For
    /// `UNAVAILABLE` this is the last status seen after retries ran out.
    /// Boxed because `tonic::Status` is large.
    #[error("gRPC status {}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    /// Connecting to the endpoint failed.
    #[error("transport error: {0}")]
    Transport(#[source] tonic::transport::Error),
    /// The endpoint is not a valid URI.
    #[error("invalid endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// Client-side input was invalid (e.g. a malformed request id).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The gRPC status code, if this is a status error.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }

    /// The gRPC status, if this is a status error.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(s) => Some(s),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(Box::new(s))
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::Transport(e)
    }
}
