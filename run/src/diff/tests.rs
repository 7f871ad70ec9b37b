use std::collections::BTreeMap;
use std::os::unix::fs::symlink as ln;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::{geteuid, mkfifo};

use std::ffi::OsStr;
use std::io::BufReader;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use super::candidates::*;
use super::export::*;
use super::git::*;
use super::*;

fn root_or_skip(test: &str) -> bool {
    if geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: needs root (overlay mounts): {test}");
    false
}

/// Runs `f` on a thread with a private mount namespace of its own: the
/// test's mounts go away with it.
fn in_private_namespace<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                views::enter_private_mount_namespace().unwrap();
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A directory for one test, removed at the end (after the namespace
/// thread, so after its mounts, is gone).
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> TestDir {
        static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "tollgate-diff-test-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// The layers live inside the base's tree, as they do with the
    /// default base `/` and a state directory on the root filesystem.
    LayersInsideBase,
    /// The base is a filesystem of its own.
    BaseOnItsOwnFilesystem,
}

/// Real phases of a run: a base with a workspace `ws`, the setup and
/// agent phases' upper dirs, made through real overlay mounts.
struct Lab {
    base: PathBuf,
    setup_upper: PathBuf,
    agent_upper: PathBuf,
    layers: PathBuf,
    mnt: PathBuf,
    /// What the phases stack their layers on: the base, or (layers
    /// inside it) an overlay of it, as overlayfs requires.
    base_layer: PathBuf,
    out: PathBuf,
}

impl Lab {
    /// Must run in a private mount namespace.
    fn new(dir: &Path, layout: Layout) -> Lab {
        let layers = dir.join("layers");
        let mnt = dir.join("mnt");
        let base = match layout {
            Layout::LayersInsideBase => dir.to_path_buf(),
            Layout::BaseOnItsOwnFilesystem => dir.join("base"),
        };
        for d in [&layers, &mnt, &base, &dir.join("out")] {
            fs::create_dir_all(d).unwrap();
        }
        for name in ["setup-upper", "setup-work", "agent-upper", "agent-work"] {
            fs::create_dir(layers.join(name)).unwrap();
        }
        mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        for name in ["empty", "wrapped", "merged", "view"] {
            fs::create_dir(mnt.join(name)).unwrap();
        }
        let base_layer = match layout {
            Layout::BaseOnItsOwnFilesystem => {
                mount(
                    Some("tmpfs"),
                    &base,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .unwrap();
                base.clone()
            }
            Layout::LayersInsideBase => mnt.join("wrapped"),
        };
        let lab = Lab {
            base,
            setup_upper: layers.join("setup-upper"),
            agent_upper: layers.join("agent-upper"),
            layers,
            out: dir.join("out").join("diff.patch"),
            base_layer,
            mnt,
        };
        lab.build_base();
        if layout == Layout::LayersInsideBase {
            let options = format!(
                "lowerdir={}:{}",
                lab.base.display(),
                lab.mnt.join("empty").display()
            );
            mount_overlay(&lab.base_layer, &options);
        }
        lab
    }

    fn build_base(&self) {
        let ws = self.base.join("ws");
        write(&ws.join(".git/HEAD"), "ref: refs/heads/main\n");
        write(&ws.join("README.md"), "hello\n");
        write(&ws.join("src/main.c"), "int main() { return 0; }\n");
        write(&ws.join("src/util.c"), "int util;\n");
        write(&ws.join("script.sh"), "#!/bin/sh\necho hi\n");
        write(&ws.join("tool"), "#!/bin/sh\n");
        fs::set_permissions(ws.join("tool"), Permissions::from_mode(0o755)).unwrap();
        fs::write(ws.join("data.bin"), binary(1)).unwrap();
        write(&ws.join("link_me.txt"), "will become a link\n");
        write(&ws.join("to_delete.txt"), "bye\n");
        write(&ws.join("setup_deleted.txt"), "setup removes me\n");
        write(&ws.join("lib/a.txt"), "a\n");
        write(&ws.join("lib/b.txt"), "b\n");
        write(&ws.join("lib/same.txt"), "same\n");
        write(&ws.join("lib/sub/deep.txt"), "deep\n");
        write(&ws.join("setupdir/old.txt"), "old\n");
        write(&ws.join("vendor/lib.c"), "int lib;\n");
        ln("src/main.c", ws.join("rel_link")).unwrap();
    }

    fn lowerdir(&self, above: &[&Path]) -> String {
        above
            .iter()
            .map(|p| p.display().to_string())
            .chain([self.base_layer.display().to_string()])
            .collect::<Vec<_>>()
            .join(":")
    }

    /// One phase: `change` edits the workspace through an overlay of
    /// `above` over the base, writing to `upper`.
    fn phase(&self, above: &[&Path], upper: &Path, extra: &str, change: impl FnOnce(&Path)) {
        let work = upper.with_file_name(
            upper
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace("upper", "work"),
        );
        let merged = self.mnt.join("merged");
        let options = format!(
            "lowerdir={},upperdir={},workdir={}{extra}",
            self.lowerdir(above),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap();
        change(&merged.join("ws"));
        detach(&merged);
    }

    /// The workspace as the layers `above` over the base show it,
    /// copied (`cp -a`: symlinks stay symlinks) to `dest`.
    fn copy_workspace(&self, above: &[&Path], dest: &Path) {
        let view = self.mnt.join("view");
        let empty = self.mnt.join("empty");
        let lower = format!("{}:{}", self.lowerdir(above), empty.display());
        mount_overlay(&view, &format!("lowerdir={lower}"));
        let status = Command::new("cp")
            .arg("-a")
            .arg(view.join("ws"))
            .arg(dest)
            .status()
            .unwrap();
        assert!(status.success());
        detach(&view);
    }

    fn diff(&self, lower: &[PathBuf]) -> (DiffSummary, String) {
        let layers = DiffLayers {
            lower,
            upper: &self.agent_upper,
        };
        let summary = write_agent_diff(&layers, Path::new("ws"), &self.out).unwrap();
        let patch = fs::read(&self.out).unwrap();
        (summary, String::from_utf8_lossy(&patch).into_owned())
    }

    fn setup_and_base(&self) -> Vec<PathBuf> {
        vec![self.setup_upper.clone(), self.base.clone()]
    }

    /// `git apply` of `patch` onto the post-setup workspace gives the
    /// post-agent workspace (what a patch can carry of it).
    fn assert_patch_replays_agent(&self, above_before: &[&Path], above_after: &[&Path]) {
        let replayed = self.layers.join("replayed");
        let expected = self.layers.join("expected");
        self.copy_workspace(above_before, &replayed);
        self.copy_workspace(above_after, &expected);
        fs::remove_dir_all(replayed.join(".git")).unwrap();
        let output = git_in(&replayed)
            .args(["apply", "--whitespace=nowarn"])
            .arg(&self.out)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "git apply: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(tree_contents(&replayed), tree_contents(&expected));
    }
}

/// Lazily: another test thread's process may hold a copy of our
/// descriptors for a moment, between its fork and exec.
fn detach(target: &Path) {
    umount2(target, MntFlags::MNT_DETACH).unwrap();
}

fn mount_overlay(target: &Path, options: &str) {
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_RDONLY,
        Some(options),
    )
    .unwrap();
}

fn git_in(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", GIT_DIRS.join(":"))
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CEILING_DIRECTORIES", dir.parent().unwrap());
    command
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn binary(seed: u8) -> Vec<u8> {
    (0..4000u32)
        .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 8) as u8)
        .collect()
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
}

/// Files and symlinks under `root` (not directories, FIFOs or anything
/// under a `.git`), each with its content or target and exec bit.
fn tree_contents(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name.as_bytes().eq_ignore_ascii_case(b".git") {
                continue;
            }
            let path = rel.join(&name);
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(path);
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(entry.path()).unwrap();
                found.insert(path, format!("link -> {}", target.display()));
            } else if meta.is_file() {
                let exec = meta.permissions().mode() & 0o100 != 0;
                let content = fs::read(entry.path()).unwrap();
                found.insert(path, format!("exec={exec} {content:?}"));
            }
        }
    }
    found
}

