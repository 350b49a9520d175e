//! Tokens from a file (`serve --token-file PATH`), for deployments that keep credentials in
//! configuration (a mounted secret, a config repository) rather than in the catalog database.
//!
//! One token per line, `USER ID SALT HASH`, separated by blanks: the user it authenticates,
//! the token id (the 12 hex digits after `ut_`), and the hex salt and `sha256(salt || secret)`
//! exactly as the database keeps them, so the file holds no secret. Blank lines and lines
//! starting with `#` are ignored. `unitable token file-add USER --token-file PATH` generates a
//! token, appends its line and prints the token once.
//!
//! The file is re-read with the rest of the policy (every reload interval and on SIGHUP):
//! deleting a line revokes that token. A file that does not parse keeps the previous policy
//! (the reload fails with the line's number); at start-up it stops the server.

use std::collections::HashSet;
use std::path::Path;

use super::policy::TokenRecord;
use super::token::StoredSecret;

/// The description a file token shows in `token list`.
pub(crate) const DESCRIPTION: &str = "from --token-file";

/// The line that records `stored` for `user`.
pub(crate) fn line(user: &str, stored: &StoredSecret) -> String {
    format!("{user} {} {} {}\n", stored.id, stored.salt, stored.hash)
}

/// Reads the tokens of the file at `path`.
pub(crate) fn read(path: &Path) -> Result<Vec<TokenRecord>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("token file {}: {e}", path.display()))
}

/// Parses the text of a token file.
pub(crate) fn parse(text: &str) -> Result<Vec<TokenRecord>, String> {
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = content.split_whitespace().collect();
        let [user, id, salt, hash] = fields[..] else {
            return Err(format!(
                "line {n} has {} fields; want USER ID SALT HASH (see `unitable token file-add`)",
                fields.len()
            ));
        };
        let hex = |field: &str, value: &str, digits: usize| {
            if value.len() == digits && value.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(value.to_ascii_lowercase())
            } else {
                Err(format!("line {n}: {field} must be {digits} hex digits"))
            }
        };
        if user.chars().any(char::is_control) || user.len() > 255 {
            return Err(format!(
                "line {n}: the user must be at most 255 printable characters"
            ));
        }
        let secret = StoredSecret {
            id: hex("the token id", id, 12)?,
            salt: hex("the salt", salt, 32)?,
            hash: hex("the hash", hash, 64)?,
        };
        if !ids.insert(secret.id.clone()) {
            return Err(format!("line {n}: token id {} appears twice", secret.id));
        }
        out.push(TokenRecord {
            secret,
            user: user.to_string(),
            description: DESCRIPTION.to_string(),
            created_ms: 0,
            revoked_ms: None,
            from_file: true,
        });
    }
    Ok(out)
}

/// Appends the line of `stored` for `user` to the file at `path`, creating it readable by its
/// owner only.
pub(crate) fn append(path: &Path, user: &str, stored: &StoredSecret) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(line(user, stored).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::token;
    use super::*;

    #[test]
    fn lines_round_trip_and_verify() {
        let new = token::generate().unwrap();
        let text = format!("# team tokens\n\n{}", line("ann", &new.stored));
        let records = parse(&text).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].user, "ann");
        assert!(records[0].from_file);
        let presented = token::parse(&new.token).unwrap();
        assert!(token::verify(&records[0].secret, &presented));
    }

    #[test]
    fn bad_lines_are_named() {
        let new = token::generate().unwrap();
        let good = line("ann", &new.stored);
        let cases = [
            (format!("{good}bob 12\n"), "line 2 has 2 fields"),
            (
                format!("{good}{}", good.replace("ann", "bob")),
                "line 2: token id",
            ),
            (
                format!(
                    "ann zz{} {} {}",
                    &new.stored.id[2..],
                    new.stored.salt,
                    new.stored.hash
                ),
                "line 1: the token id must be 12 hex digits",
            ),
            (
                format!("ann {} {} abc", new.stored.id, new.stored.salt),
                "line 1: the hash must be 64 hex digits",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }
}
