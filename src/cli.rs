//! Command-line syntax. Help texts are written to be enough on their own.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tollgate_proxy::ListenAddr;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Egress proxy and network sandbox: untrusted work reaches the network only through a policy you can audit",
    long_about = "tollgate runs an HTTP/HTTPS egress proxy that enforces a YAML policy \
                  (off, limited to an allowlist, or unrestricted) and writes an audit record of \
                  every decision as one JSON line.\n\n\
                  Start with `tollgate proxy` (enforces the built-in common-dependencies \
                  allowlist), point HTTP_PROXY/HTTPS_PROXY at it, and read the audit log on \
                  standard output. Use `tollgate policy eval` to ask what a policy would do."
)]
pub struct Cli {
    /// Where tollgate keeps its CA and cache. Default: /var/lib/tollgate as
    /// root, $XDG_STATE_HOME/tollgate (~/.local/state/tollgate) otherwise.
    #[arg(long, global = true, env = "TOLLGATE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the egress proxy.
    Proxy(ProxyArgs),
    /// Check policy files, or ask what a policy decides for URLs.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage the CA that TLS interception presents to sandboxed clients.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run one command in a sandbox whose only route out is the proxy.
    Exec(ExecArgs),
    /// Check out a repo, run its setup, then an agent, each phase in a
    /// sandbox with its own egress policy; hand back a diff.
    Run(RunArgs),
    /// List, reset or garbage-collect the cache of setup snapshots.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Check audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check each file's hash chain: reports the first record edited,
    /// removed, inserted, moved or cut short, with its line. Exit 0 if every
    /// file is whole, 1 if any is not, 2 if one cannot be read.
    Verify {
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Every snapshot: environment, key prefix, age, size, expiry.
    List,
    /// Remove one environment's snapshots (those no run is using).
    Reset {
        /// The environment file whose snapshots go.
        #[arg(value_name = "ENV.yaml")]
        environment: PathBuf,
    },
    /// Remove expired and incomplete snapshots and leftovers; says what it freed.
    Gc,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Phases: setup (the environment's `setup` script, or automatic setup from     lock files, with env + secrets and the setup policy), then the agent (the command after     --, with env but no secrets, and the agent policy). Each phase is a fresh sandbox over the     same files: processes and proxy connections end with their phase. Outputs in --out:     result.json, diff.patch (the agent's changes), audit.jsonl, setup.log, agent.log. Exit     status: the agent's; a failed setup stops the run. Needs root.\n\n    Example:\n  tollgate run examples/hello.yaml --repo \"$(examples/hello-repo.sh)\" -- bash agent.sh"
)]
pub struct RunArgs {
    /// Environment file (YAML; see README, \"Environment files\").
    #[arg(value_name = "ENV.yaml")]
    pub environment: PathBuf,

    /// Repository to check out: a local path or a URL (cloned on the host).
    #[arg(long, value_name = "PATH|URL")]
    pub repo: String,

    /// Branch to check out (default: the repo's default branch).
    #[arg(long, value_name = "B", conflicts_with = "commit")]
    pub branch: Option<String>,

    /// Commit to check out (detached).
    #[arg(long, value_name = "SHA")]
    pub commit: Option<String>,

    /// Directory for the outputs (must be new or empty). Default: a new
    /// directory under ./tollgate-out/.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// CA directory for TLS interception (default: the state dir's CA, if any).
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,

    /// Extra trust anchors (PEM) for upstream servers of intercepted HTTPS.
    #[arg(long, value_name = "PEM")]
    pub upstream_ca: Vec<PathBuf>,

    /// Serve Prometheus metrics at /metrics on ADDR (IP:PORT or unix:PATH),
    /// on the host.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<ListenAddr>,

