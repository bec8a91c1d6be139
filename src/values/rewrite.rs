//! A route's path rewrite: what the upstream's path is, given the path the
//! route matched. Applied after routing and hygiene, to the normalised
//! path, on the upstream's copy of the request only: the cache key, the
//! access log's path and purges keep the client's URL.

/// A validated rewrite (`check` made sure its output is a normal path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// `/billing/invoices` → `/invoices` for prefix `/billing/`: the
    /// prefix minus its final `/` is dropped.
    StripPrefix {
        /// Bytes dropped from the front of the path.
        drop: usize,
    },
    /// `/old/users` → `/v2/users` for prefix `/old/`.
    ReplacePrefix {
        /// The route prefix's length.
        prefix_len: usize,
        /// What takes its place.
        with: String,
    },
}

impl Rewrite {
    /// The upstream's path for a `path` the route matched (its prefix is
    /// known to be there, in some case when matched case-insensitively).
    pub fn apply(&self, path: &str) -> String {
        match self {
            Rewrite::StripPrefix { drop } => path.get(*drop..).unwrap_or("/").to_owned(),
            Rewrite::ReplacePrefix { prefix_len, with } => {
                let rest = path.get(*prefix_len..).unwrap_or("");
                let mut out = String::with_capacity(with.len() + rest.len());
                out.push_str(with);
                out.push_str(rest);
                out
            }
        }
    }

    /// Builds the rewrite for a route prefix, or says why its output could
    /// be a path that is not normal (`//`, a missing leading `/`).
    pub fn new(
        prefix: &str,
        strip_prefix: bool,
        replace_prefix: Option<&str>,
    ) -> Result<Option<Self>, String> {
        match (strip_prefix, replace_prefix) {
            (false, None) => Ok(None),
            (true, Some(_)) => Err("set strip_prefix or replace_prefix, not both".into()),
            (true, None) => {
                if prefix == "/" || !prefix.ends_with('/') {
                    return Err(format!(
                        "strip_prefix needs a path_prefix ending in '/' (and not \"/\"): {prefix:?} would leave paths without their leading '/'"
                    ));
                }
                Ok(Some(Rewrite::StripPrefix {
                    drop: prefix.len() - 1,
                }))
            }
            (false, Some(with)) => {
                if !with.starts_with('/') {
                    return Err(format!("replace_prefix {with:?} must start with '/'"));
                }
                if with.contains(['?', '#']) || with.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(format!(
                        "replace_prefix {with:?} may hold only a path (visible ASCII, no '?' or '#')"
                    ));
                }
                match crate::values::hygiene::normalise_path(with) {
                    Ok(normal) if normal == with => {}
                    Ok(normal) => {
                        return Err(format!(
                            "replace_prefix {with:?} is not a normal path (it would be sent as {normal:?})"
                        ))
                    }
                    Err(problem) => {
                        return Err(format!("replace_prefix {with:?}: {}", problem.message()))
                    }
                }
                if prefix.ends_with('/') != with.ends_with('/') {
                    return Err(format!(
                        "path_prefix {prefix:?} and replace_prefix {with:?} must both end in '/' or both not: otherwise paths become {:?}",
                        if with.ends_with('/') { "/new//rest" } else { "/newrest" }
                    ));
                }
                Ok(Some(Rewrite::ReplacePrefix {
                    prefix_len: prefix.len(),
                    with: with.to_owned(),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_keep_paths_normal() {
        let strip = Rewrite::new("/billing/", true, None)
            .expect("ok")
            .expect("some");
        assert_eq!(strip.apply("/billing/invoices"), "/invoices");
        assert_eq!(strip.apply("/billing/"), "/");
        let replace = Rewrite::new("/old/", false, Some("/v2/"))
            .expect("ok")
            .expect("some");
        assert_eq!(replace.apply("/old/users/7"), "/v2/users/7");
        let root = Rewrite::new("/old/", false, Some("/"))
            .expect("ok")
            .expect("some");
        assert_eq!(root.apply("/old/users"), "/users");
        assert!(Rewrite::new("/billing", true, None).is_err());
        assert!(Rewrite::new("/", true, None).is_err());
        assert!(Rewrite::new("/old/", false, Some("/v2")).is_err());
        assert!(Rewrite::new("/old", false, Some("/v2/")).is_err());
        assert!(Rewrite::new("/old/", false, Some("v2/")).is_err());
        assert!(Rewrite::new("/old/", false, Some("/a/../b/")).is_err());
        assert!(Rewrite::new("/old/", false, Some("/a//b/")).is_err());
        assert!(Rewrite::new("/old/", false, Some("/a?x/")).is_err());
        assert!(Rewrite::new("/old/", true, Some("/v2/")).is_err());
        assert_eq!(Rewrite::new("/old/", false, None), Ok(None));
    }
}