/// The patch cut into its per-file sections, by path (a type change's
/// two sections together).
fn sections(patch: &str) -> BTreeMap<String, String> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut current = None;
    for line in patch.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("diff --git a/") {
            current = Some(rest.split(" b/").next().unwrap().to_owned());
        }
        if let Some(path) = &current {
            found.entry(path.clone()).or_default().push_str(line);
        }
    }
    found
}

fn setup_changes(ws: &Path) {
    fs::remove_file(ws.join("setup_deleted.txt")).unwrap();
    fs::remove_dir_all(ws.join("setupdir")).unwrap();
    write(&ws.join("setupdir/new.txt"), "from setup\n");
    write(&ws.join("from_setup.txt"), "setup\n");
    write(&ws.join("README.md"), "hello from setup\n");
    write(&ws.join("setup_only/x.txt"), "x\n");
}

fn agent_changes(ws: &Path) {
    write(&ws.join("src/main.c"), "int main() { return 1; }\n");
    write(&ws.join("newdir/deep/new.txt"), "untracked\n");
    fs::remove_file(ws.join("to_delete.txt")).unwrap();
    fs::remove_file(ws.join("from_setup.txt")).unwrap();
    chmod(&ws.join("script.sh"), 0o755);
    chmod(&ws.join("tool"), 0o644);
    fs::remove_file(ws.join("link_me.txt")).unwrap();
    ln("src/main.c", ws.join("link_me.txt")).unwrap();
    fs::write(ws.join("data.bin"), binary(3)).unwrap();
    fs::write(ws.join("new.bin"), binary(5)).unwrap();
    fs::write(ws.join("big.bin"), binary(7).repeat(1000)).unwrap();
    write(&ws.join("empty.txt"), "");
    fs::remove_dir_all(ws.join("lib")).unwrap();
    write(&ws.join("lib/a.txt"), "A changed\n");
    write(&ws.join("lib/same.txt"), "same\n");
    write(&ws.join("lib/c.txt"), "c\n");
    write(&ws.join(".git/HEAD"), "ref: refs/heads/agent\n");
    write(&ws.join(".git/objects/xx"), "object\n");
    mkfifo(&ws.join("pipe"), Mode::from_bits_truncate(0o644)).unwrap();
    ln("/etc/passwd", ws.join("passwd")).unwrap();
    write(&ws.join("setupdir/new.txt"), "from setup, then agent\n");
    write(&ws.join("vendor/.git/HEAD"), "ref: refs/heads/main\n");
    write(&ws.join("vendor/new.c"), "int new;\n");
    fs::remove_file(ws.join("rel_link")).unwrap();
    ln("README.md", ws.join("rel_link")).unwrap();
}

