//! What a system service runs must be root's alone: the binary, the virtualenv, and every
//! file the embedded interpreter can import from it. `site.addsitedir` (the worker's
//! `use_virtualenv`) puts site-packages on `sys.path` and follows its `.pth` files, which
//! add more directories (an editable install points into a checkout) or run `import`
//! lines at start-up. So for a system install, site-packages is walked whole, every
//! directory a `.pth` file names is walked too, and `import` lines are refused: they may
//! load modules from anywhere (an editable install's finder maps a package to a checkout
//! in code), which no look at the files can bound.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// `.pth` lines that run code but are known to touch nothing outside site-packages:
/// setuptools' `distutils-precedence.pth` (`_distutils_hack` lives in site-packages, which
/// is checked), in its current form and the one before setuptools 60. Compared trimmed.
const HARMLESS_IMPORT_LINES: [&str; 2] = [
    "import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os.environ.get(var, 'local') == 'local'; \
     enabled and __import__('_distutils_hack').add_shim();",
    "import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os.environ.get(var, 'stdlib') == 'local'; \
     enabled and __import__('_distutils_hack').add_shim();",
];

/// Refuses `path` (after symlinks) unless it and every directory above it are owned by
/// root and not writable by group or others — a directory with the sticky bit (`/tmp`)
/// excepted, since there nobody may rename or remove root's entries. Otherwise the
/// system service would run code that some other user can replace.
pub(super) fn check_root_owned(path: &Path, what: &str) -> Result<()> {
    check_ancestors(path, &format!("{what} {}", path.display()))
}

/// [`check_root_owned`], with `subject` (what the service runs, path included) for messages.
fn check_ancestors(path: &Path, subject: &str) -> Result<()> {
    let resolved = path.canonicalize().with_context(|| format!("resolving {subject}"))?;
    for (depth, entry) in resolved.ancestors().enumerate() {
        let meta = std::fs::metadata(entry).with_context(|| format!("checking {}", entry.display()))?;
        let sticky_exempt = depth > 0 && meta.mode() & 0o1000 != 0;
        if let Some(problem) = problem(entry, &meta, sticky_exempt) {
            return Err(refusal(subject, &problem));
        }
    }
    Ok(())
}

