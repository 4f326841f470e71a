//! Logs to stderr as text (terminals) or JSON lines (log collectors).

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

#[derive(Debug, thiserror::Error)]
#[error("invalid --log-level {0:?}: use error, warn, info, debug, trace or tracing directives")]
pub struct LogLevelError(String);

pub fn init(level: &str, format: LogFormat) -> Result<(), LogLevelError> {
    let filter = EnvFilter::try_new(level).map_err(|_| LogLevelError(level.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    Ok(())
}
