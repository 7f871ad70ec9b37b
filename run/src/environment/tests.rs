use super::secret::MAX_ENV_STRING;
use super::*;
use crate::enclave::inside;

use std::sync::atomic::{AtomicUsize, Ordering};

/// The example of DESIGN.md, "Environment files".
const DESIGN_EXAMPLE: &str = r#"version: 1
name: web-app
base: /                   # lower layer (read-only); default "/"
setup: |                  # bash, run in its own session; `export` does not
  npm ci                  # carry over, ~/.bashrc does
maintenance: |            # run when a cached environment is resumed
  npm ci
env: {NODE_ENV: test}     # every phase
secrets:                  # setup and maintenance only
  NPM_TOKEN: {from_env: NPM_TOKEN}     # or {from_file: PATH}
internet:
  setup: {mode: unrestricted}          # default; inline policy or {file: PATH}
  agent: {mode: off}                   # default
cache: {ttl: 12h}          # 0 disables
limits: {setup_timeout: 30m, agent_timeout: 1h, memory: 8G, pids: 4096}
"#;

fn parse(text: &str) -> Result<Environment, EnvironmentError> {
    Environment::parse(Path::new("web.yaml"), text)
}

fn parse_ok(text: &str) -> Environment {
    parse(text).unwrap_or_else(|error| panic!("{text:?} should parse: {error}"))
}

fn parse_err(text: &str) -> String {
    match parse(text) {
        Ok(env) => panic!("{text:?} should be refused, got {env:?}"),
        Err(error) => error.to_string(),
    }
}

/// A phase policy, comparable: a file's path, or an inline policy's
/// origin and what it compiled to.
fn described(policy: &PhasePolicy) -> String {
    match policy {
        PhasePolicy::File(path) => format!("file {}", path.display()),
        PhasePolicy::Inline(policy) => format!("{}: {}", policy.origin(), policy.summary()),
    }
}

/// How [`described`] shows the policy `yaml` compiled with `origin`.
fn inline(origin: &str, yaml: &str) -> String {
    let policy = Policy::from_yaml(origin, yaml).unwrap();
    format!("{}: {}", policy.origin(), policy.summary())
}

/// `env` equals `expected` in every field; their phase policies are
/// compared through [`described`].
fn assert_same(env: &Environment, expected: Environment, setup: &str, agent: &str) {
    assert_eq!(described(&env.internet.setup), setup);
    assert_eq!(described(&env.internet.agent), agent);
    let expected = Environment {
        internet: env.internet.clone(),
        ..expected
    };
    assert_eq!(format!("{env:?}"), format!("{expected:?}"));
}

fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-environment-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn design_example_parses_to_expected_struct() {
    let env = Environment::parse(Path::new("/srv/envs/web.yaml"), DESIGN_EXAMPLE).unwrap();
    let expected = Environment {
        path: PathBuf::from("/srv/envs/web.yaml"),
        name: "web-app".to_owned(),
        base: PathBuf::from("/"),
        setup: Some("npm ci                  # carry over, ~/.bashrc does\n".to_owned()),
        maintenance: Some("npm ci\n".to_owned()),
        env: vec![("NODE_ENV".to_owned(), "test".to_owned())],
        secrets: vec![(
            "NPM_TOKEN".to_owned(),
            SecretSource::Env("NPM_TOKEN".to_owned()),
        )],
        internet: env.internet.clone(),
        cache: CacheSettings { ttl: hours(12) },
        limits: Limits {
            setup_timeout: Some(Duration::from_secs(30 * 60)),
            agent_timeout: Some(hours(1)),
            memory: Some(8 << 30),
            pids: Some(4096),
            tmpfs: None,
        },
    };
    assert_same(
        &env,
        expected,
        &inline(
            "/srv/envs/web.yaml: internet.setup",
            "version: 1\nmode: unrestricted\n",
        ),
        &inline(
            "/srv/envs/web.yaml: internet.agent",
            "version: 1\nmode: off\n",
        ),
    );
}

