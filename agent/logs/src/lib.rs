//! nodescope's log shipper. See docs/logs.md.

pub mod format;
pub mod kmsg;
pub mod time;
