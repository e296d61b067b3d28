//! The ofe runtime: the data plane of one process, as a library.
//!
//! [`load_and_check`] reads manifests and runs every check on them (what `ofe validate` says),
//! with `secretKeyRef`s filled from [`LocalSecrets`]. [`Plane`] runs a set of EventSources and Triggers (the resources of `ofe run`'s files, or of
//! the operator's watches) and changes it in place: [`Plane::apply`] starts what is new, stops
//! what is gone, restarts what changed, and leaves the rest running. Tests and the benchmark
//! start it in-process, without spawning the binary:
//!
//! ```no_run
//! # async fn example(manifests: Vec<ofe_crds::manifest::Manifest>) -> Result<(), ofe_runtime::RuntimeError> {
//! use ofe_runtime::{Plane, Settings};
//! let settings = Settings::new(std::path::PathBuf::from(".ofe"));
//! let mut plane = Plane::new(settings, Default::default(), Default::default(), Default::default(), Default::default())?;
//! let failures = plane.apply(&manifests).await?; // what could not start, per resource
//! // ... events flow ...
//! plane.shutdown().await;
//! # Ok(()) }
//! ```

mod check;
mod deadletters;
mod error;
mod pause;
mod plane;
mod replay;
mod secrets;
mod spec;
mod stored;
pub mod topology;

pub use check::{Checked, check_manifests, load_and_check};
pub use deadletters::DeadLetters;
pub use error::{RuntimeError, chain};
pub use pause::{PauseError, PauseState, Pauses, Target as PauseTarget};
pub use plane::{Plane, ResourceFailure, SendTargets, Settings, no_delay};
pub use replay::{ReplayError, ReplayRequest, Replays};
pub use secrets::{LocalSecrets, SecretValues, fill as fill_secrets};
pub use topology::{Graph, Topology};
