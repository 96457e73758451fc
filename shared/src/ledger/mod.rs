//! The tamper-evident ledger: RFC 6962 Merkle trees over event hashes and
//! signed C2SP checkpoints of their roots. Pure code, no I/O.

pub mod checkpoint;
pub mod events;
pub mod merkle;
pub mod seal;