/// [`check_root_owned`] for site-packages, everything in it, and everything its `.pth`
/// files add to `sys.path`; refuses `.pth` files that run code (but the known harmless).
pub(super) fn check_site_packages(site_packages: &Path) -> Result<()> {
    let mut walk = Walk::default();
    walk.tree(site_packages, &format!("the virtualenv's site-packages {}", site_packages.display()))?;
    let entries = std::fs::read_dir(site_packages).with_context(|| format!("listing {}", site_packages.display()))?;
    let mut pth_files: Vec<PathBuf> = entries
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", site_packages.display()))?;
    // All of them, hidden ones too: which ones `site` skips differs between versions.
    pth_files.retain(|path| path.extension().is_some_and(|ext| ext == "pth") && path.is_file());
    pth_files.sort();
    for pth in pth_files {
        let text = std::fs::read(&pth).with_context(|| format!("reading {}", pth.display()))?;
        for (number, line) in text.split(|&byte| byte == b'\n').enumerate() {
            match pth_line(line) {
                PthLine::Nothing => {}
                PthLine::Import(code) if HARMLESS_IMPORT_LINES.contains(&code.trim()) => {}
                PthLine::Import(_) => bail!(
                    "refusing to install a system service with the virtualenv's site-packages {}: line {} of {} \
                     runs code when Python starts (an `import` line, e.g. an editable install's finder), which \
                     may load modules from paths nobody checked. Install the packages without -e (e.g. `pip \
                     install ./python` rather than `pip install -e ./python`) into a virtualenv made by root",
                    site_packages.display(),
                    number + 1,
                    pth.display()
                ),
                PthLine::Path(named) => {
                    // As site.makepath: joined to site-packages, `..` taken lexically.
                    let added = lexically_normal(&site_packages.join(named));
                    let subject = format!("code from {} (added to sys.path by {})", added.display(), pth.display());
                    if added.exists() {
                        walk.tree(&added, &subject)?;
                    } else {
                        // Python skips it today; nobody but root may create it tomorrow.
                        check_missing(&added, &subject)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// One line of a `.pth` file as `site.addpackage` reads it.
#[derive(Debug, PartialEq, Eq)]
enum PthLine<'a> {
    /// A comment or a blank line.
    Nothing,
    /// Executed (`import ...`).
    Import(&'a str),
    /// A directory to add, relative to site-packages unless absolute.
    Path(&'a Path),
}

fn pth_line(line: &[u8]) -> PthLine<'_> {
    use std::os::unix::ffi::OsStrExt;
    if line.starts_with(b"#") || line.trim_ascii().is_empty() {
        return PthLine::Nothing;
    }
    if line.starts_with(b"import ") || line.starts_with(b"import\t") {
        // Not UTF-8: Python reads it in the locale's encoding; show it lossily.
        return PthLine::Import(std::str::from_utf8(line).unwrap_or("import (not UTF-8)"));
    }
    PthLine::Path(Path::new(std::ffi::OsStr::from_bytes(line.trim_ascii_end())))
}

/// `path` with `.` dropped and `..` removing the component before it, as
/// `os.path.abspath` does (without looking at the file system). `path` is absolute.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// A path that does not exist may be created later: refused unless its nearest existing
/// ancestor passes [`check_root_owned`] and the first missing component is not a link to
/// somewhere else.
fn check_missing(path: &Path, subject: &str) -> Result<()> {
    let mut missing = path;
    while let Some(parent) = missing.parent() {
        if parent.exists() {
            if let Ok(meta) = std::fs::symlink_metadata(missing) {
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(missing).unwrap_or_default();
                    let problem =
                        format!("{} is a link to {}, which does not exist", missing.display(), target.display());
                    return Err(refusal(subject, &problem));
                }
            }
            return check_ancestors(parent, subject);
        }
        missing = parent;
    }
    Ok(())
}

/// Directories already walked, by (device, inode): links may lead into one twice.
#[derive(Default)]
struct Walk {
    seen: HashSet<(u64, u64)>,
}

impl Walk {
    /// Checks `top` with its ancestors, then everything below it: each entry root's and not
    /// writable by group or others; a link's target checked with its own ancestors, and
    /// walked in turn if it is a directory.
    fn tree(&mut self, top: &Path, subject: &str) -> Result<()> {
        check_ancestors(top, subject)?;
        let mut directories = vec![top.canonicalize().with_context(|| format!("resolving {}", top.display()))?];
        while let Some(directory) = directories.pop() {
            let meta = std::fs::metadata(&directory).with_context(|| format!("checking {}", directory.display()))?;
            if !meta.is_dir() || !self.seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            let entries = std::fs::read_dir(&directory).with_context(|| format!("listing {}", directory.display()))?;
            for entry in entries {
                let entry = entry.with_context(|| format!("listing {}", directory.display()))?.path();
                let meta =
                    std::fs::symlink_metadata(&entry).with_context(|| format!("checking {}", entry.display()))?;
                if !meta.file_type().is_symlink() {
                    if let Some(problem) = problem(&entry, &meta, false) {
                        return Err(refusal(subject, &problem));
                    }
                    if meta.is_dir() {
                        directories.push(entry);
                    }
                    continue;
                }
                // Replacing the link needs the directory it is in, checked above; where it
                // leads is checked like anything else the service runs.
                let Ok(target) = entry.canonicalize() else {
                    let target = directory.join(std::fs::read_link(&entry).unwrap_or_default());
                    check_missing(&lexically_normal(&target), subject)?;
                    continue;
                };
                check_ancestors(&target, subject)?;
                directories.push(target);
            }
        }
        Ok(())
    }
}

/// Why `path` could be changed by someone other than root, if it can. `sticky_exempt`: a
/// sticky directory may be writable by others (used for the ancestors of what is checked).
fn problem(path: &Path, meta: &std::fs::Metadata, sticky_exempt: bool) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    if meta.uid() != 0 {
        Some(format!("{} belongs to uid {}", path.display(), meta.uid()))
    } else if mode & 0o022 != 0 && !sticky_exempt {
        Some(format!("{} is writable by group or others (mode {mode:04o})", path.display()))
    } else {
        None
    }
}

fn refusal(subject: &str, problem: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "refusing to install a system service that runs {subject}: {problem}, so a user other than root could \
         replace what the service runs. Install from root-owned copies (e.g. the binary in /usr/local/bin, a \
         virtualenv made by root in /opt/mlxd/venv passed with --python)"
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const NOBODY: u32 = 65534;

    /// A fresh directory (mode 0755) under the system's temporary directory, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let path = std::env::temp_dir().join(format!("mlxd-root-owned-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Scratch(path.clone()).dir("")
        }

        /// Makes `relative` (and its parents) a directory of mode 0755; returns `self`.
        fn dir(self, relative: &str) -> Scratch {
            let path = self.0.join(relative);
            std::fs::create_dir_all(&path).expect("mkdir");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            self
        }

        fn file(&self, relative: &str, content: &str) -> PathBuf {
            let path = self.0.join(relative);
            std::fs::write(&path, content).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn chown(path: &Path, uid: u32) {
        std::os::unix::fs::chown(path, Some(uid), None).expect("chown");
    }

    fn refused(site_packages: &Path) -> String {
        format!("{:#}", check_site_packages(site_packages).expect_err("refused"))
    }

    #[test]
    fn a_system_service_runs_only_what_root_alone_can_replace() {
        let scratch = Scratch::new("binary");
        let file = scratch.file("mlxd", "");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o775)).unwrap();
        let refusal = check_root_owned(&file, "the mlxd binary").unwrap_err().to_string();
        if !nix::unistd::geteuid().is_root() {
            assert!(refusal.contains("belongs to uid"), "{refusal}");
            return;
        }
        assert!(refusal.contains("writable by group or others (mode 0775)"), "{refusal}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_root_owned(&file, "the mlxd binary").unwrap();
        chown(&file, NOBODY);
        let refusal = check_root_owned(&file, "the mlxd binary").unwrap_err().to_string();
        assert!(refusal.contains("belongs to uid 65534"), "{refusal}");
        // A root-owned file in a directory another user owns can be swapped by them.
        chown(&file, 0);
        chown(&scratch.0, NOBODY);
        let refusal = check_root_owned(&file, "the mlxd binary").unwrap_err().to_string();
        assert!(refusal.contains(&format!("{} belongs to uid 65534", scratch.0.display())), "{refusal}");
    }

    #[test]
    fn pth_lines_are_read_as_site_reads_them() {
        assert_eq!(pth_line(b"# a comment"), PthLine::Nothing);
        assert_eq!(pth_line(b"  \r"), PthLine::Nothing);
        assert_eq!(pth_line(b"import x; x.go()"), PthLine::Import("import x; x.go()"));
        assert_eq!(pth_line(b"import\tx"), PthLine::Import("import\tx"));
        assert_eq!(pth_line(b"/src/checkout \r"), PthLine::Path(Path::new("/src/checkout")));
        // Only a line that starts with `import ` runs; this one is a (relative) path.
        assert_eq!(pth_line(b" import x"), PthLine::Path(Path::new(" import x")));
        assert_eq!(pth_line(b"importlib"), PthLine::Path(Path::new("importlib")));
        assert_eq!(lexically_normal(Path::new("/a/b/./../c/")), PathBuf::from("/a/c"));
        assert_eq!(lexically_normal(Path::new("/a/../../b")), PathBuf::from("/b"));
    }

    /// site-packages and what its `.pth` files name, walked whole: a checkout another user
    /// owns (the editable install's case) is refused, and passes once it is root's.
    #[test]
    fn what_pth_files_add_to_sys_path_is_checked_like_site_packages() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED what_pth_files_add_to_sys_path_is_checked_like_site_packages: not root, cannot chown");
            return;
        }
        let scratch = Scratch::new("pth").dir("venv/site-packages/pkg").dir("checkout/mlxd_runtime");
        let site_packages = scratch.0.join("venv/site-packages");
        let checkout = scratch.0.join("checkout");
        scratch.file("venv/site-packages/pkg/__init__.py", "");
        scratch.file("checkout/mlxd_runtime/__init__.py", "");
        check_site_packages(&site_packages).expect("nothing to refuse yet");

        // A directory another user owns, named absolute or relative (`..` as site does).
        for named in [checkout.display().to_string(), "../../checkout".to_owned()] {
            let pth =
                scratch.file("venv/site-packages/__editable__.mlxd_runtime.pth", &format!("# editable\n{named}\n"));
            chown(&checkout, NOBODY);
            let message = refused(&site_packages);
            assert!(
                message.contains(&format!("code from {} (added to sys.path by {})", checkout.display(), pth.display()))
                    && message.contains(&format!("{} belongs to uid {NOBODY}", checkout.display())),
                "{message}"
            );
            chown(&checkout, 0);
            check_site_packages(&site_packages).expect("a root-owned checkout passes");
        }

        // Below it too, and its ancestors.
        let module = checkout.join("mlxd_runtime/__init__.py");
        chown(&module, NOBODY);
        assert!(refused(&site_packages).contains(&format!("{} belongs to uid {NOBODY}", module.display())));
        chown(&module, 0);
        chown(&scratch.0, NOBODY);
        assert!(refused(&site_packages).contains(&format!("{} belongs to uid {NOBODY}", scratch.0.display())));
        chown(&scratch.0, 0);

        // A directory that does not exist yet, where another user could create it.
        std::fs::remove_file(site_packages.join("__editable__.mlxd_runtime.pth")).unwrap();
        scratch.file("venv/site-packages/later.pth", &format!("{}\n", checkout.join("later/lib").display()));
        chown(&checkout, NOBODY);
        let message = refused(&site_packages);
        assert!(message.contains(&format!("{} belongs to uid {NOBODY}", checkout.display())), "{message}");
        chown(&checkout, 0);
        check_site_packages(&site_packages).expect("only root can create it");
        std::fs::remove_file(site_packages.join("later.pth")).unwrap();
    }

    #[test]
    fn everything_in_site_packages_and_where_its_links_lead_is_roots() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED everything_in_site_packages_and_where_its_links_lead_is_roots: not root, cannot chown");
            return;
        }
        let scratch = Scratch::new("tree").dir("site-packages/pkg/sub").dir("elsewhere");
        let site_packages = scratch.0.join("site-packages");
        let module = scratch.file("site-packages/pkg/sub/m.py", "");
        check_site_packages(&site_packages).expect("all root's");

        std::fs::set_permissions(&module, std::fs::Permissions::from_mode(0o664)).unwrap();
        let message = refused(&site_packages);
        assert!(message.contains(&format!("{} is writable by group or others (mode 0664)", module.display())));
        std::fs::set_permissions(&module, std::fs::Permissions::from_mode(0o644)).unwrap();
        chown(&scratch.0.join("site-packages/pkg"), NOBODY);
        assert!(refused(&site_packages).contains("pkg belongs to uid 65534"));
        chown(&scratch.0.join("site-packages/pkg"), 0);

        // A link out of site-packages: its target is walked, and its target's directory checked.
        let elsewhere = scratch.0.join("elsewhere");
        let outside = scratch.file("elsewhere/x.py", "");
        std::os::unix::fs::symlink(&elsewhere, site_packages.join("linked")).unwrap();
        // A loop is walked once.
        std::os::unix::fs::symlink(&site_packages, elsewhere.join("back")).unwrap();
        check_site_packages(&site_packages).expect("links to root's files pass");
        chown(&outside, NOBODY);
        assert!(refused(&site_packages).contains(&format!("{} belongs to uid {NOBODY}", outside.display())));
        chown(&outside, 0);
        chown(&elsewhere, NOBODY);
        assert!(refused(&site_packages).contains(&format!("{} belongs to uid {NOBODY}", elsewhere.display())));
        chown(&elsewhere, 0);

        // A link to nothing yet: fine if only root could create its target.
        std::fs::remove_file(site_packages.join("linked")).unwrap();
        std::fs::remove_file(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, site_packages.join("dangling.py")).unwrap();
        check_site_packages(&site_packages).expect("a dangling link only root could make good");
        chown(&elsewhere, NOBODY);
        assert!(refused(&site_packages).contains(&format!("{} belongs to uid {NOBODY}", elsewhere.display())));
    }

    #[test]
    fn pth_files_that_run_code_are_refused_but_setuptools_own() {
        let scratch = Scratch::new("import").dir("site-packages");
        let site_packages = scratch.0.join("site-packages");
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED pth_files_that_run_code_are_refused_but_setuptools_own: not root-owned");
            return;
        }
        for line in HARMLESS_IMPORT_LINES {
            scratch.file("site-packages/distutils-precedence.pth", &format!("{line} \n"));
            check_site_packages(&site_packages).expect("setuptools' shim is accepted");
        }
        let pth = scratch.file(
            "site-packages/__editable__.mlxd_runtime-0.1.0.pth",
            "import __editable___mlxd_runtime_0_1_0_finder; __editable___mlxd_runtime_0_1_0_finder.install()",
        );
        let message = refused(&site_packages);
        assert!(message.contains(&format!("line 1 of {} runs code", pth.display())), "{message}");
        assert!(message.contains("without -e"), "{message}");
    }
}
