//! Logging: JSON in Lambda (honouring Lambda's log level and format
//! settings), readable text locally, and JSON on request everywhere.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

/// Picks the format from the environment: `LEDGERLINE_LOG_FORMAT`, else
/// Lambda's `AWS_LAMBDA_LOG_FORMAT`, else JSON in Lambda and text elsewhere.
pub fn format_from_env() -> Format {
    let explicit = std::env::var("LEDGERLINE_LOG_FORMAT")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_FORMAT"))
        .ok();
    match explicit.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("json") => Format::Json,
        Some("text") => Format::Text,
        _ if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() => Format::Json,
        _ => Format::Text,
    }
}

fn filter_from_env() -> EnvFilter {
    // RUST_LOG wins; then Lambda's application log level; then info.
    if let Ok(f) = EnvFilter::try_from_default_env() {
        return f;
    }
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .map(|l| l.to_ascii_lowercase())
        .unwrap_or_else(|_| "info".into());
    let level = match level.as_str() {
        "fatal" => "error",
        l => l,
    };
    EnvFilter::try_new(format!(
        "{level},hyper=warn,aws_config=warn,aws_smithy_runtime=warn,tokio_postgres=warn"
    ))
    .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber writing to stderr. Safe to call twice.
pub fn init() {
    init_with_writer(format_from_env(), std::io::stderr);
}

pub fn init_with_writer<W>(format: Format, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter_from_env())
        .with_writer(writer)
        .with_target(false);
    let _ = match format {
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        Format::Text => builder.with_ansi(false).compact().try_init(),
    };
}
