//! What the hosts of one run and the faults applied to them share.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use clientmq_server::Server;

use super::{Broken, RunOptions};
use crate::scenario::{BackendMode, Scenario};
use crate::trace::Trace;

/// What the hosts of one run share.
#[derive(Clone)]
pub(super) struct World {
    pub scenario: Scenario,
    pub trace: Trace,
    pub broken: Broken,
    pub options: RunOptions,
    pub mode: Arc<Mutex<BackendMode>>,
    /// The running process of each gateway host, by host name.
    pub servers: Arc<Mutex<BTreeMap<String, Server>>>,
}

impl World {
    pub fn gateway_hosts(&self) -> Vec<String> {
        match &self.scenario.fleet {
            Some(fleet) => fleet.gateway_hosts(),
            None => vec!["gateway".to_owned()],
        }
    }

    /// The running gateway processes, in host order.
    pub fn servers(&self) -> Vec<Server> {
        self.servers.lock().expect("servers").values().cloned().collect()
    }
}
