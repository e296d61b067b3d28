//! The ofe runtime: the data plane of one process, as a library.
//!
//! [`Plane`] runs a set of EventSources and Triggers (the resources of `ofe run`'s files, or of
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

mod error;
mod plane;
mod spec;

pub use error::{RuntimeError, chain};
pub use plane::{Plane, ResourceFailure, SendTargets, Settings, no_delay};
