//! What the HTTP API accepts. Request bodies and query strings are validated here, against the
//! field tables in [`resources`], into [`crate::store::model`] types; nothing invalid reaches the
//! writer. Errors name the field at fault (`qty`, `[3].price`).

pub mod resources;
pub mod spec;

pub use self::resources::*;
pub use self::spec::{Field, Kind, Parsed, Range};
