//! Event-time windows: Spark's `window` and `session_window` in SQL.

mod functions;
mod sql;

pub use functions::{window_fields, window_functions, WINDOW};
pub use sql::{rewrite_windows, SESSION_WINDOW};
