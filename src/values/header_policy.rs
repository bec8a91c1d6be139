//! A route's `headers.request` / `headers.response`: fields set (every
//! line replaced), added (appended) or removed (every line), with
//! placeholder values. Request fields are applied in the one rewrite of
//! the request, before the cache key and `Vary` read it; response fields
//! to every answer of the route (proxied, cached, and tollgate's own).

use crate::values::template::{Template, Values};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// Field edits on a request or response head. Pingora's heads are edited
/// through their own methods, which keep the spelling map HTTP/1 writes
/// from in step with the fields.
pub trait FieldEdit {
    /// Removes every line of `name`.
    fn remove_field(&mut self, name: &HeaderName);
    /// Replaces every line of `name` with `value`.
    fn insert_field(&mut self, name: HeaderName, value: HeaderValue);
    /// Adds a line.
    fn append_field(&mut self, name: HeaderName, value: HeaderValue);
}

impl FieldEdit for HeaderMap {
    fn remove_field(&mut self, name: &HeaderName) {
        self.remove(name);
    }
    fn insert_field(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
    fn append_field(&mut self, name: HeaderName, value: HeaderValue) {
        self.append(name, value);
    }
}

macro_rules! pingora_head {
    ($head:ty) => {
        impl FieldEdit for $head {
            fn remove_field(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            // Both only fail on an invalid name or value, which `check`
            // and `HeaderValue` already ruled out.
            fn insert_field(&mut self, name: HeaderName, value: HeaderValue) {
                let _ = self.insert_header(name, value);
            }
            fn append_field(&mut self, name: HeaderName, value: HeaderValue) {
                let _ = self.append_header(name, value);
            }
        }
    };
}
pingora_head!(RequestHeader);
pingora_head!(ResponseHeader);

/// One direction's field changes, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderPolicy {
    /// Replace every line of the field.
    pub set: Vec<(HeaderName, Template)>,
    /// Append a line.
    pub add: Vec<(HeaderName, Template)>,
    /// Remove every line.
    pub remove: Vec<HeaderName>,
}

impl HeaderPolicy {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the changes: removals first, then sets (a field whose value
    /// has no value in this request — an anonymous `{tenant}` — is
    /// removed, never left as the client sent it), then additions.
    pub fn apply(&self, fields: &mut impl FieldEdit, values: &Values<'_>) {
        for name in &self.remove {
            fields.remove_field(name);
        }
        for (name, template) in &self.set {
            match value_of(template, values) {
                Some(value) => fields.insert_field(name.clone(), value),
                None => fields.remove_field(name),
            }
        }
        for (name, template) in &self.add {
            if let Some(value) = value_of(template, values) {
                fields.append_field(name.clone(), value);
            }
        }
    }
}

fn value_of(template: &Template, values: &Values<'_>) -> Option<HeaderValue> {
    HeaderValue::from_str(&template.render(values)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::template::HEADER_PLACEHOLDERS;

    #[test]
    fn set_replaces_every_line_add_appends_remove_removes_all() {
        let t = |s: &str| Template::parse(s, HEADER_PLACEHOLDERS).expect("template");
        let policy = HeaderPolicy {
            set: vec![
                (HeaderName::from_static("x-env"), t("prod")),
                (HeaderName::from_static("x-tenant-copy"), t("{tenant}")),
            ],
            add: vec![(HeaderName::from_static("x-via-gateway"), t("tollgate"))],
            remove: vec![HeaderName::from_static("x-debug")],
        };
        let mut fields = HeaderMap::new();
        fields.append("x-env", HeaderValue::from_static("dev"));
        fields.append("x-env", HeaderValue::from_static("qa"));
        fields.append("x-debug", HeaderValue::from_static("1"));
        fields.append("x-debug", HeaderValue::from_static("2"));
        fields.append("x-via-gateway", HeaderValue::from_static("edge"));
        fields.append("x-tenant-copy", HeaderValue::from_static("forged"));
        policy.apply(&mut fields, &Values::default());
        assert_eq!(
            fields.get_all("x-env").iter().collect::<Vec<_>>(),
            vec!["prod"]
        );
        assert!(fields.get("x-debug").is_none());
        assert_eq!(fields.get_all("x-via-gateway").iter().count(), 2);
        assert!(
            fields.get("x-tenant-copy").is_none(),
            "no tenant: the client's copy is gone"
        );
    }
}
