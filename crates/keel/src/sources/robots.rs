//! robots.txt per RFC 9309: the groups for Keel's product token (else `*`),
//! longest-match allow/disallow rules with `*` and `$`, and `Crawl-delay`
//! (not in the RFC, but widely honoured). The same path patterns filter a
//! source's `include`/`exclude`.

use std::time::Duration;

/// The product token Keel's rules are looked up by (its User-Agent is
/// `Keel/<version>`), matched case-insensitively.
pub const PRODUCT_TOKEN: &str = "keel";

/// RFC 9309 asks crawlers to parse at least 500 KiB.
pub const MAX_ROBOTS_BYTES: usize = 500 * 1024;

/// Longest crawl delay honoured; a slower one would stall a source forever.
const MAX_CRAWL_DELAY: Duration = Duration::from_secs(60);

/// What a host's robots.txt allows Keel.
#[derive(Debug, Clone, PartialEq)]
pub enum Robots {
    /// No robots.txt (4xx): everything is allowed.
    AllowAll,
    /// The file could not be had (5xx, unreachable): nothing is allowed.
    DisallowAll,
    Rules(Rules),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    rules: Vec<(bool, String)>,
    crawl_delay: Option<Duration>,
}

impl Robots {
    /// Whether `path` (path and query, as requested) may be fetched.
    pub fn allows(&self, path: &str) -> bool {
        match self {
            Robots::AllowAll => true,
            Robots::DisallowAll => false,
            Robots::Rules(rules) => rules.allows(path),
        }
    }

    pub fn crawl_delay(&self) -> Option<Duration> {
        match self {
            Robots::Rules(rules) => rules.crawl_delay,
            _ => None,
        }
    }
}

impl Rules {
    /// The rules of the groups for [`PRODUCT_TOKEN`], else of the `*` groups.
    pub fn parse(text: &str) -> Self {
        let mut ours = Rules::default();
        let mut anyone = Rules::default();
        let mut matched_ours = false;
        // The current group's user agents, and whether a rule has closed the
        // list (a user-agent line after rules starts a new group).
        let (mut for_us, mut for_anyone, mut in_rules) = (false, false, false);
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
            match key.as_str() {
                "user-agent" => {
                    if in_rules {
                        (for_us, for_anyone, in_rules) = (false, false, false);
                    }
                    let agent = value.to_ascii_lowercase();
                    if agent == PRODUCT_TOKEN {
                        for_us = true;
                        matched_ours = true;
                    }
                    for_anyone |= agent == "*";
                }
                "allow" | "disallow" | "crawl-delay" => {
                    in_rules = true;
                    for (wanted, rules) in [(for_us, &mut ours), (for_anyone, &mut anyone)] {
                        if !wanted {
                            continue;
                        }
                        if key == "crawl-delay" {
                            if let Ok(seconds) = value.parse::<f64>()
                                && seconds.is_finite()
                                && seconds >= 0.0
                            {
                                rules.crawl_delay = Some(Duration::from_secs_f64(
                                    seconds.min(MAX_CRAWL_DELAY.as_secs_f64()),
                                ));
                            }
                        } else if !value.is_empty() {
                            rules.rules.push((key == "allow", value.to_owned()));
                        }
                    }
                }
                _ => {}
            }
        }
        if matched_ours { ours } else { anyone }
    }

    fn allows(&self, path: &str) -> bool {
        if path == "/robots.txt" {
            return true;
        }
        // The longest matching rule wins; between equals, allow.
        let mut best: Option<(usize, bool)> = None;
        for (allow, pattern) in &self.rules {
            if matches(pattern, path) {
                let length = pattern.len();
                best = match best {
                    Some((l, a)) if l > length || (l == length && a) => Some((l, a)),
                    _ => Some((length, *allow)),
                };
            }
        }
        best.is_none_or(|(_, allow)| allow)
    }
}

/// Whether `path` matches a robots.txt path pattern: a prefix, where `*`
/// stands for any characters and a final `$` anchors the end.
pub fn matches(pattern: &str, path: &str) -> bool {
    let (pattern, anchored) = match pattern.strip_suffix('$') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = path;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(after) = rest.strip_prefix(part) else {
                return false;
            };
            rest = after;
        } else if i == parts.len() - 1 && anchored {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    !anchored || rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_prefixes_wildcards_and_anchors() {
        let cases = [
            ("/", "/anything", true, "the root prefixes every path"),
            ("/fish", "/fish.html", true, "a plain prefix"),
            ("/fish", "/Fish.html", false, "paths are case-sensitive"),
            ("/fish/", "/fish", false, "the slash is part of the prefix"),
            ("/*.php", "/index.php?x=1", true, "a wildcard in the middle"),
            ("/*.php$", "/index.php", true, "an anchored end"),
            (
                "/*.php$",
                "/index.php?x=1",
                false,
                "the anchor refuses more after it",
            ),
            (
                "/fish*$",
                "/fish/and/more",
                true,
                "a final wildcard before the anchor",
            ),
            ("/menu$", "/menu", true, "an exact path"),
            ("/menu$", "/menus", false, "an exact path, not a prefix"),
            ("/a*b*c", "/axxbyyc", true, "several wildcards"),
            ("/a*b*c", "/axxcyyb", false, "wildcards keep their order"),
        ];
        for (pattern, path, expected, reason) in cases {
            assert_eq!(
                matches(pattern, path),
                expected,
                "{pattern} on {path}: {reason}"
            );
        }
    }

    #[test]
    fn keels_own_group_wins_over_the_wildcard_group_and_the_longest_rule_wins() {
        let robots = Robots::Rules(Rules::parse(
            "# comment\nUser-agent: *\nDisallow: /\n\nUser-agent: Googlebot\nUser-agent: KEEL\n\
             Disallow: /private # not for bots\nAllow: /private/menu\nCrawl-delay: 2\n",
        ));
        assert!(robots.allows("/menu"), "the * group does not apply to Keel");
        assert!(!robots.allows("/private/notes"));
        assert!(robots.allows("/private/menu.html"), "the longer allow wins");
        assert!(robots.allows("/robots.txt"), "always allowed");
        assert_eq!(robots.crawl_delay(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn without_a_group_for_keel_the_wildcard_group_applies() {
        let rules = Rules::parse("User-agent: *\nDisallow: /admin\nAllow: /admin$\nDisallow:\n");
        let robots = Robots::Rules(rules);
        assert!(!robots.allows("/admin/users"));
        assert!(robots.allows("/admin"), "equal length: allow wins");
        assert!(robots.allows("/"), "an empty Disallow forbids nothing");
        assert_eq!(robots.crawl_delay(), None);
        assert!(!Robots::DisallowAll.allows("/"));
        assert!(Robots::AllowAll.allows("/x"));
    }
}
