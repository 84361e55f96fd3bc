//! Admission limits that span shards: the connection limit (with several shards) and the
//! connections per client address. What a connection holds of them lives in its shard's handle
//! and is given back exactly when the core ends the connection and the shard forgets it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;

/// The connection limit across shards (several shards only; one shard's core enforces it
/// exactly). A permit is taken before a connection is handed to a shard, so
/// `available + held + admitting == max` at every step.
pub(crate) struct GlobalAdmission {
    pub permits: Arc<Semaphore>,
    pub max: usize,
    /// Connections holding a permit whose `Open` no shard has handled yet.
    pub admitting: AtomicUsize,
}

/// Connections per client address, across shards.
#[derive(Debug)]
pub struct AddressSlots {
    max: usize,
    held: Mutex<BTreeMap<IpAddr, usize>>,
}

/// One connection's place in [`AddressSlots`]; dropping it gives the place back.
#[derive(Debug)]
pub struct AddressSlot {
    slots: Arc<AddressSlots>,
    ip: IpAddr,
}

impl AddressSlots {
    pub fn new(max: usize) -> Arc<AddressSlots> {
        Arc::new(AddressSlots { max, held: Mutex::new(BTreeMap::new()) })
    }

    /// A place for one more connection from `ip`, or `None` when it holds `max` already.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { slots: self.clone(), ip })
    }

    /// Places held, over every address.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).values().sum()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_per_address_come_back_when_dropped() {
        let slots = AddressSlots::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert!(slots.take(a).is_none(), "a third from the same address");
        let _other = slots.take(b).expect("another address has its own places");
        assert_eq!(slots.held(), 3);
        drop(first);
        assert!(slots.take(a).is_some());
    }
}
