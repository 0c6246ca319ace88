//! The node's one error type, and its one conversion to a gRPC status.
//!
//! Every failure a caller can see is one of these variants; the conversion
//! below is the only place that picks the status code and sets the leader
//! hint headers (names in [`charging_proto::headers`]), so a caller reads
//! the same shape from every path: unary, stream, admin, forwarded.
use crate::ids::NodeId;
use charging_proto::headers;
use tonic::Status;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Malformed input; the message names the field first (`field: why`).
    /// Nothing changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// This node cannot answer (not the leader, leadership changing, a
    /// forward that broke off). The outcome of a mutating call is unknown:
    /// retry with the same request id, at the hinted leader if there is one.
    #[error("{msg}")]
    Unavailable {
        msg: String,
        /// The leader's node id and public `host:port`, when known.
        leader: Option<(NodeId, Option<String>)>,
    },
    /// A bound was reached (requests in flight, accounts active, queue per
    /// account): back off and retry. Nothing changed.
    #[error("{0}")]
    Overloaded(String),
    /// Refused because of what the cluster is (an admin call that would
    /// break it). Nothing changed.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The caller is not who it must be (no or a bad credential). Nothing
    /// changed.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this. Nothing changed.
    #[error("{0}")]
    PermissionDenied(String),
    /// A fault of this node, not of the request.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// `field: why`, the form every invalid-argument message takes.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Error {
        Error::InvalidArgument(format!("{field}: {why}"))
    }

    pub fn unavailable(msg: impl Into<String>) -> Error {
        Error::Unavailable {
            msg: msg.into(),
            leader: None,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::Unavailable { msg, leader } => {
                let mut s = Status::unavailable(msg);
                if let Some((node, addr)) = leader {
                    if let Ok(v) = node.to_string().parse() {
                        s.metadata_mut().insert(headers::LEADER_NODE, v);
                    }
                    if let Some(Ok(v)) = addr.map(|a| a.parse()) {
                        s.metadata_mut().insert(headers::LEADER_ADDR, v);
                    }
                }
                s
            }
            Error::Overloaded(m) => Status::resource_exhausted(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Internal(m) => Status::internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_carries_both_hints_in_one_form() {
        let s: Status = Error::Unavailable {
            msg: "not the shard leader".into(),
            leader: Some((2, Some("127.0.0.2:50051".into()))),
        }
        .into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(s.metadata().get(headers::LEADER_NODE).unwrap(), "2");
        assert_eq!(
            s.metadata().get(headers::LEADER_ADDR).unwrap(),
            "127.0.0.2:50051"
        );
        let s: Status = Error::invalid("account_id", "empty").into();
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::InvalidArgument, "account_id: empty")
        );
    }
}
