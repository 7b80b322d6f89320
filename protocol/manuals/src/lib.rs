//! The man pages and shell completions of `metalbus` and `metalbus-agent`, rendered from
//! their clap commands.
//!
//! cargo-deb packages files; it runs no generator. So the rendered files are kept in
//! the source tree (`controller/debian/`, `agent/debian/`) and each binary has a test
//! that renders them again and fails when the kept copy differs: a flag added without
//! regenerating its page fails CI. `METALBUS_WRITE_MANUALS=1 cargo test -p metalbus
//! --bin metalbus manuals` (or `-p metalbus-agent --bin metalbus-agent`) rewrites them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Command;
use clap_complete::Shell;
use roff::{bold, roman, Roff};

/// Set to rewrite the kept files instead of comparing them.
pub const WRITE_ENV: &str = "METALBUS_WRITE_MANUALS";

/// A section added to the top page, after the subcommands: `FILES`, `EXIT STATUS`, ...
pub struct Section {
    pub title: &'static str,
    /// Tagged paragraphs: a term (a path, a code, a variable) and what it means. An
    /// empty term makes a plain paragraph.
    pub entries: &'static [(&'static str, &'static str)],
}

/// Every file for `cmd`, by path under the kept directory: `man/NAME.1` for the command
/// and each visible subcommand, and `completions/` for bash, zsh and fish.
pub fn render(cmd: Command, sections: &[Section]) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let name = cmd.get_name().to_owned();
    let mut files = BTreeMap::new();

    let mut top = Vec::new();
    write_top_page(&cmd, sections, &mut top);
    files.insert(PathBuf::from(format!("man/{name}.1")), top);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subpages(sub, &mut files);
    }

    for (shell, file) in [
        (Shell::Bash, name.clone()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), &name, &mut out);
        files.insert(PathBuf::from(format!("completions/{file}")), out);
    }
    files
}

fn subpages(cmd: &Command, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subpages(sub, files);
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render(&mut out)
        .expect("rendering into memory does not fail");
    files.insert(PathBuf::from(format!("man/{}", man.get_filename())), out);
}

fn write_top_page(cmd: &Command, sections: &[Section], out: &mut Vec<u8>) {
    let man = clap_mangen::Man::new(cmd.clone());
    let rendered: std::io::Result<()> = (|| {
        man.render_title(out)?;
        man.render_name_section(out)?;
        man.render_synopsis_section(out)?;
        man.render_description_section(out)?;
        man.render_options_section(out)?;
        man.render_subcommands_section(out)?;
        let mut roff = Roff::new();
        for section in sections {
            roff.control("SH", [section.title]);
            for (term, text) in section.entries {
                if term.is_empty() {
                    roff.control("PP", []).text([roman(*text)]);
                } else {
                    roff.control("TP", [])
                        .text([bold(*term)])
                        .text([roman(*text)]);
                }
            }
        }
        roff.to_writer(out)?;
        man.render_version_section(out)
    })();
    rendered.expect("rendering into memory does not fail");
}

/// Compares the rendered files with those kept under `dir`; with `METALBUS_WRITE_MANUALS`
/// set, rewrites them instead (and removes kept files nothing renders any more).
pub fn check(cmd: Command, sections: &[Section], dir: &Path) -> Result<(), String> {
    let want = render(cmd, sections);
    let kept = kept_files(dir);
    let write = std::env::var_os(WRITE_ENV).is_some();
    let mut problems = Vec::new();
    for (path, body) in &want {
        let full = dir.join(path);
        if std::fs::read(&full).ok().as_deref() == Some(body.as_slice()) {
            continue;
        }
        if write {
            let parent = full.parent().expect("kept files are in a directory");
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            std::fs::write(&full, body).map_err(|e| format!("{}: {e}", full.display()))?;
        } else {
            problems.push(format!("{} is missing or out of date", full.display()));
        }
    }
    for path in kept.iter().filter(|p| !want.contains_key(*p)) {
        let full = dir.join(path);
        if write {
            std::fs::remove_file(&full).map_err(|e| format!("{}: {e}", full.display()))?;
        } else {
            problems.push(format!("{} is no longer rendered", full.display()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\nrender them again with {WRITE_ENV}=1 and this test, and commit the result",
            problems.join("\n")
        ))
    }
}

/// [`check`] of the files kept in `CRATE_DIR/debian/`, as a test: panics with what
/// differs and how to render them again.
pub fn assert_current(cmd: Command, sections: &[Section], crate_dir: &str) {
    if let Err(e) = check(cmd, sections, &Path::new(crate_dir).join("debian")) {
        panic!("{e}");
    }
}

fn kept_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for sub in ["man", "completions"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            found.push(Path::new(sub).join(entry.file_name()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool() -> Command {
        Command::new("tool")
            .version("1.2.3")
            .about("Does things.")
            .subcommand(
                Command::new("list")
                    .about("Lists.")
                    .subcommand(Command::new("all")),
            )
            .subcommand(Command::new("secret").hide(true))
    }

    const FILES: Section = Section {
        title: "FILES",
        entries: &[
            ("/etc/tool.toml", "The config."),
            ("", ".starts with a dot"),
        ],
    };

    #[test]
    fn every_visible_command_gets_a_page_and_every_shell_a_completion() {
        let files = render(tool(), &[FILES]);
        let names: Vec<String> = files.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "completions/_tool",
                "completions/tool",
                "completions/tool.fish",
                "man/tool-list-all.1",
                "man/tool-list.1",
                "man/tool.1",
            ]
        );
        let top = String::from_utf8(files[Path::new("man/tool.1")].clone()).unwrap();
        assert!(top.contains(".SH FILES"), "{top}");
        assert!(top.contains("/etc/tool.toml"), "{top}");
        // A line of text that starts with a dot is escaped, not read as a request.
        assert!(top.contains("\\&.starts with a dot"), "{top}");
        assert!(top.contains("tool\\-list(1)"), "{top}");
        assert!(top.contains("v1.2.3"), "{top}");
    }

    #[test]
    fn a_stale_or_extra_kept_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = check(tool(), &[], dir.path()).unwrap_err();
        assert!(err.contains("man/tool.1 is missing"), "{err}");
        for (path, body) in render(tool(), &[]) {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, body).unwrap();
        }
        check(tool(), &[], dir.path()).unwrap();
        std::fs::write(dir.path().join("man/old.1"), "x").unwrap();
        std::fs::write(dir.path().join("completions/tool"), "x").unwrap();
        let err = check(tool(), &[], dir.path()).unwrap_err();
        assert!(err.contains("man/old.1 is no longer rendered"), "{err}");
        assert!(
            err.contains("completions/tool is missing or out of date"),
            "{err}"
        );
    }
}
