//! Logs to stderr as text (terminals) or JSON lines (log collectors).
//!
//! JSON lines follow Cloud Logging's structured-logging fields, so Cloud Run shows levels
//! and messages: `severity` (DEBUG, INFO, WARNING, ERROR), `message`, `time` (RFC 3339, the
//! field Cloud Logging reads the time from) and `timestamp` (the same, for other collectors),
//! `target`, the event's fields, and `spans` (each enclosing span's name and fields).
//!
//! Third-party HTTP and SDK crates are capped at `debug`, whatever the requested level:
//! at `trace` they print whole requests and responses, which carry identity tokens, session
//! tokens and secret keys. Secrets must never reach a log.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

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
    let filter = filter(level)?;
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => {
            // Colours only for a terminal: log collectors would get escape codes.
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .try_init()
        }
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .fmt_fields(JsonFields::new())
            .event_format(CloudJson)
            .try_init(),
    };
    Ok(())
}

/// Cloud Logging's name of a level (it has no TRACE: DEBUG).
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

/// Keys of the line itself: an event field of the same name is put under `fields` instead.
const RESERVED: &[&str] = &[
    "severity",
    "message",
    "time",
    "timestamp",
    "target",
    "spans",
    "fields",
];

/// The time of a line in both of Cloud Logging's forms: `time` (RFC 3339) and `timestamp`
/// (`{"seconds", "nanos"}`, the form that field must have there).
fn insert_time(obj: &mut Map<String, Value>) {
    let now = std::time::SystemTime::now();
    let d = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    obj.insert("time".into(), crate::util::rfc3339(now).into());
    obj.insert(
        "timestamp".into(),
        serde_json::json!({"seconds": d.as_secs(), "nanos": d.subsec_nanos()}),
    );
}

/// One JSON log line (without an event), e.g. for the final error message.
pub fn json_line(severity: &str, message: &str) -> String {
    let mut obj = Map::new();
    obj.insert("severity".into(), severity.into());
    obj.insert("message".into(), message.into());
    insert_time(&mut obj);
    Value::Object(obj).to_string()
}

/// Formats each event as one JSON object per line (see the module comment).
pub struct CloudJson;

impl<S, N> FormatEvent<S, N> for CloudJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let message = match fields.remove("message") {
            Some(Value::String(m)) => m,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let mut obj = Map::new();
        obj.insert("severity".into(), severity(meta.level()).into());
        obj.insert("message".into(), message.into());
        insert_time(&mut obj);
        // Events bridged from the `log` crate (fuser) carry their origin as `log.*` fields:
        // keep the target, drop the build machine's file paths.
        let target = match fields.remove("log.target") {
            Some(Value::String(t)) => t,
            _ => meta.target().to_string(),
        };
        fields.retain(|k, _| !k.starts_with("log."));
        obj.insert("target".into(), target.into());
        let mut clashing = Map::new();
        for (k, v) in fields {
            if RESERVED.contains(&k.as_str()) {
                clashing.insert(k, v);
            } else {
                obj.insert(k, v);
            }
        }
        if !clashing.is_empty() {
            obj.insert("fields".into(), Value::Object(clashing));
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut m = Map::new();
                    m.insert("name".into(), span.name().into());
                    let ext = span.extensions();
                    if let Some(f) = ext.get::<FormattedFields<N>>() {
                        // With JsonFields (as `init` sets up) these are a JSON object.
                        match serde_json::from_str::<Map<String, Value>>(f) {
                            Ok(parsed) => m.extend(parsed),
                            Err(_) if !f.is_empty() => {
                                m.insert("fields".into(), f.to_string().into());
                            }
                            Err(_) => {}
                        }
                    }
                    Value::Object(m)
                })
                .collect();
            if !spans.is_empty() {
                obj.insert("spans".into(), Value::Array(spans));
            }
        }
        writeln!(writer, "{}", Value::Object(obj))
    }
}

/// An event's fields as JSON values (numbers and booleans kept as such).
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
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
    fn json_lines_carry_cloud_logging_fields() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(filter("trace").unwrap())
            .with_writer(move || w.clone())
            .fmt_fields(JsonFields::new())
            .event_format(CloudJson)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("fuse", op = "read", ino = 7u64);
            let _g = span.enter();
            tracing::warn!(path = "/a b", errno = 5, ok = false, "request failed");
            tracing::error!(message2 = 1.5, severity = "spoof", "bad");
            tracing::trace!("fine");
            tracing::info!(
                r#"quote " and newline
 inside"#
            );
            // As the `log` bridge records fuser's messages.
            tracing::info!(
                log.target = "fuser::session",
                log.file = "/root/.cargo/x.rs",
                log.line = 3u64,
                "Mounting"
            );
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[4]["target"], "fuser::session");
        assert!(lines[4].get("log.file").is_none(), "{}", lines[4]);
        let w = &lines[0];
        assert_eq!(w["severity"], "WARNING");
        assert_eq!(w["message"], "request failed");
        assert_eq!(w["path"], "/a b");
        assert_eq!(w["errno"], 5);
        assert_eq!(w["ok"], false);
        assert_eq!(w["target"], module_path!());
        let t = w["time"].as_str().unwrap();
        assert!(
            t.len() == 24 && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
        assert!(w["timestamp"]["seconds"].as_u64().unwrap() > 1_700_000_000);
        assert!(w["timestamp"]["nanos"].as_u64().unwrap() < 1_000_000_000);
        assert_eq!(w["spans"][0]["name"], "fuse");
        assert_eq!(w["spans"][0]["op"], "read");
        assert_eq!(w["spans"][0]["ino"], 7);
        // A field named like a reserved key cannot override it.
        assert_eq!(lines[1]["severity"], "ERROR");
        assert_eq!(lines[1]["fields"]["severity"], "spoof");
        assert_eq!(
            lines[2]["severity"], "DEBUG",
            "TRACE is DEBUG for Cloud Logging"
        );
        assert_eq!(lines[3]["message"], "quote \" and newline\n inside");
        let e: Value =
            serde_json::from_str(&json_line("ERROR", "s3-oidc-mount: error: x")).unwrap();
        assert_eq!(e["severity"], "ERROR");
        assert_eq!(e["message"], "s3-oidc-mount: error: x");
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
