//! The `usermeta` binary: parse the command line (and `--config` file), set up logging and tracing, run.

use std::process::ExitCode;

use usermeta::{config_file, settings::Command, telemetry};

fn main() -> ExitCode {
    let cli = match config_file::parse() {
        // Printed before logging starts: nothing but the reference goes to stdout.
        Ok(cli) if matches!(cli.command, Command::ConfigReference) => {
            print!("{}", usermeta::settings::reference::markdown());
            return ExitCode::SUCCESS;
        }
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("usermeta: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Before the runtime: the OTLP exporter's blocking HTTP client must not be built inside it.
    let telemetry = match telemetry::init(cli.log_format) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("usermeta: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("usermeta: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let result = match cli.command {
            Command::Serve(args) => usermeta::serve(*args).await,
            #[cfg(feature = "dev")]
            Command::Dev(args) => usermeta::dev::run(args).await,
            Command::Reseal(args) => usermeta::reseal::run(args).await,
            Command::Healthcheck(args) => return usermeta::healthcheck::run(args).await,
            Command::ConfigReference => Ok(()),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{error}");
                eprintln!("usermeta: {error}");
                ExitCode::FAILURE
            }
        }
    });
    // Calls cut off by the grace period must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    telemetry.shutdown();
    code
}
