//! virtio-rng behind the virtio-mmio transport, driven like a guest driver would:
//! registers for initialization, then descriptor chains written into guest memory from
//! the input, QueueNotify, and the queue run on this thread.
//!
//! Input: the `kiln_fuzz::script` header (one queue; target bit 3 of `layout` builds
//! the device with a small rate limiter: 2 requests and 4 KiB per 1 ms) and ops. Op 10
//! delivers the rate limiter's timer event, as the device thread's event loop would
//! (only to an activated device); op 11 replaces the limits (`ops` u8, `bytes` u16,
//! `refill_ms` u8; a size of 0 is no limit). Checked beyond "no panic" (through the
//! device's metrics): the bytes given stay within what the passes run may give, a
//! queue's worth of requests of at most `MAX_REQUEST_BYTES` each per pass.

#![no_main]

use devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use devices::virtio::rng::{Rng, MAX_REQUEST_BYTES};
use devices::virtio::VirtioDevice;
use event_manager::EventSet;
use kiln_fuzz::input::Input;
use kiln_fuzz::script::Session;
use libfuzzer_sys::fuzz_target;

fn limits(ops: u64, bytes: u64, refill_time: u64) -> RateLimiterConfig {
    let bucket = |size| {
        (size > 0).then_some(TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        })
    };
    RateLimiterConfig {
        bandwidth: bucket(bytes),
        ops: bucket(ops),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let mut s = Session::start(&mut inp, 1, |bits| {
        let cfg = (bits & 1 != 0).then(|| limits(2, 4096, 1));
        Rng::new(cfg).expect("rng device")
    });
    s.run(&mut inp, |op, s, inp| {
        let mut dev = s.drv.t.device();
        if op == 10 {
            if !dev.backend_interest(0).is_empty() {
                dev.process_backend(0, EventSet::IN);
            }
            return;
        }
        let (ops, bytes, refill) = (inp.u8(), inp.u16(), inp.u8());
        dev.update_rate_limiter(&limits(
            u64::from(ops),
            u64::from(bytes),
            u64::from(refill) + 1,
        ));
    });
    let m = s.drv.t.device().metrics().snapshot();
    // Each notification pass serves at most a queue's worth (256) of requests.
    let passes = m.entropy_event_count + m.rate_limiter_event_count;
    assert!(
        m.entropy_bytes <= passes * 256 * u64::from(MAX_REQUEST_BYTES),
        "{m:?}"
    );
    if kiln_fuzz::verbose() {
        eprintln!("virtio_rng: {m:?}");
    }
});
