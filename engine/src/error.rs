//! The engine's error type.
//!
//! Errors are split by who must act: the author of the pipeline config
//! ([`Error::Config`], [`Error::Plan`]: exit code 2, nothing ran), the
//! environment at run time ([`Error::Step`]: exit code 1) or the operator
//! ([`Error::Cancelled`]: exit code 130). Every error that concerns a step
//! names it through [`StepRef`].

use std::fmt;

use datafusion::error::DataFusionError;

/// A boxed error of any type: the cause of a failed step.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Identifies a step in messages: its index, method and `registerAs` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    /// Position in `steps`, starting at 0.
    pub index: usize,
    /// The step's `method`, e.g. `fromFiles`.
    pub method: String,
    /// The step's `registerAs` name, when it has one.
    pub name: Option<String>,
}

impl fmt::Display for StepRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "steps[{}] ({}", self.index, self.method)?;
        if let Some(name) = &self.name {
            write!(f, " as \"{name}\"")?;
        }
        write!(f, ")")
    }
}

/// Errors produced while loading, planning or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config is malformed: bad JSON, unknown key, missing field, bad value.
    #[error("invalid config at {path}{}: {message}", step_suffix(.step))]
    Config {
        /// JSON path of the offending value, e.g. `steps[2].config.query`.
        path: String,
        /// The step the value belongs to, when it belongs to one.
        step: Option<StepRef>,
        /// What is wrong and, where possible, how to fix it.
        message: String,
    },
    /// A step is well-formed JSON but does not plan (bad SQL, unknown column).
    #[error("{step}: {path}: {source}")]
    Plan {
        /// The step that failed to plan.
        step: StepRef,
        /// JSON path of the value that did not plan.
        path: String,
        /// DataFusion's explanation.
        #[source]
        source: DataFusionError,
    },
    /// A step failed while running (missing input, unreadable row, I/O).
    #[error("{step} failed: {source}")]
    Step {
        /// The failing step.
        step: StepRef,
        /// The cause, typed, so that [`crate::classify`] can read its codes;
        /// connectors redact secrets from what their errors display.
        #[source]
        source: BoxError,
    },
    /// The run was interrupted (Ctrl-C / SIGTERM) before it committed.
    #[error("run cancelled before commit; no table was changed")]
    Cancelled,
    /// Reading the config file or another local resource failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A DataFusion error outside any particular step.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

fn step_suffix(step: &Option<StepRef>) -> String {
    match step {
        Some(step) => format!(" in {step}"),
        None => String::new(),
    }
}

impl Error {
    /// A config error at `path`, optionally inside a step.
    pub fn config(
        path: impl Into<String>,
        step: Option<StepRef>,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            path: path.into(),
            step,
            message: message.into(),
        }
    }

    /// A run-time failure of `step` caused by `cause` (an error, or text).
    pub fn step(step: &StepRef, cause: impl Into<BoxError>) -> Self {
        Error::Step {
            step: step.clone(),
            source: cause.into(),
        }
    }

    /// Attributes an error from a connector to `step`; an engine [`Error`]
    /// raised by the connector itself (a config error found late) is kept.
    pub fn from_connector(step: &StepRef, err: BoxError) -> Self {
        match err.downcast::<Error>() {
            Ok(err) => *err,
            Err(err) => Error::step(step, err),
        }
    }

    /// The process exit code for this error: 2 for config and planning
    /// errors, 130 for cancellation, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } | Error::Plan { .. } => 2,
            Error::Cancelled => 130,
            Error::Step { .. } | Error::Io { .. } | Error::DataFusion(_) => 1,
        }
    }
}
