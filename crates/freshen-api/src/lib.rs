//! freshen's Kubernetes surface: the `freshen.dev/*` annotation keys and their
//! strict, typed parsing. (The CRD types join this crate with the policies.)

pub mod annotations;

pub use annotations::{AnnotationError, RefreshMode, base_image};
