//! Per-device counters with Firecracker's metric names.
//!
//! A device holds its counters in an `Arc` and bumps them with relaxed atomic adds (no
//! lock, no ordering: each counter is only ever read as a number); the VMM keeps a
//! clone of the `Arc` and takes a [`BlockMetrics::snapshot`] / [`NetMetrics::snapshot`]
//! whenever it writes metrics out. Counters only grow.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Adds one to `c`.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to `c`.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Defines a struct of `AtomicU64` counters and its plain, serializable snapshot.
macro_rules! counters {
    (
        $(#[$m:meta])* pub struct $name:ident => $(#[$sm:meta])* $snap:ident {
            $( $(#[$fm:meta])* $field:ident, )*
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( $(#[$fm])* pub $field: AtomicU64, )*
        }

        $(#[$sm])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct $snap {
            $( $(#[$fm])* pub $field: u64, )*
        }

        impl $name {
            /// The counters' current values.
            pub fn snapshot(&self) -> $snap {
                $snap {
                    $( $field: self.$field.load(Ordering::Relaxed), )*
                }
            }
        }
    };
}

counters! {
    /// A virtio-blk device's counters.
    pub struct BlockMetrics =>
    /// [`BlockMetrics`] at one moment, serialized with Firecracker's field names.
    BlockMetricsSnapshot {
        /// Activations that failed (a wrong number of queues).
        activate_fails,
        /// Configuration-space writes refused (Kiln's transport ignores them without
        /// telling the device, so this stays 0).
        cfg_fails,
        /// Requests that failed on the host (a read, write, sync or zeroing error).
        execute_fails,
        /// FLUSH requests.
        flush_count,
        /// Requests the driver got wrong: malformed chains, bad headers or lengths,
        /// sectors beyond the disk, writes to a read-only disk, unsupported types.
        invalid_reqs_count,
        /// Queue passes that found no request.
        no_avail_buffer,
        /// Queue notifications handled.
        queue_event_count,
        /// Rate-limiter timer events handled.
        rate_limiter_event_count,
        /// Requests the rate limiter held back.
        rate_limiter_throttled_events,
        /// Bytes read for the guest.
        read_bytes,
        /// Successful read requests.
        read_count,
        /// Bytes written for the guest.
        write_bytes,
        /// Successful write requests.
        write_count,
        /// Successful post-boot updates (disk replaced, rate limiter changed).
        update_count,
        /// Failed post-boot updates (the new disk could not be opened).
        update_fails,
    }
}

counters! {
    /// A virtio-net device's counters.
    pub struct NetMetrics =>
    /// [`NetMetrics`] at one moment, serialized with Firecracker's field names.
    NetMetricsSnapshot {
        /// Activations that failed (wrong queue count, offloads refused by the TAP).
        activate_fails,
        /// Configuration-space writes refused (Kiln's transport ignores them without
        /// telling the device, so this stays 0).
        cfg_fails,
        /// Bytes delivered to the guest (frames with their virtio-net header).
        rx_bytes_count,
        /// Frames delivered to the guest.
        rx_packets_count,
        /// Frames not delivered: the backend read failed, the RX buffer was malformed
        /// or too small, or guest memory could not be written.
        rx_fails,
        /// RX passes that returned buffers to the guest (each may notify it).
        rx_count,
        /// Times the RX rate limiter held a frame back.
        rx_rate_limiter_throttled,
        /// RX rate-limiter timer events handled.
        rx_event_rate_limiter_count,
        /// RX queue notifications handled.
        rx_queue_event_count,
        /// Times a frame waited because the guest had no RX buffer posted.
        no_rx_avail_buffer,
        /// Bytes written to the backend (frames with their virtio-net header).
        tx_bytes_count,
        /// Frames written to the backend.
        tx_packets_count,
        /// Frames the backend refused with an error (dropped).
        tx_fails,
        /// TX passes that returned buffers to the guest (each may notify it).
        tx_count,
        /// TX chains that are not a frame (malformed, too short, too long, writable).
        tx_malformed_frames,
        /// Times the TX rate limiter held a frame back.
        tx_rate_limiter_throttled,
        /// TX rate-limiter timer events handled.
        tx_rate_limiter_event_count,
        /// TX queue notifications handled.
        tx_queue_event_count,
    }
}

counters! {
    /// A virtio-rng device's counters.
    pub struct RngMetrics =>
    /// [`RngMetrics`] at one moment, serialized with Firecracker's `entropy` field names.
    RngMetricsSnapshot {
        /// Activations that failed (a wrong number of queues).
        activate_fails,
        /// Requests answered with 0 bytes because the driver got them wrong (malformed
        /// chain, no device-writable buffer).
        entropy_event_fails,
        /// Queue notifications handled.
        entropy_event_count,
        /// Random bytes given to the guest.
        entropy_bytes,
        /// Requests answered with 0 bytes because the host's `getrandom` failed.
        host_rng_fails,
        /// Requests the rate limiter held back.
        entropy_rate_limiter_throttled,
        /// Rate-limiter timer events handled.
        rate_limiter_event_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reads_the_counters() {
        let m = BlockMetrics::default();
        inc(&m.read_count);
        add(&m.read_bytes, 4096);
        let s = m.snapshot();
        assert_eq!((s.read_count, s.read_bytes, s.write_count), (1, 4096, 0));
    }

    #[test]
    fn snapshot_serializes_with_firecracker_names() {
        let m = NetMetrics::default();
        add(&m.tx_bytes_count, 60);
        let v = serde_json::to_value(m.snapshot()).unwrap();
        assert_eq!(v["tx_bytes_count"], 60);
        assert_eq!(v["rx_rate_limiter_throttled"], 0);
        let b = serde_json::to_value(BlockMetrics::default().snapshot()).unwrap();
        assert_eq!(b["rate_limiter_throttled_events"], 0);
        assert_eq!(b.as_object().unwrap().len(), 15);
    }

    #[test]
    fn rng_snapshot_has_firecrackers_entropy_names() {
        let m = RngMetrics::default();
        add(&m.entropy_bytes, 64);
        let v = serde_json::to_value(m.snapshot()).unwrap();
        assert_eq!(v["entropy_bytes"], 64);
        for name in [
            "activate_fails",
            "entropy_event_fails",
            "entropy_event_count",
            "host_rng_fails",
            "entropy_rate_limiter_throttled",
            "rate_limiter_event_count",
        ] {
            assert_eq!(v[name], 0, "{name}");
        }
        assert_eq!(v.as_object().unwrap().len(), 7);
    }
}
