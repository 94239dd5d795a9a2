//! `thinbox completions SHELL` and the hidden `thinbox manpages DIR`: both
//! generated from the clap definition itself, so they never drift from the
//! flags (`clap_complete`, `clap_mangen`). scripts/package.sh puts them in
//! the .deb and the .rpm.

use std::io::Write;
use std::path::Path;

/// Writes the completion script of `shell` for `cmd` into `out`.
pub fn completions(
    cmd: &mut clap::Command,
    shell: clap_complete::Shell,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    clap_complete::generate(shell, cmd, "thinbox", out);
    Ok(())
}

/// Writes one page per command and subcommand (`thinbox.1`,
/// `thinbox-pool.1`, `thinbox-pool-create.1`, ...) into `dir`.
pub fn manpages(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| engine::Error::io("cannot make the man page directory", dir, e))?;
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| engine::Error::io("cannot write man pages into", dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_command_has_a_page_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        super::manpages(crate::Cli::command(), dir.path()).unwrap();
        for page in [
            "thinbox.1",
            "thinbox-serve.1",
            "thinbox-pool-create.1",
            "thinbox-metrics.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page))
                .unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(
                text.starts_with(".ie") || text.contains(".TH"),
                "{page}: {text}"
            );
        }
        let text = std::fs::read_to_string(dir.path().join("thinbox-serve.1")).unwrap();
        assert!(text.contains("metrics\\-address"), "{text}");
        // Hidden commands get no page.
        assert!(!dir.path().join("thinbox-manpages.1").exists());

        let mut out = Vec::new();
        super::completions(
            &mut crate::Cli::command(),
            clap_complete::Shell::Bash,
            &mut out,
        )
        .unwrap();
        let bash = String::from_utf8(out).unwrap();
        assert!(
            bash.contains("complete") && bash.contains("--metrics-address"),
            "{bash}"
        );
    }
}