    /// The agent command and its arguments; without one, the run stops
    /// after setup.
    #[arg(last = true, value_name = "AGENT")]
    pub agent: Vec<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The command runs in new user, mount, PID, network, IPC, UTS and cgroup \
    namespaces on an overlay of --base (writes vanish when it exits), as root of its user \
    namespace but never host root: as root, tollgate maps the sandbox's ids 0-65535 to host \
    ids from 1879048192 (0x70000000), or to the /etc/subuid and /etc/subgid ranges of a user \
    named `tollgate` when there are some; run as another user, root inside is that user. \
    It has no capability, no_new_privs and a seccomp allowlist. Its network namespace has \
    only lo, where the proxy listens on 127.0.0.1:3128; HTTP_PROXY and friends point at it, \
    and DNS inside fails fast. A writable --bind must be writable by the sandbox's root \
    (that host uid). With a terminal, the command gets a terminal of its own.\n\n\
    Example:\n  tollgate exec --policy common-dependencies -- curl -sI https://pypi.org/simple/"
)]
pub struct ExecArgs {
    /// Policy file or built-in name (off, unrestricted, common-dependencies).
    #[arg(long, value_name = "FILE")]
    pub policy: String,

    /// Serve Prometheus metrics at /metrics on ADDR (IP:PORT or unix:PATH),
    /// on the host.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<ListenAddr>,

    /// Audit log file (appended, mode 0600); none by default.
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<String>,

    /// When the audit log cannot be written (a full disk): `closed` refuses
    /// new requests with 503 audit-unavailable until it can; `open` lets
    /// them through unrecorded.
    #[arg(long, value_name = "closed|open", default_value = "closed")]
    pub audit_fail: AuditFail,

    /// CA directory for TLS interception (default: the state dir's CA, if any).
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,

    /// Extra trust anchors (PEM) for upstream servers of intercepted HTTPS.
    #[arg(long, value_name = "PEM")]
    pub upstream_ca: Vec<PathBuf>,

    /// Lower layer of the sandbox's root filesystem (read-only).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub base: PathBuf,

    /// Host directory visible read-write inside: HOST:SANDBOX. Repeatable.
    #[arg(long, value_name = "HOST:SANDBOX")]
    pub bind: Vec<String>,

    /// Host directory visible read-only inside: HOST:SANDBOX. Repeatable.
    #[arg(long, value_name = "HOST:SANDBOX")]
    pub ro_bind: Vec<String>,

    /// Environment variable for the command: K=V. Repeatable. The host's
    /// environment is not passed in (it may hold credentials).
    #[arg(long, value_name = "K=V")]
    pub env: Vec<String>,

    /// Working directory inside.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub workdir: PathBuf,

    /// Memory the sandbox may use (bytes, or K, M, G, T: powers of 1024);
    /// its processes are OOM-killed beyond it. `none` for no limit.
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = limit_size)]
    pub memory: Limit,

    /// Processes and threads alive at once in the sandbox. `none` for no
    /// limit.
    #[arg(long, value_name = "N", default_value = "4096", value_parser = limit_count)]
    pub pids: Limit,

    /// Bytes each of the sandbox's tmpfs mounts may hold: the writable
    /// layer, /tmp and /dev/shm.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = size)]
    pub tmpfs_size: u64,

    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A limit, or none.
pub type Limit = Option<u64>;

fn size(text: &str) -> Result<u64, String> {
    tollgate_run::environment::parse_size(text)
}

fn limit_size(text: &str) -> Result<Limit, String> {
    if text == "none" {
        return Ok(None);
    }
    size(text).map(Some)
}

fn limit_count(text: &str) -> Result<Limit, String> {
    if text == "none" {
        return Ok(None);
    }
    match text.parse::<u64>() {
        Ok(n) if n > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
        _ => Err(format!("{text:?} is not a positive whole number (or none)")),
    }
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA: writes ca.crt (PEM) and ca.key (PEM, mode 0600) into the
    /// directory, and refuses to overwrite existing ones. Give ca.crt to the
    /// clients whose HTTPS is intercepted (see README, "TLS interception").
    Init(CaInitArgs),
}

