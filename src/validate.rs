//! `ofe validate`, and how the CLI prints what the checks found.

use std::path::PathBuf;
use std::process::ExitCode;

use ofe_crds::diagnostic::Diagnostic;

/// Prints diagnostics, errors first.
pub fn report(diagnostics: &[Diagnostic]) {
    for d in diagnostics.iter().filter(|d| d.is_error()) {
        eprintln!("{d}");
    }
    for d in diagnostics.iter().filter(|d| !d.is_error()) {
        eprintln!("{d}");
    }
}

/// `ofe validate`: prints every problem; exit status 1 on any error.
pub fn validate_command(paths: &[PathBuf]) -> ExitCode {
    let checked = ofe_runtime::load_and_check(paths, None);
    report(&checked.diagnostics);
    let errors = checked.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = checked.diagnostics.len() - errors;
    println!(
        "{} resources checked: {errors} error{}, {warnings} warning{}",
        checked.manifests.len(),
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
    );
    if errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