fn agent_changes_come_out_as_a_patch_that_replays(layout: Layout) {
    let dir = TestDir::new("replay");
    in_private_namespace(|| {
        let lab = Lab::new(&dir.0, layout);
        let setup = lab.setup_upper.as_path();
        lab.phase(&[], setup, "", setup_changes);
        lab.phase(&[setup], &lab.agent_upper, "", agent_changes);

        let (summary, patch) = lab.diff(&lab.setup_and_base());

        let sections = sections(&patch);
        let paths: Vec<&str> = sections.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "big.bin",
                "data.bin",
                "empty.txt",
                "from_setup.txt",
                "lib/a.txt",
                "lib/b.txt",
                "lib/c.txt",
                "lib/sub/deep.txt",
                "link_me.txt",
                "new.bin",
                "newdir/deep/new.txt",
                "passwd",
                "rel_link",
                "script.sh",
                "setupdir/new.txt",
                "src/main.c",
                "to_delete.txt",
                "tool",
                "vendor/new.c",
            ]
        );
        let has = |path: &str, text: &str| sections[path].contains(text);
        assert!(has("src/main.c", "+int main() { return 1; }"));
        assert!(!has("src/main.c", "new file") && !has("src/main.c", "deleted file"));
        assert!(has("newdir/deep/new.txt", "new file mode 100644"));
        assert!(has("to_delete.txt", "deleted file mode 100644"));
        assert!(has("from_setup.txt", "deleted file mode 100644"));
        assert!(has("script.sh", "old mode 100644\nnew mode 100755"));
        assert!(has("tool", "old mode 100755\nnew mode 100644"));
        assert!(has("link_me.txt", "deleted file mode 100644"));
        assert!(has("link_me.txt", "new file mode 120000"));
        assert!(has("data.bin", "GIT binary patch"));
        assert!(has("new.bin", "new file mode 100644") && has("new.bin", "GIT binary patch"));
        assert!(has("big.bin", "GIT binary patch") && has("empty.txt", "new file mode 100644"));
        assert!(has("lib/b.txt", "deleted file") && has("lib/c.txt", "new file"));
        assert!(has("passwd", "new file mode 120000") && has("passwd", "+/etc/passwd"));
        assert!(has("rel_link", "-src/main.c") && has("rel_link", "+README.md"));
        let passwd = fs::read_to_string("/etc/passwd").unwrap();
        assert!(!patch.contains(passwd.lines().next().unwrap()));
        assert_eq!(summary.files_changed, patch.matches("diff --git ").count());
        assert_eq!(summary.files_changed, 20, "link_me.txt counts twice");
        assert_eq!(summary.bytes, patch.len() as u64);
        assert_eq!(summary.skipped, 2, "the FIFO and vendor/.git");
        assert_eq!(
            fs::metadata(&lab.out).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_nothing_left_behind(&lab);

        lab.assert_patch_replays_agent(&[setup], &[&lab.agent_upper, setup]);
    });
}

