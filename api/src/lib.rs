//! Kiln's Firecracker-compatible REST API: an HTTP/1.1 server on a Unix socket (its own
//! thread), Firecracker's request and response bodies, and the controller that applies
//! them to a VM before and after it starts; and [`client`], a tiny client for the socket.

#![warn(missing_docs)]

pub mod client;
pub mod controller;
pub mod http;
pub mod metrics;
pub mod model;
pub mod router;

pub use controller::{Controller, Hooks, Reply};
