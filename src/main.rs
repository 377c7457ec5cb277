//! `turnd`: parses the command line and wires the parts together; nothing else.

use std::process::ExitCode;

use clap::Parser;
use turnd::cli::{Cli, Command, credentials_json};
use turnd::lifecycle::{DrainEnd, Lifecycle, Signals};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Credentials(args)) => {
            println!("{}", credentials_json(args, turnd::net::now().unix));
            return ExitCode::SUCCESS;
        }
        Some(Command::MigrateCoturn(args)) => return turnd::migrate::run(args),
        Some(Command::CheckConfig(args)) => return turnd::check_config::run(args),
        Some(Command::Probe(args)) => return turnd::probe::run(args),
        Some(Command::Revoke(args)) => return revoke(args),
        Some(Command::SelftestLink(args)) => {
            let mut nonce = [0u8; 16];
            if let Err(e) = getrandom::fill(&mut nonce) {
                eprintln!("turnd: no OS randomness: {e}");
                return ExitCode::from(1);
            }
            return match turnd::cli::selftest_link(args, turnd::net::now().unix, nonce) {
                Ok(link) => {
                    println!("{link}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("turnd: {e}");
                    ExitCode::from(2)
                }
            };
        }
        None => {}
    }
    let config = match cli.serve.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(2);
        }
    };
    let log = turnd::logging::init(&config.log);
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
    // Handlers first, so a signal sent as soon as READY=1 is seen is not fatal.
    let signals = {
        let _in_runtime = rt.enter();
        match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("turnd: cannot install signal handlers: {e}");
                return ExitCode::from(1);
            }
        }
    };
    let running = match turnd::net::start(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(1);
        }
    };
    // Every listener is bound: tell systemd (Type=notify) we are ready.
    turnd::sd_notify::notify_logged("READY=1\nSTATUS=serving");
    let lifecycle = Lifecycle::new(cli.serve.clone(), config.clone(), &running, Some(log));
    let fleet = {
        let _in_runtime = rt.enter();
        match turnd::fleet::Fleet::start(&config, running.control(), Some(lifecycle.clone())) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("turnd: {e}");
                return ExitCode::from(1);
            }
        }
    };
    if let Some(admin) = admin {
        let admin = admin.with_fleet(fleet).with_kernel(running.kernel_path());
        rt.spawn(admin.serve(
            running.control(),
            Some(lifecycle.clone()),
            Some(running.stream_metrics()),
        ));
    }
    match rt.block_on(lifecycle.serve(signals)) {
        DrainEnd::Empty => tracing::info!("drained: no allocation left"),
        DrainEnd::Timeout { left } => tracing::info!(allocations = left, "drain timeout passed"),
        DrainEnd::Aborted { left } => tracing::info!(allocations = left, "drain cut short"),
    }
    tracing::info!("shutting down");
    running.shutdown();
    ExitCode::SUCCESS
}

/// `turnd revoke`: one write to the fleet's Redis.
fn revoke(args: &turnd::cli::RevokeArgs) -> ExitCode {
    let config = match turnd::config::Config::parse_file(&args.config).and_then(|c| {
        c.validate()?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(2);
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
    let now = turnd::net::now().unix;
    match rt.block_on(turnd::fleet::revoke_once(
        &config, &args.user, args.ttl, now,
    )) {
        Ok(0) => {
            println!("revoked {} on every node, until lifted", args.user);
            ExitCode::SUCCESS
        }
        Ok(until) => {
            println!("revoked {} on every node until unix {until}", args.user);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("turnd: revoke: {e}");
            ExitCode::from(1)
        }
    }
}
