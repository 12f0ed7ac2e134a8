//! Small pieces shared by Kiln's crates that belong to none of them: the monotonic
//! clock and start-up timestamps, and the poison-tolerant lock.

#![warn(missing_docs)]

pub mod sync;
pub mod time;