/// No mount of the diff in this namespace or the process's, and no
/// scratch directory next to the patch.
fn assert_nothing_left_behind(lab: &Lab) {
    for table in ["/proc/thread-self/mountinfo", "/proc/self/mountinfo"] {
        let mounts = fs::read_to_string(table).unwrap();
        assert!(!mounts.contains(".tollgate-diff-"), "{table}: {mounts}");
    }
    let out_dir = lab.out.parent().unwrap();
    let names: Vec<_> = fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["diff.patch"]);
}

#[test]
fn agent_changes_replay_with_layers_inside_the_base_as_with_base_slash() {
    if root_or_skip("agent_changes_replay_with_layers_inside_the_base") {
        agent_changes_come_out_as_a_patch_that_replays(Layout::LayersInsideBase);
    }
}

#[test]
fn agent_changes_replay_with_the_base_on_its_own_filesystem() {
    if root_or_skip("agent_changes_replay_with_the_base_on_its_own_filesystem") {
        agent_changes_come_out_as_a_patch_that_replays(Layout::BaseOnItsOwnFilesystem);
    }
}

#[test]
fn changes_outside_the_workspace_or_undone_inside_it_give_an_empty_patch() {
    if !root_or_skip("changes_outside_the_workspace_or_undone_inside_it_give_an_empty_patch") {
        return;
    }
    let dir = TestDir::new("empty");
    in_private_namespace(|| {
        let lab = Lab::new(&dir.0, Layout::BaseOnItsOwnFilesystem);
        let lower = [lab.base.clone()];
        let (summary, patch) = lab.diff(&lower);
        assert_eq!(
            (summary.files_changed, summary.bytes, patch.as_str()),
            (0, 0, "")
        );

        lab.phase(&[], &lab.agent_upper, "", |ws| {
            write(&ws.with_file_name("elsewhere.txt"), "outside\n");
            write(&ws.join("scratch.txt"), "gone again\n");
            fs::remove_file(ws.join("scratch.txt")).unwrap();
            write(&ws.join("README.md"), "hello\n");
        });
        let (summary, patch) = lab.diff(&lower);
        assert_eq!(
            summary,
            DiffSummary {
                files_changed: 0,
                bytes: 0,
                skipped: 0
            }
        );
        assert_eq!(patch, "");
        assert_nothing_left_behind(&lab);
    });
}

