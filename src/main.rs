//! The `herald` binary: parse and validate flags, set up logging, raise the
//! open-file limit, build the runtime and run until SIGTERM/SIGINT.
//! Exit codes: 0 after a drain, 2 for bad configuration, 1 for startup errors.

use std::io::IsTerminal;
use std::process::ExitCode;

use herald::config::LogFormat;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    // Memory a spike used must come back (see herald::memory).
    herald::memory::small_pages();
    let config = match herald::config::load() {
        Ok(herald::config::Loaded::Serve(c)) => *c,
        Ok(herald::config::Loaded::Token(args)) => {
            return match herald::token::sign(&args) {
                Ok(token) => {
                    use std::io::Write;
                    match writeln!(std::io::stdout(), "{token}") {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(_) => ExitCode::from(1),
                    }
                }
                Err(e) => {
                    eprintln!("herald token: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Err(e) => {
            // --help and --version print and exit 0; errors exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // Validated by the --log parser.
    let mut filter = tracing_subscriber::EnvFilter::new(&config.log.filter);
    if config.log.access {
        // The access log is on whatever --log says.
        if let Ok(d) = format!("{}=info", herald::stream::ACCESS_LOG).parse() {
            filter = filter.add_directive(d);
        }
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log.format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.init(),
    }

    let requested = config.server.max_connections.map(|m| m.get());
    let max_connections = match herald::limits::raise_nofile() {
        Ok(nofile) => {
            let cap = herald::limits::capacity(nofile.soft);
            let chosen = requested.map_or(cap, |m| m.min(cap));
            if let Some(requested) = requested.filter(|m| *m > cap) {
                tracing::warn!(
                    requested,
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
            requested.unwrap_or(1024)
        }
    };

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all()
        .thread_name("herald-http")
        // Idle workers give freed memory back (see herald::memory).
        .on_thread_park(|| {
            herald::memory::on_park();
        });
    if let Some(n) = config.server.worker_threads {
        rt.worker_threads(n.get());
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("herald: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let deadline = config.shutdown.deadline;
    let result = rt.block_on(async {
        // Handlers first: a SIGTERM during startup still drains.
        let signal = herald::shutdown::signal();
        herald::run(config, max_connections, signal).await
    });
    rt.shutdown_timeout(deadline / 10);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herald: {error}");
            ExitCode::from(1)
        }
    }
}
