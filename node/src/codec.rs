//! The one place that encodes and decodes bytes: Raft entries, snapshots and
//! internal RPC bodies. bincode 2 (serde) is pinned and unmaintained
//! (RUSTSEC-2025-0141); keeping every call here lets us swap it in one file.
use serde::{de::DeserializeOwned, Serialize};

/// Encoding failure; carries the codec's message.
#[derive(Debug, thiserror::Error)]
#[error("codec: {0}")]
pub struct CodecError(pub String);

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| CodecError(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (v, _) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| CodecError(e.to_string()))?;
    Ok(v)
}

pub fn to_io(e: CodecError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.0)
}