#[test]
fn a_hostile_workspace_cannot_make_git_run_or_convert_anything() {
    if !root_or_skip("a_hostile_workspace_cannot_make_git_run_or_convert_anything") {
        return;
    }
    let dir = TestDir::new("hostile");
    let marker = std::env::temp_dir().join(format!("PWNED-{}", std::process::id()));
    let _ = fs::remove_file(&marker);
    let evil_config = format!(
        "[core]\n\tfsmonitor = touch {m}\n\thooksPath = hooks\n\
         [filter \"evil\"]\n\tclean = touch {m}\n\tsmudge = touch {m}\n\trequired = true\n\
         [diff \"evil\"]\n\ttextconv = touch {m}\n\tcommand = touch {m}\n",
        m = marker.display()
    );
    let hook = format!("#!/bin/sh\ntouch {}\n", marker.display());
    in_private_namespace(|| {
        let lab = Lab::new(&dir.0, Layout::BaseOnItsOwnFilesystem);
        let ws = lab.base.join("ws");
        write(&ws.join(".git/config"), &evil_config);
        write(&ws.join(".git/hooks/pre-commit"), &hook);
        chmod(&ws.join(".git/hooks/pre-commit"), 0o755);
        write(&ws.join("crlf.txt"), "line one\r\n");
        lab.phase(&[], &lab.agent_upper, "", |ws| {
            write(
                &ws.join(".gitattributes"),
                "* filter=evil diff=evil text eol=crlf ident working-tree-encoding=UTF-16\n",
            );
            write(&ws.join(".gitignore"), "*\n");
            write(&ws.join(".git/config"), &evil_config);
            write(&ws.join("sub/.git/config"), &evil_config);
            write(&ws.join("sub/.GIT"), "gitdir: ../.git\n");
            write(&ws.join("crlf.txt"), "line one\r\nline two $Id: cafe $\r\n");
            write(&ws.join("ignored.txt"), "still in the patch\n");
            write(&ws.join("GIT~1/config"), &evil_config);
            write(&ws.join(".git. "), "refused on NTFS\n");
            write(&ws.join(".gi\u{200d}t"), "refused on HFS+\n");
            ln("README.md", ws.join(".gitmodules")).unwrap();
        });

        let (summary, patch) = lab.diff(std::slice::from_ref(&lab.base));

        assert!(!marker.exists(), "a command from the workspace ran");
        let sections = sections(&patch);
        let paths: Vec<&str> = sections.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [".gitattributes", ".gitignore", "crlf.txt", "ignored.txt"]
        );
        assert!(sections["crlf.txt"].contains("+line two $Id: cafe $\r\n"));
        assert!(sections["crlf.txt"].contains(" line one\r\n"));
        assert_eq!(
            summary.skipped, 6,
            "sub/.git, sub/.GIT and the names git refuses"
        );
        let replayed = lab.layers.join("replayed");
        lab.copy_workspace(&[], &replayed);
        fs::remove_dir_all(replayed.join(".git")).unwrap();
        let apply = git_in(&replayed)
            .arg("apply")
            .arg(&lab.out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&apply.stderr);
        assert!(apply.status.success(), "git apply: {stderr}");
        assert!(
            !marker.exists(),
            "applying ran a command from the workspace"
        );
    });
}

