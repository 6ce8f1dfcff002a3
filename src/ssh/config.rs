//! `source.ssh` as OpenSSH users expect it: the host may be an alias of `~/.ssh/config`
//! (parsed by the `ssh2-config` crate), whose `HostName`, `User`, `Port`, `IdentityFile`,
//! `UserKnownHostsFile` and `ProxyJump` fill in what the plan leaves out; and the host may
//! be reached through jump hosts (`source.ssh.proxyJump`, or `ProxyJump` there), each
//! resolved the same way. The plan's own fields always win.

use std::path::{Path, PathBuf};

use ssh2_config::{HostParams, ParseRule, SshConfig};

use super::{ReadVia, SshSpec};

/// What the plan says of the SSH source (`source.ssh`), paths already made absolute.
#[derive(Debug, Default, Clone)]
pub struct Given {
    /// `host`: a name, an address, or an alias of the ssh config.
    pub host: String,
    /// `port`.
    pub port: Option<u16>,
    /// `user`.
    pub user: Option<String>,
    /// `identityFile`.
    pub identity_file: Option<PathBuf>,
    /// `knownHostsFile`.
    pub known_hosts_file: Option<PathBuf>,
    /// `acceptNewHostKey`.
    pub accept_new_host_key: bool,
    /// `read`.
    pub read: ReadVia,
    /// `proxyJump`: the hops in order (`["none"]`: none, whatever the ssh config says).
    pub proxy_jump: Option<Vec<String>>,
    /// `configFile`: `None` for `~/.ssh/config` where it exists; `none` for no file.
    pub config_file: Option<PathBuf>,
}

/// The ssh config file in use: the one named, `~/.ssh/config` where it exists, or none.
/// A file named that is not there, or does not parse, is an error naming it.
fn load(named: Option<&Path>) -> Result<Option<(PathBuf, SshConfig)>, String> {
    let (path, must) = match named {
        Some(p) if p == Path::new("none") => return Ok(None),
        Some(p) => (p.to_path_buf(), true),
        None => match std::env::var_os("HOME") {
            Some(h) => (PathBuf::from(h).join(".ssh/config"), false),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must => return Ok(None),
        Err(e) => {
            return Err(format!(
                "field `source.ssh.configFile`: cannot read {} ({e}): name an ssh config this user may read, or `none`",
                path.display()
            ));
        }
    };
    let text = without_match_blocks(&path, &text)?;
    let rules = ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS;
    let config = SshConfig::default()
        .parse(&mut text.as_bytes(), rules)
        .map_err(|e| {
            format!(
                "ssh config {}: {e}: mend it, or set source.ssh.configFile to another file or `none`",
                path.display()
            )
        })?;
    Ok(Some((path, config)))
}

/// A host pattern no host is looked up by: the `Host` line a `Match` line becomes.
const NO_HOST: &str = "Host promigrate-skips-this-match-block.invalid";

/// The numbers of the lines whose keyword is `word` (as OpenSSH reads it: the first word,
/// any case, `=` allowed after it), and their arguments.
fn keyword_lines<'t>(text: &'t str, word: &str) -> Vec<(usize, &'t str)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.trim_start();
            let end = l.find(|c: char| c.is_whitespace() || c == '=')?;
            l[..end]
                .eq_ignore_ascii_case(word)
                .then(|| (i + 1, l[end..].trim_start_matches([' ', '\t', '=']).trim()))
        })
        .collect()
}