#[test]
fn minimal_file_gets_defaults() {
    let env = Environment::parse(Path::new("/srv/envs/web.yaml"), "version: 1\n").unwrap();
    let expected = Environment {
        path: PathBuf::from("/srv/envs/web.yaml"),
        name: "web".to_owned(),
        base: PathBuf::from("/"),
        setup: None,
        maintenance: None,
        env: Vec::new(),
        secrets: Vec::new(),
        internet: env.internet.clone(),
        cache: CacheSettings { ttl: hours(12) },
        limits: Limits::default(),
    };
    assert_same(
        &env,
        expected,
        &inline(
            "/srv/envs/web.yaml: internet.setup (default)",
            "version: 1\nmode: unrestricted\n",
        ),
        &inline(
            "/srv/envs/web.yaml: internet.agent (default)",
            "version: 1\nmode: off\n",
        ),
    );
    assert!(env.cache.enabled());
}

#[test]
fn empty_setup_is_kept_apart_from_absent_setup() {
    assert_eq!(
        parse_ok("version: 1\nsetup: \"\"\n").setup,
        Some(String::new())
    );
    assert_eq!(parse_ok("version: 1\n").setup, None);
}

#[test]
fn inline_policy_is_compiled_without_a_version_and_keeps_its_rules() {
    let env = parse_ok(
        "version: 1\ninternet:\n  agent:\n    mode: limited\n    allow: ['*.github.com', {host: api.github.com, ports: [443]}]\n",
    );
    let PhasePolicy::Inline(policy) = &env.internet.agent else {
        panic!("expected an inline policy, got {:?}", env.internet.agent);
    };
    assert_eq!(policy.origin(), "web.yaml: internet.agent");
    assert_eq!(
        policy.summary(),
        "mode limited, enforced, 2 allow and 0 deny rules"
    );
    let decide = |host: &str, port| {
        let host = tollgate_proxy::host::Host::parse(host).unwrap();
        policy
            .decide_tunnel(tollgate_proxy::policy::Target { host: &host, port })
            .permits()
    };
    assert!(decide("raw.github.com", 443));
    assert!(decide("api.github.com", 443));
    assert!(!decide("github.com", 443));
    assert!(!decide("example.com", 443));
}

#[test]
fn inline_policy_version_is_checked_where_it_is_written() {
    assert!(matches!(
        parse_ok("version: 1\ninternet: {setup: {mode: off, version: 1}}\n")
            .internet
            .setup,
        PhasePolicy::Inline(_)
    ));
    let message = parse_err("version: 1\ninternet: {setup: {mode: off, version: 7}}\n");
    assert!(message.starts_with("web.yaml:2:"), "{message}");
    assert!(message.contains("internet.setup"), "{message}");
    assert!(
        message.contains("unsupported policy version 7"),
        "{message}"
    );
}

#[test]
fn relative_paths_resolve_against_the_env_file_directory() {
    let text = "version: 1\n\
                secrets:\n  A: {from_file: keys/a}\n  B: {from_file: /run/keys/b}\n\
                internet:\n  setup: {file: ../policies/setup.yaml}\n  agent: {file: /etc/tollgate/agent.yaml}\n";
    let env = Environment::parse(Path::new("/srv/envs/web.yaml"), text).unwrap();
    assert_eq!(
        env.secrets,
        vec![
            (
                "A".to_owned(),
                SecretSource::File("/srv/envs/keys/a".into())
            ),
            ("B".to_owned(), SecretSource::File("/run/keys/b".into())),
        ]
    );
    assert_eq!(
        described(&env.internet.setup),
        "file /srv/envs/../policies/setup.yaml"
    );
    assert_eq!(
        described(&env.internet.agent),
        "file /etc/tollgate/agent.yaml"
    );

    // A bare file name: its directory is the working directory.
    let env = parse_ok("version: 1\ninternet: {agent: {file: agent.yaml}}\n");
    assert_eq!(described(&env.internet.agent), "file agent.yaml");
}

#[test]
fn env_values_are_kept_as_written_in_file_order() {
    let env = parse_ok(
        "version: 1\nenv:\n  PY: 3.10\n  MODE: 0755\n  N: 42\n  NEG: -1\n  EXP: 1e3\n  \
         FLAG: true\n  OFF: False\n  Q: \"quoted # not a comment\"\n  EMPTY: ''\n  \
         MULTI: |\n    a\n    b\n",
    );
    let expected = [
        ("PY", "3.10"),
        ("MODE", "0755"),
        ("N", "42"),
        ("NEG", "-1"),
        ("EXP", "1e3"),
        ("FLAG", "true"),
        ("OFF", "False"),
        ("Q", "quoted # not a comment"),
        ("EMPTY", ""),
        ("MULTI", "a\nb\n"),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()));
    assert_eq!(env.env, expected);
}

