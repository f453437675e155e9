// Shared by the build scripts of dmr-cloud, dmr-edge-agent and dmr-firmware-sim (pulled in with
// `include!`): finds the git commit the binaries are built from, so `--version` can say which
// source a deployed binary came from. It sets `DMR_BUILD_COMMIT` for the crate's compilation:
//   1. `git rev-parse --short=12 HEAD` when the source is a git checkout (CI clones have .git);
//   2. else the environment variable `DMR_GIT_COMMIT` (a source tarball has no .git: whoever
//      builds from one says which commit it is);
//   3. else "unknown".
// Dirty trees are not flagged: that would need a rerun on every source edit, and cargo would then
// rebuild the crate after each `git status`-visible change for nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The files whose change means "another commit is checked out": HEAD itself (a checkout or a
/// detached move), the branch it points at (a new commit), and packed-refs (`git gc`, fetch).
/// Paths come from git itself, so linked worktrees (where .git is a file) work too. Only
/// existing paths are named: cargo reruns a script every build when a named path is missing.
fn watch_git_refs(dir: &Path) {
    let git_path = |name: &str| {
        git(
            dir,
            &["rev-parse", "--path-format=absolute", "--git-path", name],
        )
        .map(PathBuf::from)
    };
    let mut watch: Vec<PathBuf> = Vec::new();
    watch.extend(git_path("HEAD"));
    if let Some(p) = git(dir, &["symbolic-ref", "-q", "HEAD"]).and_then(|r| git_path(&r)) {
        // A branch only in packed-refs has no loose file until its next commit creates one:
        // watch the directory it will appear in.
        match (p.exists(), p.parent()) {
            (true, _) => watch.push(p),
            (false, Some(parent)) => watch.push(parent.to_path_buf()),
            (false, None) => {}
        }
    }
    watch.extend(git_path("packed-refs"));
    for p in watch.into_iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

fn emit_git_commit() {
    println!("cargo:rerun-if-env-changed=DMR_GIT_COMMIT");
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let commit = match git(&dir, &["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => {
            watch_git_refs(&dir);
            c
        }
        None => std::env::var("DMR_GIT_COMMIT")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=DMR_BUILD_COMMIT={commit}");
}