/// The config text with its `Match` blocks left out: the parser reads `Host` blocks only
/// and would take a `Match` block's lines as the previous block's. Each `Match` line
/// becomes a `Host` line no host matches, so that its block applies to none (logged). A
/// `Match` block in an `Include`d file cannot be left out so: that is an error naming it.
fn without_match_blocks(path: &Path, text: &str) -> Result<String, String> {
    let matches = keyword_lines(text, "match");
    if !matches.is_empty() {
        let at: Vec<String> = matches.iter().map(|(n, _)| n.to_string()).collect();
        tracing::warn!(
            "ssh config {}: its Match {} ({} {}) {} not read: promigrate reads Host blocks only; put what the source needs in a Host block or in the plan",
            path.display(),
            crate::units::noun_for(at.len() as u64, "block"),
            crate::units::noun_for(at.len() as u64, "line"),
            at.join(", "),
            crate::units::verb_for(at.len() as u64, "is", "are")
        );
    }
    included_match_blocks(path, text, 0)?;
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if matches.iter().any(|(n, _)| *n == i + 1) {
                NO_HOST
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// An error if a file `text` includes (`Include`, as OpenSSH resolves it: `~`, relative to
/// `~/.ssh`, glob patterns), or one it includes, has a `Match` block.
fn included_match_blocks(from: &Path, text: &str, depth: usize) -> Result<(), String> {
    if depth > 8 {
        return Ok(()); // the parser stops an Include loop itself
    }
    let home = std::env::var("HOME").unwrap_or_default();
    for (_, args) in keyword_lines(text, "include") {
        for arg in args.split_whitespace() {
            let arg = arg.trim_matches('"');
            let pattern = if arg.starts_with('~') || arg.starts_with('/') {
                crate::fsutil::expand_home(Path::new(arg))
                    .to_string_lossy()
                    .into_owned()
            } else {
                format!("{home}/.ssh/{arg}")
            };
            for file in glob::glob(&pattern).into_iter().flatten().flatten() {
                let Ok(inner) = std::fs::read_to_string(&file) else {
                    continue;
                };
                if let Some((n, _)) = keyword_lines(&inner, "match").first() {
                    return Err(format!(
                        "ssh config {} (included from {}) has a Match block (line {n}), which promigrate cannot read apart from the Host block before it: set what the source needs in the plan's source.ssh fields, and configFile: none (or name a config without it)",
                        file.display(),
                        from.display()
                    ));
                }
                included_match_blocks(&file, &inner, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// The name this process runs as: the local user OpenSSH logs in as when nothing says.
fn local_user() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
}

/// A config path with OpenSSH's tokens expanded (`%d` home, `%u` local user, `%h` host,
/// `%r` remote user, `%p` port, `%%`), and a leading `~`.
fn expand(p: &str, host: &str, user: &str, port: u16) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let mut out = String::new();
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&home),
            Some('u') => out.push_str(&local_user().unwrap_or_default()),
            Some('h') => out.push_str(host),
            Some('r') => out.push_str(user),
            Some('p') => out.push_str(&port.to_string()),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    crate::fsutil::expand_home(Path::new(&out))
}

/// One hop of a ProxyJump list: `[user@]host[:port]` or `ssh://[user@]host[:port]`; an
/// IPv6 address in brackets.
fn parse_hop(hop: &str) -> Result<(Option<String>, String, Option<u16>), String> {
    let bad = |why: &str| {
        format!("field `source.ssh.proxyJump`: `{hop}` {why}: write each hop as user@host:port")
    };
    let s = hop
        .strip_prefix("ssh://")
        .unwrap_or(hop)
        .trim_end_matches('/');
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
        Some(_) => return Err(bad("has an empty user")),
        None => (None, s),
    };
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| bad("opens a bracket it does not close"))?;
        (h, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (rest, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("has no host"));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("has a port that is not a number from 1 to 65535"))
        })
        .transpose()?;
    Ok((user, host.to_string(), port))
}

/// Whether a ProxyJump list says "no jump".
fn is_none(hops: &[String]) -> bool {
    hops.len() == 1 && hops[0].eq_ignore_ascii_case("none")
}

/// What the config says of `alias`, if there is a config.
fn query(config: Option<&(PathBuf, SshConfig)>, alias: &str) -> Option<HostParams> {
    config.map(|(_, c)| c.query(alias))
}

/// Resolves one host (the source or a hop): the plan's value, else the config's, else
/// OpenSSH's default. `used` collects the config keys that supplied something.
struct Resolved {
    host: String,
    port: u16,
    user: String,
    identity_file: Option<PathBuf>,
    /// The config's `IdentityFile`s that exist here, in order (tried before the agent).
    config_identities: Vec<PathBuf>,
    /// `IdentitiesOnly yes`.
    identities_only: bool,
    known_hosts_file: PathBuf,
    proxy_jump: Option<Vec<String>>,
    used: Vec<&'static str>,
}

/// What the plan says of one host (the source, or a hop), for [`resolve_host`].
struct Ask<'a> {
    alias: &'a str,
    port: Option<u16>,
    user: Option<String>,
    identity_file: Option<PathBuf>,
    known_hosts_file: Option<PathBuf>,
    /// For messages: `source.ssh`, or `source.ssh.proxyJump hop …`.
    what: &'a str,
    /// The host is reached through a jump (its ProxyCommand would not be used).
    reached_otherwise: bool,
}

