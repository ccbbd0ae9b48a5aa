//! `--config`: the real binary, so the environment takes part in the precedence (defaults → file → env → flags).

use crate::support::{run_usermeta, stderr, write_config};

#[test]
fn file_then_env_then_flag() {
    // Each layer sets a different URL that is not valid, so start-up stops naming the value that won.
    let file = write_config(
        "precedence.toml",
        "zitadel_url = \"from-file\"\nservice_pat = \"p\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let from_file = run_usermeta(&["serve", "--config", &file], &[]);
    assert!(!from_file.status.success());
    assert!(
        stderr(&from_file).contains("`from-file` is not a URL"),
        "{}",
        stderr(&from_file)
    );

    let env = [("USERMETA_ZITADEL_URL", "from-env")];
    let from_env = run_usermeta(&["serve", "--config", &file], &env);
    assert!(
        stderr(&from_env).contains("`from-env` is not a URL"),
        "{}",
        stderr(&from_env)
    );

    let from_flag = run_usermeta(
        &["serve", "--config", &file, "--zitadel-url", "from-flag"],
        &env,
    );
    assert!(
        stderr(&from_flag).contains("`from-flag` is not a URL"),
        "{}",
        stderr(&from_flag)
    );

    // The file can also be named by USERMETA_CONFIG.
    let by_env = run_usermeta(&["serve"], &[("USERMETA_CONFIG", &file)]);
    assert!(
        stderr(&by_env).contains("`from-file` is not a URL"),
        "{}",
        stderr(&by_env)
    );
}

#[test]
fn unknown_keys_stop_start_up_with_file_and_line() {
    let file = write_config(
        "unknown.toml",
        "zitadel_url = \"https://x\"\nmetrics_listn = \"0.0.0.0:9090\"\n",
    );
    let output = run_usermeta(&["serve", "--config", &file], &[]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("unknown.toml:2: unknown setting `metrics_listn`"),
        "{error}"
    );
}

#[test]
fn help_documents_every_setting() {
    let output = run_usermeta(&["serve", "--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for setting in [
        "--config",
        "USERMETA_CONFIG",
        "USERMETA_LOG_FORMAT",
        "USERMETA_LISTEN",
        "USERMETA_ZITADEL_URL",
        "USERMETA_SERVICE_PAT_FILE",
        "USERMETA_CACHE_TTL",
        "USERMETA_METRICS_LISTEN",
        "USERMETA_SHUTDOWN_GRACE",
        "USERMETA_TLS_CERT_FILE",
        "USERMETA_TLS_KEY_FILE",
        "USERMETA_TLS_CLIENT_CA_FILE",
        "USERMETA_ZITADEL_CA_FILE",
    ] {
        assert!(
            help.contains(setting),
            "`serve --help` lacks {setting}:\n{help}"
        );
    }
}