#[test]
fn sizes_take_bytes_and_binary_units() {
    let cases = [
        ("1073741824", 1 << 30),
        ("1", 1),
        ("8G", 8 << 30),
        ("8g", 8 << 30),
        ("8Gi", 8 << 30),
        ("8GiB", 8 << 30),
        ("8gib", 8 << 30),
        ("8GB", 8 << 30),
        ("8 G", 8 << 30),
        ("512K", 512 << 10),
        ("512KiB", 512 << 10),
        ("512kb", 512 << 10),
        ("3M", 3 << 20),
        ("2T", 2 << 40),
        ("\"16MiB\"", 16 << 20),
    ];
    for (text, bytes) in cases {
        let env = parse_ok(&format!("version: 1\nlimits: {{memory: {text}}}\n"));
        assert_eq!(env.limits.memory, Some(bytes), "{text}");
    }
}

#[test]
fn durations_take_units_and_zero() {
    let cases = [
        ("12h", hours(12)),
        ("30m", Duration::from_secs(1800)),
        ("1h 30m", Duration::from_secs(5400)),
        ("90s", Duration::from_secs(90)),
        ("2d", hours(48)),
        ("0", Duration::ZERO),
        ("\"0\"", Duration::ZERO),
        ("0s", Duration::ZERO),
    ];
    for (text, ttl) in cases {
        let env = parse_ok(&format!("version: 1\ncache: {{ttl: {text}}}\n"));
        assert_eq!(env.cache.ttl, ttl, "{text}");
        assert_eq!(env.cache.enabled(), !ttl.is_zero(), "{text}");
    }
    let env = parse_ok("version: 1\nlimits: {setup_timeout: 45m, agent_timeout: 2h}\n");
    assert_eq!(env.limits.setup_timeout, Some(Duration::from_secs(45 * 60)));
    assert_eq!(env.limits.agent_timeout, Some(hours(2)));
}

#[test]
fn name_defaults_to_a_valid_file_stem_and_is_checked() {
    let env = Environment::parse(Path::new("envs/node-18.ci.yaml"), "version: 1\n").unwrap();
    assert_eq!(env.name, "node-18.ci");
    let longest = "a".repeat(64);
    assert_eq!(
        parse_ok(&format!("version: 1\nname: {longest}\n")).name,
        longest
    );
    for bad in ["../x", ".hidden", "-x", "a/b", "a b", "\"\"", "é"] {
        let message = parse_err(&format!("version: 1\nname: {bad}\n"));
        assert!(message.starts_with("web.yaml:2:7: name: "), "{message}");
        assert!(
            message.contains("is not a valid environment name"),
            "{message}"
        );
    }
    let too_long = "a".repeat(65);
    assert!(parse_err(&format!("version: 1\nname: {too_long}\n")).contains("at most 64"));

    let error = Environment::parse(Path::new("my env.yaml"), "version: 1\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "my env.yaml: name: not set, and the file name \"my env.yaml\" is not a valid \
         environment name: add `name:` with letters, digits, '.', '_' or '-' (at most 64, \
         starting with a letter or digit)"
    );
}

/// One YAML document, and what its error message must contain.
struct Refused {
    yaml: &'static str,
    expect: &'static [&'static str],
}