fn resolve_host(ask: Ask<'_>, params: Option<HostParams>) -> Result<Resolved, String> {
    let Ask {
        alias,
        port,
        user,
        identity_file,
        known_hosts_file,
        what,
        reached_otherwise,
    } = ask;
    let mut used = Vec::new();
    let p = params.unwrap_or_else(|| HostParams::new(&Default::default()));
    let host = match &p.host_name {
        Some(h) => {
            used.push("HostName");
            h.replace("%h", alias).replace("%%", "%")
        }
        None => alias.to_string(),
    };
    let port = match (port, p.port) {
        (Some(p), _) => p,
        (None, Some(c)) => {
            used.push("Port");
            c
        }
        (None, None) => 22,
    };
    let user = match (user, &p.user) {
        (Some(u), _) => u,
        (None, Some(c)) => {
            used.push("User");
            c.clone()
        }
        (None, None) => local_user().ok_or_else(|| {
            format!("{what}: no user is given, the ssh config names none, and this process's user has no name: {}", if what == "source.ssh" { "set source.ssh.user" } else { "write the hop as user@host" })
        })?,
    };
    // The plan's key is the one. Without it: the config's IdentityFiles that exist here
    // (the missing ones are skipped, as OpenSSH does), then the agent's keys.
    let mut config_identities = Vec::new();
    if identity_file.is_none() {
        let listed = p.identity_file.clone().unwrap_or_default();
        config_identities = listed
            .iter()
            .map(|k| expand(&k.to_string_lossy(), &host, &user, port))
            .filter(|k| k.is_file())
            .collect();
        if !config_identities.is_empty() {
            used.push("IdentityFile");
        } else if !listed.is_empty() {
            tracing::debug!(
                "{what}: none of the ssh config's IdentityFile lines names a file here ({listed:?}); the ssh-agent is asked, unless IdentitiesOnly"
            );
        }
    }
    // ProxyCommand is not run: refused rather than left out (the host would be tried
    // directly, where it may not be reachable, or not be the host meant).
    if let Some(cmd) = p.unsupported_fields.get("proxycommand")
        && !cmd.first().is_some_and(|c| c.eq_ignore_ascii_case("none"))
        && p.proxy_jump.is_none()
        && !reached_otherwise
    {
        return Err(format!(
            "{what}: the ssh config sets ProxyCommand for {alias} ({}), which promigrate does not run: set source.ssh.proxyJump (or ProxyJump in the config instead), or source.ssh.configFile: none",
            cmd.join(" ")
        ));
    }
    let known_hosts_file = match known_hosts_file {
        Some(k) => k,
        None => match p
            .unsupported_fields
            .get("userknownhostsfile")
            .and_then(|v| v.first())
        {
            Some(k) => {
                used.push("UserKnownHostsFile");
                expand(k, &host, &user, port)
            }
            None => expand("~/.ssh/known_hosts", &host, &user, port),
        },
    };
    Ok(Resolved {
        host,
        port,
        user,
        identity_file,
        config_identities,
        identities_only: p
            .unsupported_fields
            .get("identitiesonly")
            .and_then(|v| v.first())
            .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        known_hosts_file,
        proxy_jump: p.proxy_jump.clone(),
        used,
    })
}

