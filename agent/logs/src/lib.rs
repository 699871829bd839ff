//! nodescope's log shipper. See docs/logs.md.

pub mod checkpoint;
pub mod format;
pub mod glob;
pub mod kmsg;
pub mod kmsgsource;
pub mod meta;
pub mod metrics;
pub mod multiline;
pub mod tailer;
pub mod time;
