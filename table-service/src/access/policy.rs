//! An immutable snapshot of tokens, grants and group membership, and how grants are evaluated.

use std::collections::{BTreeSet, HashMap};

use unitable_core::naming::TableName;

use super::token::{self, StoredSecret};
use super::{Grant, Grantee, Object, Privilege};

/// A token as the store keeps it.
#[derive(Debug, Clone)]
pub(crate) struct TokenRecord {
    pub(crate) secret: StoredSecret,
    pub(crate) user: String,
    pub(crate) description: String,
    pub(crate) created_ms: i64,
    pub(crate) revoked_ms: Option<i64>,
    /// Read from `--token-file` (revoked by deleting its line), not from the database.
    pub(crate) from_file: bool,
}

/// The access policy at one moment.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    pub(crate) tokens: HashMap<String, TokenRecord>,
    pub(crate) grants: Vec<Grant>,
    /// user -> groups.
    pub(crate) members: HashMap<String, BTreeSet<String>>,
}

impl Policy {
    /// The user a live token authenticates, if `text` is one.
    pub(crate) fn authenticate(&self, text: &str) -> Option<&str> {
        let presented = token::parse(text)?;
        let record = self.tokens.get(presented.id)?;
        if record.revoked_ms.is_some() || !token::verify(&record.secret, &presented) {
            return None;
        }
        Some(&record.user)
    }

    /// The groups `user` is in.
    pub(crate) fn groups_of(&self, user: &str) -> impl Iterator<Item = &str> {
        self.members
            .get(user)
            .into_iter()
            .flat_map(|g| g.iter().map(String::as_str))
    }

    /// Whether a grant is to `user` directly or to one of its groups.
    pub(crate) fn applies_to(&self, grant: &Grant, user: &str) -> bool {
        match &grant.grantee {
            Grantee::User(u) => u == user,
            Grantee::Group(g) => self.members.get(user).is_some_and(|gs| gs.contains(g)),
        }
    }

    /// Whether `user` holds `privilege` (or a larger one) on `table`.
    pub(crate) fn allows(&self, user: &str, privilege: Privilege, table: &TableName) -> bool {
        self.grants
            .iter()
            .any(|g| g.privilege >= privilege && g.object.covers(table) && self.applies_to(g, user))
    }

    /// Whether the token with id `id` exists and is not revoked.
    pub(crate) fn token_live(&self, id: &str) -> bool {
        self.tokens.get(id).is_some_and(|t| t.revoked_ms.is_none())
    }

    /// Whether `user` may grant and revoke on `object`: `admin` on it or on something that
    /// contains it (a table's namespace, ALL).
    pub(crate) fn administers(&self, user: &str, object: &Object) -> bool {
        self.grants.iter().any(|g| {
            g.privilege == Privilege::Admin
                && self.applies_to(g, user)
                && match (&g.object, object) {
                    (Object::All, _) => true,
                    (Object::Namespace(held), Object::Namespace(ns)) => held == ns,
                    (Object::Namespace(held), Object::Table(t)) => {
                        t.parse::<TableName>().is_ok_and(|t| t.namespace() == held)
                    }
                    (Object::Table(held), Object::Table(t)) => held == t,
                    _ => false,
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(privilege: Privilege, object: Object, grantee: Grantee) -> Grant {
        Grant {
            privilege,
            object,
            grantee,
        }
    }

    #[test]
    fn grants_cover_tables_namespaces_and_everything_through_groups() {
        let mut p = Policy::default();
        p.grants.push(grant(
            Privilege::Read,
            Object::Table("shop.orders".into()),
            Grantee::User("ann".into()),
        ));
        p.grants.push(grant(
            Privilege::Write,
            Object::Namespace("shop".into()),
            Grantee::Group("clerks".into()),
        ));
        p.grants.push(grant(
            Privilege::Admin,
            Object::All,
            Grantee::User("root".into()),
        ));
        p.members
            .entry("bob".into())
            .or_default()
            .insert("clerks".into());
        let orders: TableName = "shop.orders".parse().unwrap();
        let items: TableName = "shop.items".parse().unwrap();
        let hr: TableName = "hr.pay".parse().unwrap();
        assert!(p.allows("ann", Privilege::Read, &orders));
        assert!(!p.allows("ann", Privilege::Write, &orders));
        assert!(!p.allows("ann", Privilege::Read, &items));
        assert!(p.allows("bob", Privilege::Read, &items));
        assert!(p.allows("bob", Privilege::Write, &orders));
        assert!(!p.allows("bob", Privilege::Admin, &orders));
        assert!(!p.allows("bob", Privilege::Read, &hr));
        assert!(p.allows("root", Privilege::Admin, &hr));
        assert!(p.administers("root", &Object::All));
        assert!(!p.administers("bob", &Object::All));
    }
}
