//! Pure decisions of freshen.
//!
//! Nothing here talks to Kubernetes, a registry, a socket or the clock:
//! callers gather facts, pass `now`, and get values back. Everything that can
//! be decided without I/O is decided here and unit-tested here.

pub mod age;
pub mod base;
pub mod condition;
pub mod duration;
pub mod event;
pub mod findings;
pub mod gitops;
pub mod image;
pub mod kind;
pub mod lease;
pub mod observe;
pub mod plan;
pub mod policy;
pub mod rebuild;
pub mod rollout;
pub mod tag_budget;
pub mod verify;
pub mod window;

pub use age::{ImageAge, UnknownAge, container_age, image_age};
pub use duration::{DurationError, HumanDuration, parse_duration, short_age};
pub use image::{Digest, ImageRefError, ImageReference};