/// `source.ssh` resolved against the ssh config: the host to connect to and every jump on
/// the way, in order. Errors name the field or the config file, and what to do.
pub fn resolve(g: &Given) -> Result<SshSpec, String> {
    let config = load(g.config_file.as_deref())?;
    let t = resolve_host(
        Ask {
            alias: &g.host,
            port: g.port,
            user: g.user.clone(),
            identity_file: g.identity_file.clone(),
            known_hosts_file: g.known_hosts_file.clone(),
            what: "source.ssh",
            reached_otherwise: g.proxy_jump.as_ref().is_some_and(|h| !is_none(h)),
        },
        query(config.as_ref(), &g.host),
    )?;
    let mut used = t.used.clone();
    let hops = match (&g.proxy_jump, &t.proxy_jump) {
        (Some(h), _) => h.clone(),
        (None, Some(h)) => {
            used.push("ProxyJump");
            h.clone()
        }
        (None, None) => Vec::new(),
    };
    let hops = if is_none(&hops) { Vec::new() } else { hops };
    let mut jumps = Vec::new();
    // The first hop's own ProxyJump (from the config) comes before it, as with OpenSSH,
    // whose jump to the first hop is itself an ssh run with that host's config.
    let mut pending: Vec<String> = hops.into_iter().rev().collect();
    let mut rounds = 0;
    while let Some(hop) = pending.pop() {
        rounds += 1;
        if rounds > 16 {
            return Err(
                "field `source.ssh.proxyJump`: more than 16 jump hosts (do the ProxyJump lines of the ssh config lead round in a circle?)".into(),
            );
        }
        let (user, alias, port) = parse_hop(&hop)?;
        let what = format!("source.ssh.proxyJump hop {hop}");
        let h = resolve_host(
            Ask {
                alias: &alias,
                port,
                user,
                identity_file: None,
                known_hosts_file: g.known_hosts_file.clone(),
                what: &what,
                // Only the first hop is reached on its own (its ProxyCommand would matter).
                reached_otherwise: !jumps.is_empty(),
            },
            query(config.as_ref(), &alias),
        )?;
        if jumps.is_empty()
            && let Some(before) = h.proxy_jump.as_ref().filter(|b| !is_none(b))
        {
            // Not the first hop after all: its own hops go first.
            pending.push(hop.clone());
            pending.extend(before.iter().rev().cloned());
            // Guard against a hop that names itself.
            if before.iter().any(|b| b == &hop) {
                return Err(format!(
                    "ssh config: the ProxyJump of {alias} names {hop} itself: mend the config, or set source.ssh.proxyJump"
                ));
            }
            continue;
        }
        for k in &h.used {
            let k = match *k {
                "HostName" => "HostName (hop)",
                "User" => "User (hop)",
                "Port" => "Port (hop)",
                "IdentityFile" => "IdentityFile (hop)",
                "UserKnownHostsFile" => "UserKnownHostsFile (hop)",
                other => other,
            };
            if !used.contains(&k) {
                used.push(k);
            }
        }
        // The hop's own keys (from the config), then the plan's, then the agent's (see
        // super::authenticate).
        let mut keys = h.config_identities;
        keys.extend(g.identity_file.clone());
        jumps.push(SshSpec {
            host: h.host,
            port: h.port,
            user: h.user,
            identity_file: None,
            config_identities: keys,
            identities_only: h.identities_only,
            known_hosts_file: h.known_hosts_file,
            accept_new_host_key: g.accept_new_host_key,
            read: g.read,
            role: what,
            ..SshSpec::default()
        });
    }
    Ok(SshSpec {
        host: t.host,
        port: t.port,
        user: t.user,
        identity_file: t.identity_file,
        config_identities: t.config_identities,
        identities_only: t.identities_only,
        known_hosts_file: t.known_hosts_file,
        accept_new_host_key: g.accept_new_host_key,
        read: g.read,
        jumps,
        config: config.map(|(p, _)| p).filter(|_| !used.is_empty()),
        from_config: used,
        alias: Some(g.host.clone()),
        role: "source.ssh".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_are_read_as_openssh_writes_them() {
        assert_eq!(
            parse_hop("ops@bastion:2222").unwrap(),
            (Some("ops".into()), "bastion".into(), Some(2222))
        );
        assert_eq!(
            parse_hop("bastion").unwrap(),
            (None, "bastion".into(), None)
        );
        assert_eq!(
            parse_hop("ssh://a@[::1]:22").unwrap(),
            (Some("a".into()), "::1".into(), Some(22))
        );
        assert_eq!(parse_hop("::1").unwrap(), (None, "::1".into(), None));
        for bad in ["ops@bastion:x", "@h", "ops@:22", "h:0", "[::1"] {
            let e = parse_hop(bad).unwrap_err();
            assert!(e.contains("source.ssh.proxyJump") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_config_fills_in_what_the_plan_leaves_out_and_the_plan_wins() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, "x").unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            format!(
                "Host vm1\n  HostName 10.0.0.5\n  User prom\n  Port 2200\n  IdentityFile /nonexistent\n  IdentityFile {}\n  ProxyJump jump1\n  UserKnownHostsFile {}/kh\n\
                 Host jump1\n  HostName 127.0.0.9\n  User ops\n  Port 2022\n\
                 Host *\n  ServerAliveInterval 30\n",
                key.display(),
                dir.path().display()
            ),
        )
        .unwrap();
        let g = Given {
            host: "vm1".into(),
            config_file: Some(cfg.clone()),
            ..Given::default()
        };
        let s = resolve(&g).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.user.as_str()),
            ("10.0.0.5", 2200, "prom")
        );
        assert_eq!(s.identity_file, None);
        assert_eq!(s.config_identities, vec![key.clone()]);
        assert_eq!(s.known_hosts_file, dir.path().join("kh"));
        assert_eq!(s.jumps.len(), 1);
        assert_eq!(s.jumps[0].describe(), "ops@127.0.0.9:2022");
        assert!(s.from_config.contains(&"ProxyJump"), "{:?}", s.from_config);
        // The plan's fields win; proxyJump none drops the config's.
        let g = Given {
            host: "vm1".into(),
            port: Some(22),
            user: Some("root".into()),
            proxy_jump: Some(vec!["none".into()]),
            config_file: Some(cfg.clone()),
            ..Given::default()
        };
        let s = resolve(&g).unwrap();
        assert_eq!(s.describe(), "root@10.0.0.5:22");
        assert!(s.jumps.is_empty());
        // No config at all: the host as given.
        let g = Given {
            host: "vm1".into(),
            user: Some("u".into()),
            config_file: Some("none".into()),
            ..Given::default()
        };
        let s = resolve(&g).unwrap();
        assert_eq!(s.describe(), "u@vm1:22");
        assert!(s.config.is_none() && s.from_config.is_empty());
    }

    #[test]
    fn a_missing_or_broken_config_file_is_named() {
        let g = Given {
            host: "h".into(),
            config_file: Some("/nonexistent/ssh_config".into()),
            ..Given::default()
        };
        let e = resolve(&g).unwrap_err();
        assert!(
            e.contains("source.ssh.configFile") && e.contains("/nonexistent/ssh_config"),
            "{e}"
        );
    }

    #[test]
    fn match_blocks_apply_to_no_host_and_included_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host bastion\n  User ops\nMatch host *.internal\n  User admin\n  ProxyJump bastion\n",
        )
        .unwrap();
        let g = Given {
            host: "bastion".into(),
            config_file: Some(cfg.clone()),
            ..Given::default()
        };
        let s = resolve(&g).unwrap();
        assert_eq!(
            s.user, "ops",
            "the Match block's User was taken as bastion's"
        );
        assert!(s.jumps.is_empty(), "{:?}", s.jumps);
        // A Match block in an included file cannot be left out: refused, named.
        let inc = dir.path().join("inc.conf");
        std::fs::write(&inc, "Match all\n  User admin\n").unwrap();
        std::fs::write(
            &cfg,
            format!("Include {}\nHost bastion\n  User ops\n", inc.display()),
        )
        .unwrap();
        let e = resolve(&g).unwrap_err();
        assert!(e.contains("inc.conf") && e.contains("Match"), "{e}");
    }

    #[test]
    fn a_proxycommand_is_refused_not_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host vm\n  ProxyCommand nc -X 5 -x proxy:1080 %h %p\n",
        )
        .unwrap();
        let g = Given {
            host: "vm".into(),
            user: Some("u".into()),
            config_file: Some(cfg.clone()),
            ..Given::default()
        };
        let e = resolve(&g).unwrap_err();
        assert!(e.contains("ProxyCommand") && e.contains("proxyJump"), "{e}");
        // The plan's proxyJump instead: fine.
        let g = Given {
            proxy_jump: Some(vec!["ops@b".into()]),
            ..g
        };
        assert!(resolve(&g).is_ok());
    }

    #[test]
    fn a_first_hops_own_proxyjump_goes_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host inner\n  ProxyJump outer:2201\nHost loop\n  ProxyJump loop\n",
        )
        .unwrap();
        let g = Given {
            host: "vm".into(),
            user: Some("u".into()),
            proxy_jump: Some(vec!["a@inner".into()]),
            config_file: Some(cfg.clone()),
            ..Given::default()
        };
        let s = resolve(&g).unwrap();
        let hops: Vec<String> = s.jumps.iter().map(|j| j.describe()).collect();
        assert_eq!(hops.len(), 2, "{hops:?}");
        assert!(
            hops[0].ends_with("@outer:2201") && hops[1] == "a@inner:22",
            "{hops:?}"
        );
        let g = Given {
            proxy_jump: Some(vec!["loop".into()]),
            ..g
        };
        let e = resolve(&g).unwrap_err();
        assert!(e.contains("loop"), "{e}");
    }
}
