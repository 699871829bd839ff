//! Loading helpers (owned by the network-probe work).