const fn refused(yaml: &'static str, expect: &'static [&'static str]) -> Refused {
    Refused { yaml, expect }
}

const REFUSED: &[Refused] = &[
    // The file as a whole.
    refused("", &["web.yaml: is empty: an environment needs at least `version: 1`"]),
    refused("# nothing\n---\n", &["web.yaml: is empty: an environment needs at least `version: 1`"]),
    refused("name: x\n", &["web.yaml: version: missing: add `version: 1` at the top of the file"]),
    refused("version: 2\n", &["web.yaml:1:10: version: unsupported version \"2\": this tollgate reads version 1"]),
    refused("version:\n", &["web.yaml: version: has no value"]),
    refused("- version: 1\n", &["web.yaml:1:1: invalid type: sequence, expected a mapping of environment settings, starting with `version: 1`"]),
    refused("version: 1\n---\nversion: 1\n", &["web.yaml: ", "more than one document", "remove the `---` separators"]),
    refused("version: 1\nbogus: 1\n", &["web.yaml:2:1: unknown field `bogus`, expected one of `version`, `name`, `base`, `setup`, `maintenance`, `env`, `secrets`, `internet`, `cache`, `limits`"]),
    refused("version: 1\nversion: 1\n", &["web.yaml:1:1: duplicate field `version`: keep one"]),
    refused("version: 1\nsetup:\n", &["web.yaml: setup: has no value: write `setup: \"\"` for no setup, or remove the key for automatic setup"]),
    refused("version: 1\nmaintenance: ~\n", &["web.yaml: maintenance: has no value: give it one, or remove the key"]),
    refused("version: 1\nsetup: [npm ci]\n", &["web.yaml:2:8: setup: invalid type: sequence, expected a string"]),
    refused("version: 1\nbase: images/node\n", &["web.yaml:2:7: base: \"images/node\" is not an absolute path: write it from the root"]),
    refused("version: 1\nbase: ''\n", &["web.yaml:2:7: base: \"\" is not an absolute path"]),
    // YAML tricks.
    refused("version: 1\n<<: {name: x}\n", &["web.yaml:2:1: unknown field `<<`", "YAML merge keys (`<<`) are not supported: write the keys out"]),
    refused("version: 1\nenv: *vars\n", &["web.yaml:2:6: unknown anchor: an alias `*name` needs an anchor `&name` before it"]),
    refused("version: 1\ninternet: {agent: {mode: limited, allow: [*.github.com]}}\n", &["web.yaml:2:44: ", "scanning an alias", "must be quoted, e.g. \"*.example.com\""]),
    refused("version: 1\nsetup: \"npm ci\n", &["web.yaml:3:1: found unexpected end of stream"]),
    // env.
    refused("version: 1\nenv: [A=1]\n", &["web.yaml:2:6: env: invalid type: sequence, expected a mapping of variable names to values, e.g. {NODE_ENV: test}"]),
    refused("version: 1\nenv:\n  A: 1\n  A: 2\n", &["web.yaml:4:3: env: A appears twice: keep one"]),
    refused("version: 1\nenv:\n  1A: x\n", &["web.yaml:3:3: env: \"1A\" is not a variable name: use letters, digits and '_', not starting with a digit"]),
    refused("version: 1\nenv:\n  MY-VAR: x\n", &["web.yaml:3:3: env: \"MY-VAR\" is not a variable name"]),
    refused("version: 1\nenv:\n  A:\n", &["web.yaml: env.A: has no value: write \"\" for an empty value"]),
    refused("version: 1\nenv:\n  A: null\n", &["web.yaml: env.A: has no value"]),
    refused("version: 1\nenv:\n  A: [1, 2]\n", &["web.yaml:3:6: env.A: invalid type: sequence, expected a string, number or boolean"]),
    refused("version: 1\nenv:\n  A: {b: 1}\n", &["web.yaml:3:6: env.A: invalid type: map, expected a string, number or boolean"]),
    refused("version: 1\nenv: {A: \"a\\0b\"}\n", &["web.yaml:2:10: env.A: holds a NUL byte"]),
    // secrets.
    refused("version: 1\nsecrets:\n  NPM_TOKEN: {}\n", &["web.yaml:3:14: secrets.NPM_TOKEN: no source: use {from_env: VAR} or {from_file: PATH}"]),
    refused("version: 1\nsecrets:\n  NPM_TOKEN:\n", &["web.yaml:3:13: secrets.NPM_TOKEN: no source: use {from_env: VAR} or {from_file: PATH}"]),
    refused("version: 1\nsecrets:\n  NPM_TOKEN: NPM_TOKEN\n", &["web.yaml:3:14: secrets.NPM_TOKEN: invalid type: string \"NPM_TOKEN\", expected a source: {from_env: VAR} or {from_file: PATH}"]),
    refused("version: 1\nsecrets:\n  NPM_TOKEN: {from_env: A, from_file: b}\n", &["web.yaml:3:14: secrets.NPM_TOKEN: more than one source: use either {from_env: VAR} or {from_file: PATH}"]),
    refused("version: 1\nsecrets:\n  NPM_TOKEN: {from_envv: A}\n", &["web.yaml:3:14: secrets.NPM_TOKEN: unknown field `from_envv`, expected `from_env` or `from_file`"]),
    refused("version: 1\nsecrets:\n  NPM_TOKEN: {from_env: npm-token}\n", &["web.yaml:3:25: secrets.NPM_TOKEN.from_env: \"npm-token\" is not a variable name"]),
    refused("version: 1\nsecrets:\n  NPM_TOKEN: {from_file: ''}\n", &["web.yaml:3:26: secrets.NPM_TOKEN.from_file: is empty: give the path of a file"]),
    refused("version: 1\nsecrets:\n  A: {from_env: A}\n  A: {from_env: B}\n", &["web.yaml:4:3: secrets: A appears twice: keep one"]),
    refused("version: 1\nsecrets:\n  a.b: {from_env: A}\n", &["web.yaml:3:3: secrets: \"a.b\" is not a variable name"]),
    refused("version: 1\nenv: {NPM_TOKEN: x}\nsecrets: {NPM_TOKEN: {from_env: NPM_TOKEN}}\n", &["web.yaml: secrets.NPM_TOKEN: NPM_TOKEN is also set in env: remove it from one of them"]),
    // internet.
    refused("version: 1\ninternet: {maintenance: {mode: off}}\n", &["web.yaml:2:12: internet: unknown field `maintenance`, expected `setup` or `agent`"]),
    refused("version: 1\ninternet: {agent: off}\n", &["web.yaml:2:19: internet.agent: invalid type: string \"off\", expected a policy, e.g. {mode: off}, or {file: PATH}"]),
    refused("version: 1\ninternet: {agent: }\n", &["web.yaml: internet.agent: has no value"]),
    refused("version: 1\ninternet: {agent: {mode: off, mode: unrestricted}}\n", &["web.yaml:2:19: internet.agent: duplicate field `mode`: keep one"]),
    refused("version: 1\ninternet:\n  agent:\n    mode: limited\n    allow: [\"git*.com\"]\n", &["web.yaml:5:13: internet.agent.allow[0]: ", "not label-aligned"]),
    refused("version: 1\ninternet: {setup: {mode: sometimes}}\n", &["web.yaml:2:", "internet.setup.mode: unknown variant `sometimes`"]),
    refused("version: 1\ninternet: {agent: {file: [a]}}\n", &["web.yaml:2:19: internet.agent: file: must be the path of a policy file"]),
    refused("version: 1\ninternet: {agent: {file: ''}}\n", &["web.yaml:2:19: internet.agent: file: must be the path of a policy file"]),
    refused("version: 1\ninternet: {agent: {file: a.yaml, mode: off}}\n", &["web.yaml:2:19: internet.agent: `file` takes no other keys: use either {file: PATH} or an inline policy"]),
    // cache.
    refused("version: 1\ncache: {ttl: 30}\n", &["web.yaml:2:14: cache.ttl: \"30\" has no unit: add one (s, m, h, d), e.g. 12h, or 0 to disable the cache"]),
    refused("version: 1\ncache: {ttl: forever}\n", &["web.yaml:2:14: cache.ttl: \"forever\" is not a duration", "e.g. 12h"]),
    refused("version: 1\ncache: {ttl: -1h}\n", &["web.yaml:2:14: cache.ttl: \"-1h\" is not a duration"]),
    refused("version: 1\ncache: {tll: 1h}\n", &["web.yaml:2:9: cache: unknown field `tll`, expected `ttl`"]),
    // limits.
    refused("version: 1\nlimits:\n  memroy: 8G\n", &["web.yaml:3:3: limits: unknown field `memroy`, expected one of `setup_timeout`, `agent_timeout`, `memory`, `pids`, `tmpfs`"]),
    refused("version: 1\nlimits:\n  memory: 8 gigs\n", &["web.yaml:3:11: limits.memory: \"8 gigs\" is not a size: use a number of bytes or K, M, G, T (powers of 1024), e.g. 8G"]),
    refused("version: 1\nlimits: {memory: 1.5G}\n", &["web.yaml:2:18: limits.memory: \"1.5G\" is not a size"]),
    refused("version: 1\nlimits: {memory: -1}\n", &["web.yaml:2:18: limits.memory: \"-1\" is not a size"]),
    refused("version: 1\nlimits: {memory: 8P}\n", &["web.yaml:2:18: limits.memory: \"8P\" is not a size"]),
    refused("version: 1\nlimits: {memory: G}\n", &["web.yaml:2:18: limits.memory: \"G\" is not a size"]),
    refused("version: 1\nlimits: {memory: 0}\n", &["web.yaml:2:18: limits.memory: \"0\" is zero: use a positive size, e.g. 8G, or remove the key for no limit"]),
    refused("version: 1\nlimits: {memory: 0G}\n", &["web.yaml:2:18: limits.memory: \"0G\" is zero"]),
    refused("version: 1\nlimits: {memory: 16777216T}\n", &["web.yaml:2:18: limits.memory: \"16777216T\" is too large"]),
    refused("version: 1\nlimits: {memory: 99999999999999999999}\n", &["web.yaml:2:18: limits.memory: \"99999999999999999999\" is too large"]),
    refused("version: 1\nlimits: {memory: }\n", &["web.yaml: limits.memory: has no value: give it one, or remove the key"]),
    refused("version: 1\nlimits: {setup_timeout: 30}\n", &["web.yaml:2:25: limits.setup_timeout: \"30\" has no unit: add one (s, m, h, d), e.g. 30m"]),
    refused("version: 1\nlimits: {setup_timeout: 0}\n", &["web.yaml:2:25: limits.setup_timeout: \"0\" is zero: use a positive duration, e.g. 30m, or remove the key for no limit"]),
    refused("version: 1\nlimits: {agent_timeout: 0s}\n", &["web.yaml:2:25: limits.agent_timeout: \"0s\" is zero: use a positive duration"]),
    refused("version: 1\nlimits: {agent_timeout: soon}\n", &["web.yaml:2:25: limits.agent_timeout: \"soon\" is not a duration", "e.g. 30m"]),
    refused("version: 1\nlimits: {pids: 0}\n", &["web.yaml:2:16: limits.pids: \"0\" is not a positive whole number of processes: e.g. 4096"]),
    refused("version: 1\nlimits: {pids: -5}\n", &["web.yaml:2:16: limits.pids: \"-5\" is not a positive whole number"]),
    refused("version: 1\nlimits: {pids: 1.5}\n", &["web.yaml:2:16: limits.pids: \"1.5\" is not a positive whole number"]),
    refused("version: 1\nlimits: {pids: +5}\n", &["web.yaml:2:16: limits.pids: \"+5\" is not a positive whole number"]),
    refused("version: 1\nlimits: {pids: lots}\n", &["web.yaml:2:16: limits.pids: \"lots\" is not a positive whole number"]),
];

#[test]
fn refused_files_get_one_line_that_says_where_and_what_to_do() {
    for case in REFUSED {
        let message = parse_err(case.yaml);
        assert!(
            !message.contains('\n'),
            "{:?}: not one line: {message}",
            case.yaml
        );
        for expected in case.expect {
            assert!(
                message.contains(expected),
                "{:?}:\n  message:  {message}\n  expected: {expected}",
                case.yaml
            );
        }
    }
}

#[test]
fn control_characters_from_the_file_are_escaped_in_messages() {
    let message = parse_err("version: 1\n\"bad\\nkey\\e[31m\": 1\n");
    assert!(
        message.starts_with("web.yaml:2:1: unknown field `bad\\nkey\\u{1b}[31m`"),
        "{message}"
    );
    assert!(!message.contains(['\n', '\x1b']), "{message}");
}

#[test]
fn variables_set_by_tollgate_are_refused_in_env_and_secrets() {
    for name in inside::set_by_tollgate() {
        let message = parse_err(&format!("version: 1\nenv:\n  {name}: x\n"));
        assert_eq!(
            message,
            format!("web.yaml:3:3: env: {name} is set by tollgate; remove it")
        );
        let message = parse_err(&format!(
            "version: 1\nsecrets:\n  {name}: {{from_env: X}}\n"
        ));
        assert_eq!(
            message,
            format!("web.yaml:3:3: secrets: {name} is set by tollgate; remove it")
        );
    }
    // Only the exact names: other spellings are ordinary variables.
    assert_eq!(parse_ok("version: 1\nenv: {Http_Proxy: x}\n").env.len(), 1);
}

#[test]
fn alias_expansion_bomb_is_refused() {
    // "Billion laughs" in an inline policy: 9^9 strings if expanded. The
    // policy parser takes no unknown key, so it is refused at the first
    // anchor, never expanded.
    let mut yaml = String::from("version: 1\ninternet:\n  agent:\n    x0: &x0 [lol]\n");
    for level in 1..=9 {
        let items = vec![format!("*x{}", level - 1); 9].join(", ");
        yaml.push_str(&format!("    x{level}: &x{level} [{items}]\n"));
    }
    let message = parse_err(&yaml);
    assert!(
        message.starts_with("web.yaml:4:5: internet.agent: unknown field `x0`"),
        "{message}"
    );
    // Where a sequence is taken, an alias of one is read no further than
    // its first wrong item.
    yaml.push_str("    allow: *x9\n");
    let message = parse_err(&yaml.replace("    x0:", "    deny: [a.test]\n    x0:"));
    assert!(message.contains("unknown field `x0`"), "{message}");
}

#[test]
fn load_reads_the_file_and_names_it_when_it_cannot() {
    let dir = TempDir::new();
    let path = dir.write("ci.yaml", "version: 1\nenv: {A: b}\n");
    let env = Environment::load(&path).unwrap();
    assert_eq!(env.name, "ci");
    assert_eq!(env.path, path);
    assert_eq!(env.env, vec![("A".to_owned(), "b".to_owned())]);

    let missing = dir.0.join("missing.yaml");
    let message = Environment::load(&missing).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!(
            "{}: cannot read environment file: ",
            missing.display()
        )),
        "{message}"
    );
    assert!(
        message.ends_with("check the path and its permissions"),
        "{message}"
    );
}

