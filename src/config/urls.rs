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
