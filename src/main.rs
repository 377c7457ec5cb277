//! `turnd`: parses the command line and wires the parts together; nothing else.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use turnd::cli::{Cli, Command, credentials_json};
use turnd::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Credentials(args)) = &cli.command {
        println!("{}", credentials_json(args, turnd::net::now().unix));
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(&cli.serve) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("turnd={}", config.log.level)));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    if config.auth.users.is_empty() && config.auth.secrets.is_empty() {
        tracing::warn!("no users and no auth secrets configured: every Allocate will be refused");
    }
    let admin = match turnd::admin::Admin::bind(&config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(1);
        }
    };
    let running = match turnd::net::start(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(admin) = admin {
        let control = running.control();
        rt.spawn(admin.serve(control));
    }
    rt.block_on(wait_for_signal());
    let allocations = rt.block_on(running.control().allocation_count());
    tracing::info!(allocations, "shutting down");
    running.shutdown();
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
