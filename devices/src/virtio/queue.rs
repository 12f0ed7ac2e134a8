//! What every device does with a split virtqueue the driver may have broken: pop a
//! chain, tell an empty ring from a broken one, bound each pass, return and notify.
//!
//! virtio-queue's `pop_descriptor_chain` logs and answers "nothing" when the available
//! index is invalid, while `enable_notification` keeps answering "more": a device loop
//! built on both spins forever. Here an invalid index is an error the device acts on
//! (`DEVICE_NEEDS_RESET`), and every pass stops after [`PassBudget`] allows.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Interrupt, Mem};

/// A chain popped from a queue, borrowing guest memory.
pub type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap<()>>;

/// Bytes of guest data one pass may move before it yields (on top of the chain count).
pub const PASS_BYTES: u64 = 32 << 20;

/// An error the driver made that the device cannot recover from without a reset.
#[derive(Debug, thiserror::Error)]
pub enum QueueBroken {
    /// The available ring's index or entries cannot be used.
    #[error("available ring: {0}")]
    Avail(virtio_queue::Error),
    /// A head index the driver made available cannot be returned.
    #[error("cannot return descriptor {head}: {source}")]
    Used {
        /// The head index.
        head: u16,
        /// What virtio-queue said.
        source: virtio_queue::Error,
    },
    /// The notification-suppression fields cannot be read or written.
    #[error("event index: {0}")]
    EventIdx(virtio_queue::Error),
}

/// The next available chain: `Ok(None)` when the ring is empty.
pub fn pop<'m>(q: &mut Queue, mem: &'m Mem) -> Result<Option<Chain<'m>>, QueueBroken> {
    let mut iter = q.iter(&**mem).map_err(QueueBroken::Avail)?;
    Ok(iter.next())
}

/// Puts `head` in the used ring with `len` bytes written.
pub fn add_used(q: &mut Queue, mem: &Mem, head: u16, len: u32) -> Result<(), QueueBroken> {
    q.add_used(&**mem, head, len)
        .map_err(|source| QueueBroken::Used { head, source })
}

/// After the ring ran empty: with `VIRTIO_RING_F_EVENT_IDX`, publishes `avail_event` and
/// answers whether chains arrived meanwhile. Without it notifications stay enabled.
pub fn rearm(q: &mut Queue, mem: &Mem) -> Result<bool, QueueBroken> {
    if !q.event_idx_enabled() {
        return Ok(false);
    }
    q.enable_notification(&**mem).map_err(QueueBroken::EventIdx)
}

/// Raises a used-buffer interrupt unless the driver suppressed it (§2.7.10).
pub fn notify_used(q: &mut Queue, mem: &Mem, interrupt: &Interrupt) {
    // An unreadable used_event cannot happen with a validated ring; notify to be safe.
    if q.needs_notification(&**mem).unwrap_or(true) {
        interrupt.signal_used();
    }
}

/// Ends a queue pass: notifies the driver of used buffers (when the pass used any) and
/// turns a broken queue into `DEVICE_NEEDS_RESET` (logged once, as the status latches).
/// Returns true when work is left for another pass. `what` names the queue in the log.
pub fn end_pass(
    q: &mut Queue,
    mem: &Mem,
    interrupt: &Interrupt,
    (used, end): (bool, PassEnd),
    what: &str,
) -> bool {
    if used {
        notify_used(q, mem, interrupt);
    }
    match end {
        PassEnd::Yielded => true,
        PassEnd::Broken(e) => {
            if interrupt.set_needs_reset() {
                log::warn!("{what}: {e}; device needs a reset");
            }
            false
        }
        PassEnd::Drained | PassEnd::Blocked => false,
    }
}

/// How much one queue pass may do before it returns to its thread's event loop.
///
/// A pass ends after the queue's size in chains, [`PASS_BYTES`] of data or twice the
/// queue's size in loop turns, whichever comes first; the device then reports work left
/// and its thread serves other events before the next pass.
#[derive(Debug)]
pub struct PassBudget {
    chains: u32,
    turns: u32,
    bytes: u64,
}

impl PassBudget {
    /// A budget for a queue of `size` entries.
    pub fn new(size: u16) -> Self {
        let size = u32::from(size.max(1));
        Self {
            chains: size,
            turns: size * 2,
            bytes: PASS_BYTES,
        }
    }

    /// Counts one chain that moved `bytes`; false once the pass must end.
    pub fn spend(&mut self, bytes: u64) -> bool {
        self.chains = self.chains.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
        self.turn()
    }

    /// Counts one loop turn (a chain or a re-check of the ring); false once the pass
    /// must end.
    pub fn turn(&mut self) -> bool {
        self.turns = self.turns.saturating_sub(1);
        self.chains > 0 && self.bytes > 0 && self.turns > 0
    }
}

/// What a pass ended on.
#[derive(Debug)]
pub enum PassEnd {
    /// The ring is empty (and notifications are re-armed).
    Drained,
    /// The budget ran out with chains still available.
    Yielded,
    /// Something stops the pass that a later event resolves (a full backend).
    Blocked,
    /// The driver broke the queue.
    Broken(QueueBroken),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_ends_after_queue_size_chains() {
        let mut b = PassBudget::new(4);
        assert!(b.spend(1));
        assert!(b.spend(1));
        assert!(b.spend(1));
        assert!(!b.spend(1));
    }

    #[test]
    fn budget_ends_after_pass_bytes() {
        let mut b = PassBudget::new(256);
        assert!(b.spend(PASS_BYTES - 1));
        assert!(!b.spend(1));
    }

    #[test]
    fn budget_bounds_empty_turns() {
        let mut b = PassBudget::new(2);
        assert!(b.turn());
        assert!(b.turn());
        assert!(b.turn());
        assert!(!b.turn());
    }

    #[test]
    fn zero_size_queue_still_bounded() {
        let mut b = PassBudget::new(0);
        assert!(!b.spend(0));
    }
}