fn with_secrets(dir: &TempDir, secrets: &str) -> Environment {
    let text = format!("version: 1\nsecrets:\n{secrets}");
    Environment::parse(&dir.0.join("web.yaml"), &text).unwrap()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn secret_error(env: &Environment, lookup: impl Fn(&str) -> Option<String>) -> String {
    match env.resolve_secrets(lookup) {
        Ok(secrets) => panic!("should be refused, got {secrets:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn secrets_resolve_from_env_and_relative_files_in_order() {
    let dir = TempDir::new();
    dir.write("npmrc-token", "file-value\n");
    dir.write("crlf", "crlf-value\r\n");
    dir.write("two-newlines", "kept\n\n");
    let env = with_secrets(
        &dir,
        "  NPM_TOKEN: {from_env: HOST_NPM_TOKEN}\n  FROM_FILE: {from_file: npmrc-token}\n  \
         CRLF: {from_file: crlf}\n  TWO: {from_file: two-newlines}\n",
    );
    let secrets = env
        .resolve_secrets(|var| (var == "HOST_NPM_TOKEN").then(|| "env-value".to_owned()))
        .unwrap();
    let resolved: Vec<(&str, &str)> = secrets
        .iter()
        .map(|secret| (secret.name.as_str(), secret.value()))
        .collect();
    assert_eq!(
        resolved,
        [
            ("NPM_TOKEN", "env-value"),
            ("FROM_FILE", "file-value"),
            ("CRLF", "crlf-value"),
            ("TWO", "kept\n"),
        ]
    );
}

#[test]
fn missing_or_empty_secret_values_are_refused() {
    let dir = TempDir::new();
    let env = with_secrets(&dir, "  NPM_TOKEN: {from_env: NPM_TOKEN}\n");
    assert_eq!(
        secret_error(&env, no_env),
        "secret NPM_TOKEN: environment variable NPM_TOKEN is not set: export it before \
         tollgate run, or use from_file"
    );
    assert_eq!(
        secret_error(&env, |_| Some(String::new())),
        "secret NPM_TOKEN: environment variable NPM_TOKEN is empty: give the secret a value"
    );

    let empty = dir.write("empty", "\n");
    let env = with_secrets(&dir, "  KEY: {from_file: empty}\n");
    assert_eq!(
        secret_error(&env, no_env),
        format!(
            "secret KEY: file {} is empty: give the secret a value",
            empty.display()
        )
    );

    let env = with_secrets(&dir, "  KEY: {from_file: nowhere/key}\n");
    let message = secret_error(&env, no_env);
    let missing = dir.0.join("nowhere/key");
    assert!(
        message.starts_with(&format!(
            "secret KEY: cannot read file {}: ",
            missing.display()
        )),
        "{message}"
    );
    assert!(
        message.ends_with("check the path and its permissions"),
        "{message}"
    );
}

#[test]
fn unusable_secret_values_are_refused_without_being_shown() {
    let dir = TempDir::new();
    dir.write("nul", "s3cr3t-\0-value");
    dir.write("binary", b"s3cr3t-\xff-value");
    dir.write("huge", "s3cr3t-".repeat(MAX_ENV_STRING / 7 + 1));
    let cases = [
        ("nul", "holds a NUL byte"),
        ("binary", "is not UTF-8 text"),
        ("huge", "is too long"),
    ];
    for (file, expected) in cases {
        let env = with_secrets(&dir, &format!("  KEY: {{from_file: {file}}}\n"));
        let message = secret_error(&env, no_env);
        assert!(message.contains(expected), "{file}: {message}");
        assert!(!message.contains("s3cr3t"), "{file}: {message}");
    }
    let env = with_secrets(&dir, "  KEY: {from_env: KEY}\n");
    let message = secret_error(&env, |_| Some("s3cr3t\0".to_owned()));
    assert!(message.contains("holds a NUL byte"), "{message}");
    assert!(!message.contains("s3cr3t"), "{message}");

    // The limit counts `NAME=` and the terminating NUL.
    let fits = "x".repeat(MAX_ENV_STRING - "KEY=".len() - 1);
    assert_eq!(
        env.resolve_secrets(|_| Some(fits.clone())).unwrap()[0].value(),
        fits
    );
    let message = secret_error(&env, |_| Some(format!("{fits}x")));
    assert!(message.contains("is too long"), "{message}");
}

#[test]
fn debug_never_shows_secret_values() {
    let dir = TempDir::new();
    dir.write("token", "s3cr3t-from-file\n");
    let env = with_secrets(
        &dir,
        "  NPM_TOKEN: {from_env: NPM_TOKEN}\n  FILE_TOKEN: {from_file: token}\n",
    );
    let secrets = env
        .resolve_secrets(|_| Some("s3cr3t-from-env".to_owned()))
        .unwrap();
    assert_eq!(secrets[1].value(), "s3cr3t-from-file");
    let one = format!("{:?}", secrets[0]);
    assert_eq!(one, "Secret { name: \"NPM_TOKEN\", value: <redacted> }");
    let all = format!("{secrets:?} {secrets:#?} {env:?}");
    assert!(
        all.contains("FILE_TOKEN") && all.contains("<redacted>"),
        "{all}"
    );
    assert!(!all.contains("s3cr3t"), "{all}");
}

/// An environment file holds policies: it is read as strictly as a policy
/// file (duplicate keys anywhere, YAML tags, deep nesting are errors with
/// their line; a BOM is fine).
#[test]
fn environment_files_are_read_as_strictly_as_policy_files() {
    let duplicate_host = "version: 1\ninternet:\n  agent:\n    mode: limited\n    allow: [a.test]\n    hosts:\n      a.test: 10.0.0.1\n      a.test: 127.0.0.1\n";
    let error = parse_err(duplicate_host);
    assert!(error.contains("web.yaml:8:"), "{error}");
    assert!(error.contains("duplicate"), "{error}");
    let duplicate_secret = "version: 1\nsecrets:\n  T: {from_env: A}\n  T: {from_env: B}\n";
    assert!(parse_err(duplicate_secret).contains("web.yaml:4:"));
    let tagged = "version: 1\ninternet:\n  agent: {mode: !unrestricted}\n";
    let error = parse_err(tagged);
    assert!(error.contains("web.yaml:3:"), "{error}");
    assert!(error.contains("tag"), "{error}");
    let deep = format!(
        "version: 1\nenv: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let started = std::time::Instant::now();
    let error = parse_err(&deep);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{error}"
    );
    assert!(error.contains("nested"), "{error}");
    parse_ok("\u{feff}version: 1\n");
}
