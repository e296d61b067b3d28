//! Manifest parsing and validation: any text as a YAML file goes through every check
//! `ofe validate` runs, which must report problems, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ofe_crds::manifest::{ManifestSet, Resource, parse_file};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut set = ManifestSet::default();
    parse_file(std::path::Path::new("fuzz.yaml"), text, &mut set);
    for m in &set.manifests {
        let _ = ofe_crds::validate::check_resource(&m.resource);
        match &m.resource {
            Resource::Trigger(t) => {
                let _ = ofe_trigger::check(t);
            }
            Resource::EventSource(es) => {
                let _ = ofe_eventsource::check(es);
            }
            Resource::EventBus(_) | Resource::ClusterEventBus(_) => {}
        }
    }
    let _ = ofe_crds::validate::check_set(&set.manifests);
});
