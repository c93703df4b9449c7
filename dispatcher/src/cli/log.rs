//! The dispatcher's own log on stderr: with `RUST_LOG`, full log lines (the libraries' too if the
//! filter says so); without it, only the dispatcher's warnings, one `cuttle: warn: ...` line each.

use std::io::IsTerminal;

/// Sets up the log for the process, once, before anything logs.
pub(super) fn init() {
    let colours = std::io::stderr().is_terminal();
    match tracing_subscriber::EnvFilter::try_from_default_env() {
        // Asked for: full log lines, the libraries' (lapin, redis...) too if the filter says so.
        Ok(filter) => {
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colours).with_writer(std::io::stderr).init()
        }
        // Not asked for: only the dispatcher's own warnings, as one `cuttle:` line each.
        Err(_) => tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("dispatcher=warn"))
            .event_format(PlainLine)
            .with_writer(std::io::stderr)
            .init(),
    }
}

/// A log line as the user sees it without `RUST_LOG`: `cuttle: warn: message field=value`.
struct PlainLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "cuttle: {}: ", event.metadata().level().as_str().to_lowercase())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
