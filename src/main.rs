//! The `promigrate` binary: parse arguments, start logging, run, map the outcome to an exit code.
//! Everything else lives in the library so tests can reach it.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = promigrate::cli::parse();
    let log_format = cli.log_format;
    promigrate::logging::init(log_format);
    let code = match promigrate::run(cli) {
        Ok(code) => code,
        Err(err) => {
            let code = promigrate::exit::classify(&err);
            promigrate::logging::final_error(log_format, &err, code as u8);
            code
        }
    };
    code.into()
}
