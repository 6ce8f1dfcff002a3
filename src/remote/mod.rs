//! Writing a target that only a pod in the cluster can reach: promigrate runs there as a
//! receiver (`promigrate receive`) and does on the volume what a local apply does, and the
//! promigrate that reads the source drives it over one stream (the pod's stdin/stdout).
//!
//! - [`frame`]: the framing, each frame checked, so a cut or damaged stream is never data;
//! - [`msg`]: the requests and replies;
//! - [`receiver`]: the receiving end, over a [`crate::volume::Local`];
//! - [`client`]: the driving end.

pub mod client;
pub mod frame;
pub mod msg;
pub mod receiver;
