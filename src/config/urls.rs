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

/// `url` with any password replaced by `***`, safe to log and to show operators.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]),
            None => url.to_string(),
        },
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
    }
}