#[test]
fn a_renamed_directory_is_diffed_through_its_redirect() {
    if !root_or_skip("a_renamed_directory_is_diffed_through_its_redirect") {
        return;
    }
    let dir = TestDir::new("redirect");
    in_private_namespace(|| {
        let lab = Lab::new(&dir.0, Layout::BaseOnItsOwnFilesystem);
        write(&lab.base.join("ws/old/x"), "moved\n");
        write(&lab.base.join("ws/new/x"), "replaced\n");
        lab.phase(&[], &lab.agent_upper, ",redirect_dir=on", |ws| {
            fs::remove_file(ws.join("new/x")).unwrap();
            fs::rename(ws.join("old"), ws.join("new")).unwrap();
        });

        let (_, patch) = lab.diff(std::slice::from_ref(&lab.base));

        let sections = sections(&patch);
        let paths: Vec<&str> = sections.keys().map(String::as_str).collect();
        assert_eq!(paths, ["new/x", "old/x"]);
        assert!(sections["new/x"].contains("-replaced\n+moved\n"));
        assert!(sections["old/x"].contains("deleted file"));
        lab.assert_patch_replays_agent(&[], &[&lab.agent_upper]);
    });
}

#[test]
fn a_workspace_removed_and_recreated_by_the_agent_is_diffed_whole() {
    if !root_or_skip("a_workspace_removed_and_recreated_by_the_agent_is_diffed_whole") {
        return;
    }
    let dir = TestDir::new("recreated");
    in_private_namespace(|| {
        let lab = Lab::new(&dir.0, Layout::LayersInsideBase);
        let setup = lab.setup_upper.as_path();
        lab.phase(&[], setup, "", setup_changes);
        lab.phase(&[setup], &lab.agent_upper, "", |ws| {
            fs::remove_dir_all(ws).unwrap();
            write(&ws.join("README.md"), "hello from setup\n");
            write(&ws.join("only.txt"), "all that is left\n");
            write(&ws.join("we\"ird \\ name\nwith a newline"), "odd\n");
            fs::write(ws.join(OsStr::from_bytes(b"not utf-8 \xff\x01")), "bytes\n").unwrap();
            write(&ws.join(".git/HEAD"), "ref: refs/heads/main\n");
        });

        let (_, patch) = lab.diff(&lab.setup_and_base());

        let sections = sections(&patch);
        assert!(sections["only.txt"].contains("new file"));
        assert!(sections["src/main.c"].contains("deleted file"));
        assert!(!sections.contains_key("README.md"), "unchanged");
        assert!(!sections.keys().any(|p| p.starts_with(".git/")));
        lab.assert_patch_replays_agent(&[setup], &[&lab.agent_upper, setup]);
    });
}

#[test]
fn a_workspace_swapped_for_a_symlink_to_the_host_is_not_followed() {
    if !root_or_skip("a_workspace_swapped_for_a_symlink_to_the_host_is_not_followed") {
        return;
    }
    let dir = TestDir::new("swapped");
    let host = dir.0.join("host");
    write(&host.join("inner/secret.txt"), "host secret\n");
    in_private_namespace(|| {
        let lab = Lab::new(&dir.0, Layout::BaseOnItsOwnFilesystem);
        write(&lab.base.join("ws/inner/file.txt"), "workspace\n");
        lab.phase(&[], &lab.agent_upper, "", |ws| {
            fs::remove_dir_all(ws).unwrap();
            ln(&host, ws).unwrap();
        });
        let layers = DiffLayers {
            lower: std::slice::from_ref(&lab.base),
            upper: &lab.agent_upper,
        };

        write_agent_diff(&layers, Path::new("ws/inner"), &lab.out).unwrap();

        let patch = fs::read_to_string(&lab.out).unwrap();
        assert!(patch.contains("deleted file mode 100644"), "{patch}");
        assert!(!patch.contains("secret"), "{patch}");
    });
}

#[test]
fn paths_overlayfs_cannot_take_are_refused() {
    let lower = [PathBuf::from("/tmp/a:b")];
    let layers = DiffLayers {
        lower: &lower,
        upper: Path::new("/tmp"),
    };
    let error = write_agent_diff(&layers, Path::new("ws"), Path::new("/tmp/x.patch"));
    assert!(matches!(error, Err(DiffError::UnsafePath(p)) if p == Path::new("/tmp/a:b")));
}

