//! Database URLs: checking one names a database this engine can use, and
//! masking its password wherever it is shown.

/// Checks that `url` is a database URL this engine can use, naming the problem if not.
pub fn check_db_url(url: &str) -> Result<(), String> {
    let masked = mask_url(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "malformed database URL {masked:?}: expected mysql://... or sqlite://..."
        ));
    };
    match scheme {
        "mysql" | "mariadb" => {
            let path = rest.split(['?', '#']).next().unwrap_or_default();
            match path.split_once('/') {
                Some((host, db)) if !host.is_empty() && !db.is_empty() && !db.contains('/') => {
                    Ok(())
                }
                _ => Err(format!(
                    "malformed database URL {masked:?}: expected mysql://user:password@host:port/database"
                )),
            }
        }
        "sqlite" if !rest.is_empty() => Ok(()),
        _ => Err(format!(
            "unsupported database URL {masked:?}: expected mysql://... or sqlite://path"
        )),
    }
}

/// Most replicas one unit may name.
pub const MAX_REPLICAS: usize = 4;

/// Checks a unit's replica list: usable URLs, each once, none the primary,
/// at most [`MAX_REPLICAS`], and only beside a MariaDB primary.
pub fn check_replica_urls(primary: &str, replicas: &[String]) -> Result<(), String> {
    if replicas.len() > MAX_REPLICAS {
        return Err(format!(
            "a unit has at most {MAX_REPLICAS} replicas, not {}",
            replicas.len()
        ));
    }
    if !replicas.is_empty() && primary.starts_with("sqlite:") {
        return Err("an embedded SQLite unit has no replicas".into());
    }
    for (i, url) in replicas.iter().enumerate() {
        check_db_url(url)?;
        if url.starts_with("sqlite:") {
            return Err(format!(
                "replica {:?} is an SQLite file: replicas are MariaDB servers",
                mask_url(url)
            ));
        }
        if same_server(url, primary) {
            return Err(format!(
                "replica {:?} is the primary's server",
                mask_url(url)
            ));
        }
        if replicas[..i].iter().any(|other| same_server(other, url)) {
            return Err(format!("replica {:?} names a server twice", mask_url(url)));
        }
    }
    Ok(())
}

/// Deserializes one URL or a list of them (`replica_url = "..."` or
/// `replica_urls = [...]`; `null` is none).
pub fn one_or_many<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(
        match <Option<OneOrMany> as serde::Deserialize>::deserialize(d)? {
            None => Vec::new(),
            Some(OneOrMany::One(url)) => vec![url],
            Some(OneOrMany::Many(urls)) => urls,
        },
    )
}

/// The host and port a MariaDB URL names (`mysql://user:pw@host:port/db`;
/// port 3306 when absent).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = port.map_or(Some(3306), |p| p.parse().ok())?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// Whether two URLs name the same server (host and port), whatever the
/// user, password or database.
pub fn same_server(a: &str, b: &str) -> bool {
    a == b || matches!((host_port(a), host_port(b)), (Some(x), Some(y)) if x == y)
}

/// URLs masked, for `Debug` output.
pub fn mask_urls(urls: &[String]) -> Vec<String> {
    urls.iter().map(|u| mask_url(u)).collect()
}

/// `url` with any password replaced by `***`, safe to log and to show
/// operators. The user part ends at the last `@` (a password may hold `/`
/// or `@`); a URL without `://` whose user part cannot be told apart is
/// masked up to its `@`. Masking too much is safe.
pub fn mask_url(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let Some(start) = url.find("://").map(|i| i + 3).filter(|&s| s <= at) else {
        return format!("***{}", &url[at..]);
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_host_and_port() {
        let hp = |u| host_port(u).map(|(h, p)| format!("{h} {p}"));
        assert_eq!(
            hp("mysql://root:p@ss@127.0.0.1:3307/u1").as_deref(),
            Some("127.0.0.1 3307")
        );
        assert_eq!(
            hp("mysql://db.example/u1").as_deref(),
            Some("db.example 3306")
        );
        assert_eq!(hp("mysql://u@[::1]:3310/u1").as_deref(), Some("::1 3310"));
        assert_eq!(hp("mysql://u@h:x/u1"), None);
        assert_eq!(hp("mysql:///u1"), None);
        assert!(same_server("mysql://a:x@h:1/d", "mysql://b:y@h:1/e"));
        assert!(!same_server("mysql://a@h:1/d", "mysql://a@h:2/d"));
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("mysql://root:secret@127.0.0.1:3306/unit_3"),
            "mysql://root:***@127.0.0.1:3306/unit_3"
        );
        assert_eq!(mask_url("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(mask_url("sqlite://data/u1.db"), "sqlite://data/u1.db");
        // A password with `/` or `@` in it, and a malformed URL.
        assert_eq!(mask_url("mysql://u:pa/ss@h/db"), "mysql://u:***@h/db");
        assert_eq!(mask_url("mysql://u:p@ss@h/db"), "mysql://u:***@h/db");
        assert_eq!(mask_url("mysql:/root:pw@h/db"), "***@h/db");
        assert_eq!(mask_url("root:pw@h/db"), "***@h/db");
        for url in [
            "mysql://u:pa/ss@h/db",
            "mysql:/root:pw@h/db",
            "mysql//root:pw@h",
        ] {
            let e = check_db_url(url).map_or_else(|e| e, |()| String::new());
            assert!(!e.contains("pw") && !e.contains("pa/ss"), "{e}");
        }
    }
}
