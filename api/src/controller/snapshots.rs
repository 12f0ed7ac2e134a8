//! `PUT /snapshot/create` and `PUT /snapshot/load`.

use std::path::PathBuf;

use vmm::snapshot::{RestoreOptions, SnapshotKind, VmSnapshot};

use super::{Controller, Reply, Running};
use crate::model::{SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmResources};

impl Controller {
    pub(super) fn create_snapshot(&mut self, p: &SnapshotCreateParams) -> Result<Reply, Reply> {
        let vm = self.running()?;
        let kind = match p.snapshot_type {
            SnapshotType::Full => SnapshotKind::Full,
            SnapshotType::Diff => SnapshotKind::Diff,
        };
        let api = serde_json::to_value(&self.resources).ok();
        vm.handle
            .snapshot(
                kind,
                p.snapshot_path.as_ref(),
                p.mem_file_path.as_ref(),
                api,
            )
            .map_err(|e| Reply::Fault(format!("Cannot create the snapshot: {e}")))?;
        Ok(Reply::NoContent)
    }

    pub(super) fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<Reply, Reply> {
        let fault = |m: String| Reply::Fault(m);
        if self.started() {
            return Err(fault(
                "Loading a microVM snapshot is not allowed after starting the microVM.".into(),
            ));
        }
        if self.configured() {
            return Err(fault(
                "Loading a microVM snapshot is not allowed after configuring boot-specific \
                 resources: load it in a fresh process."
                    .into(),
            ));
        }
        let mem = p.mem_file().map_err(fault)?;
        let mut snapshot = VmSnapshot::read(p.snapshot_path.as_ref())
            .map_err(|e| fault(format!("Cannot load the snapshot: {e}")))?;
        let mut resources: VmResources = snapshot
            .api
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        for o in &p.network_overrides {
            let index = resources
                .network_interfaces
                .iter()
                .position(|n| n.iface_id == o.iface_id)
                .ok_or_else(|| {
                    fault(format!(
                        "Cannot load the snapshot: it has no network interface {}.",
                        o.iface_id
                    ))
                })?;
            resources.network_interfaces[index].host_dev_name = o.host_dev_name.clone();
            match snapshot.config.nets.get_mut(index) {
                Some(net) => net.tap = o.host_dev_name.clone(),
                None => {
                    return Err(fault(format!(
                    "Cannot load the snapshot: network interface {} is not in its configuration.",
                    o.iface_id
                )))
                }
            }
        }
        let opts = RestoreOptions {
            mem_file: PathBuf::from(mem),
            track_dirty_pages: p.tracks_dirty_pages(),
            resume: p.resume_vm,
        };
        let handle = (self.hooks.restore)(snapshot, opts)
            .map_err(|e| fault(format!("Cannot load the snapshot: {e}")))?;
        self.resources = resources;
        let drive_ids = self.drive_ids();
        self.vm = Some(Running { handle, drive_ids });
        Ok(Reply::NoContent)
    }

    /// Whether anything boot-specific was configured (a snapshot load needs a fresh
    /// process).
    fn configured(&self) -> bool {
        let r = &self.resources;
        r.boot_source.is_some() || !r.drives.is_empty() || !r.network_interfaces.is_empty()
    }
}