#[test]
fn a_workspace_outside_the_root_is_refused() {
    let lower = [PathBuf::from("/")];
    let layers = DiffLayers {
        lower: &lower,
        upper: Path::new("/tmp"),
    };
    for workspace in ["../etc", "workspace/../../etc", "/", ""] {
        let error = write_agent_diff(&layers, Path::new(workspace), Path::new("/tmp/x.patch"));
        assert!(matches!(error, Err(DiffError::Workspace(_))), "{workspace}");
    }
    assert_eq!(
        workspace_path(Path::new("/workspace/repo")).unwrap(),
        Path::new("workspace/repo")
    );
}

#[test]
fn no_lower_layer_is_refused() {
    let layers = DiffLayers {
        lower: &[],
        upper: Path::new("/tmp"),
    };
    let error = write_agent_diff(&layers, Path::new("ws"), Path::new("/tmp/x.patch"));
    assert!(matches!(error, Err(DiffError::NoLowerLayers)));
}

#[test]
fn paths_reach_fast_import_byte_for_byte() {
    let mut quoted = Vec::new();
    quote(b"a\"b\\c\nd \xff\x01~", &mut quoted);
    assert_eq!(quoted, b"\"a\\\"b\\\\c\\012d \\377\\001~\"");
}

#[test]
fn file_headers_are_counted_across_read_boundaries() {
    let patch = b"diff --git a/x b/x\n+diff --git no\n diff --git no\ndiff --git a/y b/y\nliteral 3\ndiff --gi";
    for capacity in 1..patch.len() {
        let reader = BufReader::with_capacity(capacity, &patch[..]);
        assert_eq!(count_headers(reader).unwrap(), 2, "capacity {capacity}");
    }
    assert_eq!(count_headers(&b""[..]).unwrap(), 0);
}

#[test]
fn names_git_refuses_are_left_out_and_others_kept() {
    assert_eq!(verdict(Path::new(".git")), Verdict::Exclude);
    for refused in [
        ".GIT",
        "vendor/.git",
        "vendor/.Git/HEAD",
        "GIT~1",
        "a/.git.",
        ".git . ",
        ".git::$INDEX_ALLOCATION",
        ".g\u{200c}it",
        "x\\.git",
    ] {
        assert_eq!(verdict(Path::new(refused)), Verdict::Skip, "{refused:?}");
    }
    for kept in [
        ".github/workflows",
        "src/.gitignore",
        "git~10",
        ".gitx",
        "git",
        "a.git",
    ] {
        assert_eq!(verdict(Path::new(kept)), Verdict::Keep, "{kept:?}");
    }
    assert_eq!(
        verdict(&Path::new("a/").join("b".repeat(MAX_PATH_BYTES))),
        Verdict::Skip
    );
    for refused in [".gitmodules", ".GitModules. ", "GITMOD~1", "gi7eba~3"] {
        assert!(names_gitmodules(OsStr::new(refused)), "{refused:?}");
    }
    assert!(!names_gitmodules(OsStr::new(".gitmodules.bak")));
}

/// A measurement, not a test: `cargo test -p tollgate-sandbox --lib
/// diff -- --ignored --nocapture`.
#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn a_thousand_changed_files_take_this_long() {
    if !root_or_skip("a_thousand_changed_files_take_this_long") {
        return;
    }
    let dir = TestDir::new("measure");
    in_private_namespace(|| {
        let lab = Lab::new(&dir.0, Layout::LayersInsideBase);
        for i in 0..1000 {
            write(
                &lab.base.join(format!("ws/many/{}/f{i}.txt", i % 20)),
                "old line\n",
            );
        }
        lab.phase(&[], &lab.agent_upper, "", |ws| {
            for i in 0..1000 {
                write(&ws.join(format!("many/{}/f{i}.txt", i % 20)), "new line\n");
            }
        });
        let started = std::time::Instant::now();
        let (summary, _) = lab.diff(std::slice::from_ref(&lab.base));
        let elapsed = started.elapsed();
        assert_eq!(summary.files_changed, 1000);
        eprintln!(
            "diff of 1000 changed files: {elapsed:?} ({} bytes)",
            summary.bytes
        );
    });
}
