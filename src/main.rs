//! The `usermeta` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use usermeta::{
    settings::{Cli, Command},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => usermeta::serve(*args).await,
        Command::Dev(args) => usermeta::dev::run(args).await,
        Command::Healthcheck(args) => return usermeta::healthcheck::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("usermeta: {error}");
            ExitCode::FAILURE
        }
    }
}
