use super::*;

fn v4(s: &str) -> Host {
    Host::Ip(IpAddr::V4(s.parse().unwrap()))
}

fn v6(s: &str) -> Host {
    Host::Ip(IpAddr::V6(s.parse().unwrap()))
}

fn name(s: &str) -> Host {
    Host::Name(DomainName(s.to_owned()))
}

/// Assert every (input, expected) pair, reporting all failures at once.
fn check_ok(cases: &[(&str, Host)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(input, want)| match Host::parse(input) {
            Ok(got) if &got == want => None,
            other => Some(format!("{input:?}: want Ok({want:?}), got {other:?}")),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A predicate picking out one `HostError` variant.
type IsKind = fn(&HostError) -> bool;

/// Assert every input fails with an error of the expected kind.
fn check_err(cases: &[(&str, IsKind)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(input, is_expected)| match Host::parse(input) {
            Err(error) if is_expected(&error) => None,
            other => Some(format!("{input:?}: unexpected {other:?}")),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn is_ipv4(e: &HostError) -> bool {
    matches!(e, HostError::InvalidIpv4 { .. })
}
fn is_empty_label(e: &HostError) -> bool {
    matches!(e, HostError::EmptyLabel { .. })
}
fn is_brackets(e: &HostError) -> bool {
    matches!(e, HostError::Brackets { .. })
}
fn is_ipv6(e: &HostError) -> bool {
    matches!(e, HostError::InvalidIpv6 { .. })
}
fn is_zone(e: &HostError) -> bool {
    matches!(e, HostError::ZoneId { .. })
}
fn is_idna(e: &HostError) -> bool {
    matches!(e, HostError::Idna { .. })
}
fn is_forbidden(e: &HostError) -> bool {
    matches!(e, HostError::ForbiddenChar { .. })
}
fn is_wildcard(e: &HostError) -> bool {
    matches!(e, HostError::Wildcard { .. })
}

#[test]
fn ipv4_every_inet_aton_form() {
    check_ok(&[
        ("127.0.0.1", v4("127.0.0.1")),
        ("2130706433", v4("127.0.0.1")),
        ("0x7f.1", v4("127.0.0.1")),
        ("0X7F.1", v4("127.0.0.1")),
        ("0x7F000001", v4("127.0.0.1")),
        ("0x7f000001", v4("127.0.0.1")),
        ("017700000001", v4("127.0.0.1")),
        ("0177.0.0.1", v4("127.0.0.1")),
        ("0177.0.0.01", v4("127.0.0.1")),
        ("0x7f.0x0.0x0.0x1", v4("127.0.0.1")),
        ("0x7f.0.0.1", v4("127.0.0.1")),
        ("127.1", v4("127.0.0.1")),
        ("127.0.1", v4("127.0.0.1")),
        ("127.0.0.1.", v4("127.0.0.1")),
        ("127.1.", v4("127.0.0.1")),
        ("2130706433.", v4("127.0.0.1")),
        // Leading zeros mean octal, as inet_aton reads them.
        ("0127.0.0.1", v4("87.0.0.1")),
        ("000000000000000000127.0.0.1", v4("87.0.0.1")),
        ("010.0.0.1", v4("8.0.0.1")),
        ("0", v4("0.0.0.0")),
        ("0.0.0.0", v4("0.0.0.0")),
        ("00", v4("0.0.0.0")),
        ("0x", v4("0.0.0.0")),
        ("0x0", v4("0.0.0.0")),
        ("4294967295", v4("255.255.255.255")),
        ("0xffffffff", v4("255.255.255.255")),
        ("037777777777", v4("255.255.255.255")),
        ("255.255.255.255", v4("255.255.255.255")),
        ("1.16777215", v4("1.255.255.255")),
        ("1.0xffffff", v4("1.255.255.255")),
        ("1.2.65535", v4("1.2.255.255")),
        ("1.2.0xffff", v4("1.2.255.255")),
        ("1.2.3.0xff", v4("1.2.3.255")),
        ("1.2.3.0377", v4("1.2.3.255")),
        ("169.254.169.254", v4("169.254.169.254")),
        ("2852039166", v4("169.254.169.254")),
        ("0xa9fea9fe", v4("169.254.169.254")),
        ("0251.0376.0251.0376", v4("169.254.169.254")),
        ("169.254.43518", v4("169.254.169.254")),
        ("8.8.8.8", v4("8.8.8.8")),
        // UTS #46 maps full-width digits and dots before the IPv4 check,
        // as browsers do: these are addresses, not names.
        ("１２７．０．０．１", v4("127.0.0.1")),
        ("127。0。0。1", v4("127.0.0.1")),
        ("０ｘ７ｆ．１", v4("127.0.0.1")),
    ]);
}

#[test]
fn ipv4_invalid_neighbours() {
    check_err(&[
        ("1.2.3.256", is_ipv4),
        ("256.0.0.1", is_ipv4),
        ("1.256.0.1", is_ipv4),
        ("1.2.3.999", is_ipv4),
        ("1.2.3.0x100", is_ipv4),
        ("1.2.3.0400", is_ipv4),
        ("1.2.65536", is_ipv4),
        ("1.2.0x10000", is_ipv4),
        ("1.16777216", is_ipv4),
        ("1.0x1000000", is_ipv4),
        ("4294967296", is_ipv4),
        ("0x100000000", is_ipv4),
        ("040000000000", is_ipv4),
        ("99999999999999999999999", is_ipv4),
        ("0x1ffffffffffffffffffff", is_ipv4),
        ("1.2.3.4.5", is_ipv4),
        ("foo.0x100000000", is_ipv4),
        ("foo.0xffffffffffffffffffffffffffffffff", is_ipv4),
        ("foo.99999999999999999999", is_ipv4),
        ("0.0.0.0.0", is_ipv4),
        ("08", is_ipv4),
        ("09.1.1.1", is_ipv4),
        ("1.2.3.08", is_ipv4),
        ("0x7g.1", is_ipv4),
        ("1..2", is_ipv4),
        (".1.2.3", is_ipv4),
        ("foo.123", is_ipv4),
        ("foo.0x1", is_ipv4),
        ("foo.0x", is_ipv4),
        ("example.com.123", is_ipv4),
        ("example.com.0", is_ipv4),
        ("foo.123.", is_ipv4),
        // Signs, which strtoul-based inet_aton would accept.
        ("-1", is_ipv4),
        ("-0", is_ipv4),
        ("foo.-1", is_ipv4),
        ("-1.2.3.4", is_ipv4),
        ("1.-2.3.4", is_ipv4),
        ("1.2.3.-4", is_ipv4),
        ("-0x7f.1", is_ipv4),
        ("+1.2.3.4", is_forbidden),
        ("1.2.3.+4", is_forbidden),
        (" 127.0.0.1", is_forbidden),
        ("127.0.0.1 ", is_forbidden),
        ("127.0.0.1\n", is_forbidden),
        ("\t127.1", is_forbidden),
        // More than one trailing dot is never an address.
        ("127.0.0.1..", is_empty_label),
    ]);
}

#[test]
fn numeric_labels_that_are_not_last_are_names() {
    check_ok(&[
        ("123.example.com", name("123.example.com")),
        ("0x7f.example", name("0x7f.example")),
        ("1e100.net", name("1e100.net")),
        ("foo.0xg", name("foo.0xg")),
        ("0xg", name("0xg")),
        ("0x1g.com", name("0x1g.com")),
        ("foo.1a", name("foo.1a")),
        ("foo.1-2", name("foo.1-2")),
        ("foo.1_", name("foo.1_")),
        ("127.0.0.1.example", name("127.0.0.1.example")),
    ]);
}

#[test]
fn names_case_and_trailing_dot() {
    check_ok(&[
        ("example.com", name("example.com")),
        ("EXAMPLE.COM", name("example.com")),
        ("ExAmPlE.CoM", name("example.com")),
        ("example.com.", name("example.com")),
        ("EXAMPLE.COM.", name("example.com")),
        ("localhost", name("localhost")),
        ("localhost.", name("localhost")),
        ("a", name("a")),
        ("_dmarc.example.com", name("_dmarc.example.com")),
        ("my_host.example", name("my_host.example")),
        (
            "r4---sn-abc.googlevideo.com",
            name("r4---sn-abc.googlevideo.com"),
        ),
        ("-leading.example", name("-leading.example")),
        ("trailing-.example", name("trailing-.example")),
    ]);
    check_err(&[
        ("example.com..", is_empty_label),
        ("example.com...", is_empty_label),
        (".", is_empty_label),
        ("..", is_empty_label),
        (".example.com", is_empty_label),
        ("a..b", is_empty_label),
        ("example.com。。", is_empty_label),
    ]);
    assert_eq!(Host::parse(""), Err(HostError::Empty));
}

#[test]
fn idna_to_punycode() {
    check_ok(&[
        ("bücher.example", name("xn--bcher-kva.example")),
        ("BÜCHER.EXAMPLE", name("xn--bcher-kva.example")),
        ("xn--bcher-kva.example", name("xn--bcher-kva.example")),
        ("XN--BCHER-KVA.EXAMPLE", name("xn--bcher-kva.example")),
        ("Xn--Bcher-Kva.Example.", name("xn--bcher-kva.example")),
        ("münchen.de", name("xn--mnchen-3ya.de")),
        ("ÄÖÜ.DE", name("xn--4ca0bs.de")),
        ("faß.de", name("xn--fa-hia.de")),
        ("日本語.jp", name("xn--wgv71a119e.jp")),
        ("ｅｘａｍｐｌｅ．ｃｏｍ", name("example.com")),
        ("ＥＸＡＭＰＬＥ．ＣＯＭ", name("example.com")),
        ("example。com", name("example.com")),
        ("example.com。", name("example.com")),
        ("example｡com", name("example.com")),
        // UTS #46 deletes "ignored" code points: the canonical form is
        // what any compliant client would look up.
        ("ex\u{ad}ample.com", name("example.com")),
        ("ex\u{200b}ample.com", name("example.com")),
    ]);
    check_err(&[
        ("xn--", is_idna),
        ("xn--a.example", is_idna),
        ("xn--bcher-kva-.example", is_idna),
        ("xn--zz-.example", is_idna),
        // Look-alikes that UTS #46 maps to forbidden ASCII.
        ("a／b.com", is_idna),
        ("ａ＠b.com", is_idna),
        ("a％41.com", is_idna),
        ("［::1］", is_ipv6),
        ("［example.com］", is_idna),
        ("::１", is_ipv6),
        ("\u{ad}", is_empty_label),
    ]);
}

#[test]
fn every_rejected_character() {
    let forbidden = [
        '%', '/', '\\', '@', ' ', '\t', '\n', '\r', '\0', '\u{1}', '\u{1f}', '\u{7f}', '\u{85}',
        '\u{a0}', '\u{2028}', '\u{3000}', '#', '?', '!', '$', '&', '\'', '(', ')', '+', ',', ';',
        '=', '"', '<', '>', '^', '`', '{', '|', '}', '~', '[', ']',
    ];
    for ch in forbidden {
        for input in [
            format!("exa{ch}mple.com"),
            format!("{ch}example.com"),
            format!("example.com{ch}"),
        ] {
            let got = Host::parse(&input);
            let ok = match ch {
                '[' | ']' if input.starts_with('[') || input.ends_with(']') => {
                    matches!(got, Err(HostError::Brackets { .. }))
                }
                _ => {
                    got == Err(HostError::ForbiddenChar {
                        input: input.clone(),
                        ch,
                    })
                }
            };
            assert!(ok, "{input:?}: {got:?}");
        }
    }
    check_err(&[
        ("*", is_wildcard),
        ("*.example.com", is_wildcard),
        ("**.example.com", is_wildcard),
        ("foo*.example.com", is_wildcard),
        ("example.*", is_wildcard),
        ("[*::1]", is_wildcard),
        ("＊.example.com", is_wildcard),
        ("example.com:443", is_ipv6),
        ("a:b", is_ipv6),
        ("user:pw@example.com", is_ipv6),
        ("user@example.com", is_forbidden),
        ("example.com%2e", is_forbidden),
        ("%65xample.com", is_forbidden),
    ]);
}

#[test]
fn label_and_name_length_limits() {
    let label63 = "a".repeat(63);
    let label64 = "a".repeat(64);
    check_ok(&[
        (&format!("{label63}.com"), name(&format!("{label63}.com"))),
        (&format!("{label63}.com."), name(&format!("{label63}.com"))),
    ]);
    assert!(matches!(
        Host::parse(&format!("{label64}.com")),
        Err(HostError::LabelTooLong { len: 64, .. })
    ));
    assert!(matches!(
        Host::parse(&format!("www.{}", label64.to_uppercase())),
        Err(HostError::LabelTooLong { len: 64, .. })
    ));

    // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253.
    let name253 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
    assert_eq!(name253.len(), 253);
    let name254 = format!("{name253}b");
    check_ok(&[
        (&name253, name(&name253)),
        (&format!("{name253}."), name(&name253)),
    ]);
    assert!(matches!(
        Host::parse(&name254),
        Err(HostError::NameTooLong { len: 254, .. })
    ));
    assert!(matches!(
        Host::parse(&format!("{name254}.")),
        Err(HostError::NameTooLong { len: 254, .. })
    ));

    // Limits apply to the punycode, not the Unicode input.
    let short_unicode = "ü".repeat(60);
    assert!(matches!(
        Host::parse(&format!("{short_unicode}.example")),
        Err(HostError::LabelTooLong { .. })
    ));

    let huge = "a".repeat(MAX_INPUT_BYTES + 1);
    assert_eq!(
        Host::parse(&huge),
        Err(HostError::InputTooLong {
            len: MAX_INPUT_BYTES + 1
        })
    );
    assert!(Host::parse(&"ü".repeat(5000)).is_err());
}

#[test]
fn ipv6_forms() {
    check_ok(&[
        ("[::1]", v6("::1")),
        ("::1", v6("::1")),
        ("[::]", v6("::")),
        ("::", v6("::")),
        ("[0:0:0:0:0:0:0:1]", v6("::1")),
        ("[2001:DB8::1]", v6("2001:db8::1")),
        ("2001:db8::1", v6("2001:db8::1")),
        (
            "[2606:4700:4700:0000:0000:0000:0000:1111]",
            v6("2606:4700:4700::1111"),
        ),
        // Mapped and compatible forms stay V6: the guard refuses them.
        ("[::ffff:127.0.0.1]", v6("::ffff:127.0.0.1")),
        ("::ffff:127.0.0.1", v6("::ffff:127.0.0.1")),
        ("[::ffff:7f00:1]", v6("::ffff:127.0.0.1")),
        ("[::FFFF:169.254.169.254]", v6("::ffff:169.254.169.254")),
        ("[::127.0.0.1]", v6("::127.0.0.1")),
        ("[64:ff9b::8.8.8.8]", v6("64:ff9b::808:808")),
    ]);
    check_err(&[
        ("[::1", is_brackets),
        ("::1]", is_brackets),
        ("[]", is_brackets),
        ("[[::1]]", is_brackets),
        ("[example.com]", is_brackets),
        ("[127.0.0.1]", is_brackets),
        ("[2130706433]", is_brackets),
        ("[::1]:80", is_brackets),
        ("[::1].", is_brackets),
        ("[ ::1]", is_brackets),
        ("fe80::1%eth0", is_zone),
        ("fe80::1%25eth0", is_zone),
        ("[fe80::1%eth0]", is_zone),
        ("[fe80::1%25eth0]", is_zone),
        (":::1", is_ipv6),
        ("1:2:3:4:5:6:7:8:9", is_ipv6),
        ("::ffff:127.1", is_ipv6),
        ("::ffff:0x7f.0.0.1", is_ipv6),
        ("::ffff:0177.0.0.1", is_ipv6),
        ("::1.", is_ipv6),
        ("::1 ", is_ipv6),
        ("::g", is_ipv6),
    ]);
}

#[test]
fn display_round_trips() {
    for input in [
        "example.com",
        "xn--bcher-kva.example",
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "[::1]",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[2001:db8::1]",
        "[fe80::1]",
    ] {
        let host = Host::parse(input).unwrap();
        assert_eq!(host.to_string(), input);
        assert_eq!(Host::parse(&host.to_string()).unwrap(), host);
    }
    assert_eq!(Host::parse("::1").unwrap().to_string(), "[::1]");
    assert_eq!(Host::parse("0x7f.1").unwrap().to_string(), "127.0.0.1");
    assert_eq!(
        Host::parse("BÜCHER.example.").unwrap().to_string(),
        "xn--bcher-kva.example"
    );
    assert_eq!(
        Host::parse("[2001:DB8:0:0:0:0:0:1]").unwrap().to_string(),
        "[2001:db8::1]"
    );
}

fn hp(host: Host, port: u16) -> HostPort {
    HostPort { host, port }
}

#[test]
fn hostport_with_and_without_port() {
    let cases = [
        ("example.com", hp(name("example.com"), 80)),
        ("example.com:8080", hp(name("example.com"), 8080)),
        ("EXAMPLE.COM.:443", hp(name("example.com"), 443)),
        ("example.com:", hp(name("example.com"), 80)),
        ("example.com:0080", hp(name("example.com"), 80)),
        ("example.com:65535", hp(name("example.com"), 65535)),
        ("example.com:1", hp(name("example.com"), 1)),
        ("127.1:3128", hp(v4("127.0.0.1"), 3128)),
        ("2130706433", hp(v4("127.0.0.1"), 80)),
        ("[::1]", hp(v6("::1"), 80)),
        ("[::1]:443", hp(v6("::1"), 443)),
        ("[::ffff:127.0.0.1]:443", hp(v6("::ffff:127.0.0.1"), 443)),
        (
            "xn--bcher-kva.example:443",
            hp(name("xn--bcher-kva.example"), 443),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(HostPort::parse(input, 80), Ok(want.clone()), "{input:?}");
        let authority: Authority = input.parse().unwrap();
        assert_eq!(
            HostPort::from_authority(&authority, 80),
            Ok(want),
            "{input:?}"
        );
    }
}

#[test]
fn hostport_from_uri_authority() {
    let uri: http::Uri = "https://Example.COM./path?q=1".parse().unwrap();
    let authority = uri.authority().unwrap();
    assert_eq!(
        HostPort::from_authority(authority, 443),
        Ok(hp(name("example.com"), 443))
    );
    let uri: http::Uri = "http://user:pw@example.com:8080/".parse().unwrap();
    assert!(matches!(
        HostPort::from_authority(uri.authority().unwrap(), 80),
        Err(HostError::Userinfo { .. })
    ));
}

#[test]
fn hostport_rejections() {
    let userinfo: IsKind = |e| matches!(e, HostError::Userinfo { .. });
    let port_zero: IsKind = |e| matches!(e, HostError::PortZero { .. });
    let bad_port: IsKind = |e| matches!(e, HostError::InvalidPort { .. });
    let bad_authority: IsKind = |e| matches!(e, HostError::InvalidAuthority { .. });
    let cases: [(&str, IsKind); 25] = [
        ("user:pw@example.com", userinfo),
        ("user@example.com", userinfo),
        ("user@example.com:443", userinfo),
        ("@example.com", userinfo),
        ("evil.example@127.0.0.1:80", userinfo),
        ("example.com:0", port_zero),
        ("example.com:00", port_zero),
        ("[::1]:0", port_zero),
        ("example.com:65536", bad_port),
        ("example.com:99999999999999999999", bad_port),
        ("example.com:8a", bad_port),
        ("example.com:+80", bad_port),
        ("example.com:-1", bad_port),
        ("example.com:0x50", bad_port),
        ("a:b:c", bad_authority),
        ("example.com:80:80", bad_authority),
        ("exa mple.com", bad_authority),
        ("example.com/path", bad_authority),
        ("example.com?q", bad_authority),
        ("bücher.example", bad_authority),
        ("[::1]x:80", bad_authority),
        ("[::1", bad_authority),
        ("example.com%2f", bad_authority),
        ("[fe80::1%25eth0]:80", is_zone),
        ("*.example.com:443", is_wildcard),
    ];
    for (input, is_expected) in cases {
        let got = HostPort::parse(input, 80);
        assert!(
            matches!(&got, Err(e) if is_expected(e)),
            "{input:?}: {got:?}"
        );
    }
    assert_eq!(HostPort::parse("", 80), Err(HostError::Empty));
    assert!(matches!(
        HostPort::parse("1.2.3.256:80", 80),
        Err(HostError::InvalidIpv4 { .. })
    ));
    assert!(matches!(
        HostPort::parse("example.com", 0),
        Err(HostError::PortZero { .. })
    ));
}

#[test]
fn hostport_display_round_trips() {
    for input in [
        "example.com:443",
        "127.0.0.1:80",
        "[::1]:3128",
        "[::ffff:127.0.0.1]:443",
    ] {
        let parsed = HostPort::parse(input, 1).unwrap();
        assert_eq!(parsed.to_string(), input);
        assert_eq!(HostPort::parse(&parsed.to_string(), 1).unwrap(), parsed);
    }
    assert_eq!(
        HostPort::parse("0x7f.1", 8080).unwrap().to_string(),
        "127.0.0.1:8080"
    );
}

#[test]
fn error_messages_are_one_line_and_name_the_input() {
    let inputs = [
        "exa\nmple.com",
        "1.2.3.256",
        "[example.com]",
        "fe80::1%eth0",
        "*.example.com",
        "xn--",
        "a..b",
    ];
    for input in inputs {
        let message = Host::parse(input).unwrap_err().to_string();
        assert!(!message.contains('\n'), "{message:?}");
        assert!(message.contains(&format!("{input:?}")), "{message:?}");
    }
    let long = format!("{}\u{1}", "é".repeat(500));
    let message = Host::parse(&long).unwrap_err().to_string();
    assert!(message.len() < 300, "{message}");
    // Credentials in an authority are refused without repeating them:
    // the message goes to logs.
    let message = HostPort::parse("alice:SECRET@example.com", 80)
        .unwrap_err()
        .to_string();
    assert!(message.contains("\"example.com\""), "{message}");
    assert!(
        !message.contains("SECRET") && !message.contains("alice"),
        "{message}"
    );
}
