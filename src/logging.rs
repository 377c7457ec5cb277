//! Log output: text or JSON lines on stdout (`log.format`), level from `RUST_LOG` when it is
//! set, else from `log.level`. The level filter sits behind a reload handle so a config
//! reload can change it; the format is fixed for the life of the process.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::LogSection;

/// Changes the level filter of the installed subscriber.
#[derive(Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it wins over `log.level`, on reload too.
    from_env: bool,
}

/// The filter for a `log.level` value: that level for turnd's own events.
fn level_filter(level: &str) -> EnvFilter {
    EnvFilter::new(format!("turnd={level}"))
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(log: &LogSection) -> LogHandle {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (level_filter(&log.level), false),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let json = log.format == "json";
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let text_layer = (!json).then(|| fmt::layer().with_ansi(ansi));
    let json_layer = json.then(|| fmt::layer().json());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .try_init();
    LogHandle {
        filter: handle,
        from_env,
    }
}

impl LogHandle {
    /// Applies a reloaded `log.level`. Returns whether the level changed the filter
    /// (false when `RUST_LOG` is in force).
    pub fn set_level(&self, level: &str) -> Result<bool, String> {
        if self.from_env {
            return Ok(false);
        }
        self.filter
            .reload(level_filter(level))
            .map(|()| true)
            .map_err(|e| e.to_string())
    }
}