#[derive(Debug, Args)]
pub struct CaInitArgs {
    /// Directory for ca.crt and ca.key. Default: certs/ under the state dir.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Signals: SIGHUP reloads the policy (a policy that does not load is \
    reported and the running one kept) and reopens the audit log; SIGINT/SIGTERM stop \
    accepting, let in-flight requests finish for a few seconds, then exit.\n\n\
    Example:\n  tollgate proxy --policy policies/example-audit.yaml --audit-log audit.jsonl\n  \
    curl -x http://127.0.0.1:3128 https://pypi.org/simple/"
)]
pub struct ProxyArgs {
    /// Policy file, or a built-in policy name (off, unrestricted,
    /// common-dependencies). Default: common-dependencies.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<String>,

    /// Where to listen: IP:PORT or unix:PATH. Repeat for several.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3128")]
    pub listen: Vec<ListenAddr>,

    /// Serve Prometheus metrics at /metrics on ADDR (IP:PORT or unix:PATH).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<ListenAddr>,

    /// Audit log file (appended, created mode 0600), or - for standard output.
    #[arg(long, value_name = "PATH|-", default_value = "-")]
    pub audit_log: String,

    /// When the audit log cannot be written (a full disk): `closed` refuses
    /// new requests with 503 audit-unavailable until it can; `open` lets
    /// them through unrecorded.
    #[arg(long, value_name = "closed|open", default_value = "closed")]
    pub audit_fail: AuditFail,

    /// CA directory (ca.crt, ca.key) for TLS interception, needed by policies
    /// with `methods` or `paths`. Default: certs/ under the state dir, if a
    /// CA is there.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,

    /// Extra trust anchors (PEM) for upstream servers of intercepted HTTPS,
    /// e.g. a corporate CA; the system roots are always trusted. Repeatable.
    #[arg(long, value_name = "PEM")]
    pub upstream_ca: Vec<PathBuf>,

    /// Seconds a client has to send request headers (also the idle limit of
    /// keep-alive connections and the wait for a tunnel's first bytes).
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,

    /// Seconds a tunnel may carry no bytes before it is closed.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub tunnel_idle_timeout: u64,

    /// Client connections served at once; more wait in the listen backlog.
    /// Lowered, with a warning, to what the open-file limit fits.
    #[arg(long, value_name = "N", default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Connections one client (an IP address) may hold at once; one more
    /// is closed when accepted and recorded as `too-many-connections`.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_client_connections: u32,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files; prints a summary per file, or the first error
    /// with file:line:column. Exit 0 if all load, 1 otherwise.
    Check(CheckArgs),
    /// Print what a policy decides for each URL, without sending anything:
    /// `allow` and the rule, or `deny` and the reason code. Exit 0 if all are
    /// allowed, 1 if any is denied, 2 on a usage or configuration error.
    Eval(EvalArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files (or built-in names).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  tollgate policy eval --policy common-dependencies \
    https://pypi.org/simple/ https://evil.example/\n  \
    allow  common-dependencies:**.pypi.org  GET https://pypi.org/simple/\n  \
    deny   not-allowlisted                  GET https://evil.example/"
)]
pub struct EvalArgs {
    /// Policy file or built-in name.
    #[arg(long, value_name = "FILE")]
    pub policy: String,

    /// Request method to evaluate.
    #[arg(long, value_name = "M", default_value = "GET")]
    pub method: String,

    /// URLs (http:// or https://).
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,
}

/// What the proxy does while its audit log cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFail {
    Closed,
    Open,
}

impl AuditFail {
    /// `log`, failing as chosen.
    pub fn apply(self, log: tollgate_proxy::audit::AuditLog) -> tollgate_proxy::audit::AuditLog {
        match self {
            AuditFail::Closed => log,
            AuditFail::Open => log.fail_open(),
        }
    }
}
