//! An unprivileged user on the host, made by the tests that need one (for
//! rootless runs), and commands run as that user.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::tool_ok;

/// The test user's name; made with a home directory when missing.
pub const TEST_USER: &str = "tollgate-test";

pub struct TestUser {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl TestUser {
    /// The test user, created (once, whatever the number of tests asking)
    /// when this host does not have it yet.
    pub fn ensure() -> &'static TestUser {
        static USER: OnceLock<TestUser> = OnceLock::new();
        USER.get_or_init(|| {
            let exists = Command::new("id")
                .arg(TEST_USER)
                .output()
                .is_ok_and(|out| out.status.success());
            if !exists {
                tool_ok(Command::new("useradd").args([
                    "--create-home",
                    "--shell",
                    "/bin/sh",
                    TEST_USER,
                ]));
            }
            let id = |flag: &str| -> u32 {
                tool_ok(Command::new("id").args([flag, TEST_USER]))
                    .trim()
                    .parse()
                    .unwrap()
            };
            TestUser {
                uid: id("-u"),
                gid: id("-g"),
                home: PathBuf::from(format!("/home/{TEST_USER}")),
            }
        })
    }

    /// `program` run as the test user (setpriv, no supplementary group),
    /// with its HOME and nothing of root's XDG variables.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--"])
            .arg(program)
            .env("HOME", &self.home)
            .env("USER", TEST_USER)
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_RUNTIME_DIR")
            .env("NO_COLOR", "1");
        command
    }
}
