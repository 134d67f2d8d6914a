//! The `herald` binary: parse and validate flags, set up logging, raise the
//! open-file limit, build the runtime and run until SIGTERM/SIGINT.
//! Exit codes: 0 after a drain, 2 for bad configuration, 1 for startup errors.

use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let config = match herald::Cli::parse().validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&config.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("herald: invalid --log {:?}: {e}", config.log);
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log_json {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }

    let max_connections = match herald::limits::raise_nofile() {
        Ok(nofile) => {
            let cap = herald::limits::capacity(nofile.soft);
            let chosen = config.max_connections.map_or(cap, |m| m.min(cap));
            if config.max_connections.is_some_and(|m| m > cap) {
                tracing::warn!(
                    requested = config.max_connections,
                    cap,
                    "--max-connections exceeds what the open-file limit allows; using the limit"
                );
            }
            tracing::info!(
                nofile_soft = nofile.soft,
                nofile_hard = nofile.hard,
                max_connections = chosen,
                "connection capacity"
            );
            chosen
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit");
            config.max_connections.unwrap_or(1024)
        }
    };

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("herald-http");
    if let Some(n) = config.worker_threads {
        rt.worker_threads(n);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("herald: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let deadline = config.shutdown_deadline;
    let result = rt.block_on(herald::run(
        config,
        max_connections,
        herald::shutdown::signal(),
    ));
    rt.shutdown_timeout(deadline / 10);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herald: {error}");
            ExitCode::from(1)
        }
    }
}
