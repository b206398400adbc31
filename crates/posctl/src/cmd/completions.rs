//! `posctl completions SHELL`: prints a shell completion script; it needs no daemon.

use clap::CommandFactory;

use crate::Cli;

/// Writes the completion script for `shell` to standard output.
pub(crate) fn run(shell: clap_complete::Shell) -> u8 {
    let mut script: Vec<u8> = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "posctl", &mut script);
    crate::output::write(&script, false);
    0
}
