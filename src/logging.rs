//! Logs to stderr as text (terminals) or JSON lines (log collectors).
//!
//! Third-party HTTP and SDK crates are capped at `debug`, whatever the requested level:
//! at `trace` they print whole requests and responses, which carry identity tokens, session
//! tokens and secret keys. Secrets must never reach a log.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Targets whose `trace` output contains request/response bodies or headers.
const CAPPED: &[&str] = &[
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_smithy_types",
    "aws_sigv4",
    "aws_config",
    "aws_sdk_s3",
    "aws_sdk_sts",
    "aws_sdk_sso",
    "aws_sdk_ssooidc",
    "aws_credential_types",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
];

#[derive(Debug, thiserror::Error)]
#[error("invalid --log-level {0:?}: use error, warn, info, debug, trace or tracing directives")]
pub struct LogLevelError(String);

/// The filter for a requested level: the user's directives, then the caps (later directives
/// for the same target win, so a cap also overrides an explicit `aws_smithy_runtime=trace`).
pub fn filter(level: &str) -> Result<EnvFilter, LogLevelError> {
    // A bare word would be taken as a target name ("verbose" = everything in a crate called
    // verbose): accept only real level names there.
    let bare = !level.contains(['=', ',', '[', ':']);
    let known = ["off", "error", "warn", "info", "debug", "trace"];
    if bare && !known.contains(&level.trim().to_ascii_lowercase().as_str()) {
        return Err(LogLevelError(level.to_string()));
    }
    EnvFilter::try_new(level).map_err(|_| LogLevelError(level.to_string()))?;
    // A directive for a capped crate (or a module inside it) would be more specific than
    // the cap and win over it: refuse trace there.
    for d in level.split(',') {
        if let Some((target, lvl)) = d.trim().split_once('=') {
            let target = target.split('[').next().unwrap_or("").trim();
            let capped = CAPPED
                .iter()
                .any(|c| target == *c || target.starts_with(&format!("{c}::")));
            if capped && lvl.trim().eq_ignore_ascii_case("trace") {
                return Err(LogLevelError(format!(
                    "{level} ({target} is capped at debug: its trace output carries secrets)"
                )));
            }
        }
    }
    // Capped targets follow the global level, but never beyond debug.
    let global = level
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .rfind(|d| known.contains(&d.as_str()))
        .unwrap_or_else(|| "error".to_string());
    let cap = if global == "trace" {
        "debug"
    } else {
        global.as_str()
    };
    let mut directives = level.to_string();
    for t in CAPPED {
        directives.push_str(&format!(",{t}={cap}"));
    }
    EnvFilter::try_new(&directives).map_err(|_| LogLevelError(level.to_string()))
}

pub fn init(level: &str, format: LogFormat) -> Result<(), LogLevelError> {
    use std::io::IsTerminal;
    // Colours only for a terminal: log collectors would get escape codes.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level)?)
        .with_ansi(ansi)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(level: &str) -> String {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(filter(level).unwrap())
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "SDK-TRACE-BODY");
            tracing::trace!(target: "hyper::proto", "HYPER-TRACE");
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator", "SDK-DEBUG");
            tracing::trace!(target: "s3_oidc_mount::fs", "OURS-TRACE");
        });
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn third_party_trace_is_capped() {
        for level in [
            "trace",
            "trace,hyper=debug",
            "aws_smithy_runtime=debug,trace",
        ] {
            let out = logged(level);
            assert!(
                !out.contains("SDK-TRACE-BODY") && !out.contains("HYPER-TRACE"),
                "{level}: {out}"
            );
            assert!(
                out.contains("SDK-DEBUG") && out.contains("OURS-TRACE"),
                "{level}: {out}"
            );
        }
        // At info, third-party debug output stays off.
        let info = logged("info");
        assert!(
            !info.contains("SDK-DEBUG") && !info.contains("OURS-TRACE"),
            "{info}"
        );
        assert!(filter("verbose").is_err());
        assert!(filter("trace,aws_smithy_runtime=trace").is_err());
        assert!(filter("info,aws_smithy_runtime::client::orchestrator=trace").is_err());
        assert!(filter("info,aws_smithy_runtime::client::orchestrator=debug").is_ok());
        assert!(filter("s3_oidc_mount=loud").is_err());
        assert!(filter("INFO").is_ok());
    }
}
