//! The `chaperone` binary: parse the command line, set up logging, run the command. The only place that
//! uses `anyhow` for reporting; everything below returns typed errors.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = chaperone::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_level(&cli)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaperone: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(chaperone::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaperone: {}", chaperone::cli::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// `serve` logs at the configured level; admin commands stay quiet unless RUST_LOG says otherwise.
fn log_level(cli: &chaperone::cli::Cli) -> String {
    match cli.command {
        chaperone::cli::Command::Serve | chaperone::cli::Command::Demo(_) => {
            chaperone::config::Config::load(&cli.config)
                .map(|c| c.log.level)
                .unwrap_or_else(|_| "info".into())
        }
        _ => "warn".into(),
    }
}
