//! A tiny XML writer whose output is already in exclusive canonical form.
//!
//! The IdP only ever signs XML it generated itself from fixed templates, so instead of
//! canonicalising arbitrary documents we make every byte we emit canonical
//! (exc-c14n without comments, <https://www.w3.org/TR/xml-exc-c14n/>):
//! no XML declaration, no whitespace between elements, start/end tag pairs instead of
//! self-closing tags, namespace declarations first (sorted by prefix, default first),
//! then attributes sorted by name, and the c14n escaping rules for text and attributes.
//! Callers must declare a namespace only on the outermost element that uses it, which
//! is what exc-c14n would render; the tests check the result against libxml2.

use chrono::{DateTime, Utc};
use roxmltree::{Node, NodeId};

use super::SamlError;

/// Builder for canonical XML; element nesting is balanced by construction (closures).
#[derive(Debug, Default)]
pub struct XmlWriter {
    out: String,
}

impl XmlWriter {
    /// Creates an empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `<name attrs>`, the children written by `body`, then `</name>`.
    ///
    /// `attrs` may mix namespace declarations (`xmlns`, `xmlns:p`) and unqualified
    /// attributes in any order; they are sorted here as exc-c14n requires.
    pub fn element<F>(
        &mut self,
        name: &'static str,
        attrs: &[(&str, &str)],
        body: F,
    ) -> Result<(), SamlError>
    where
        F: FnOnce(&mut Self) -> Result<(), SamlError>,
    {
        let mut sorted = attrs.to_vec();
        // Namespace nodes sort before attributes; among themselves by prefix ("" first).
        sorted.sort_by_key(|(key, _)| match key.strip_prefix("xmlns") {
            Some(prefix) => (0, prefix.trim_start_matches(':')),
            None => (1, *key),
        });
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in sorted {
            // Sorting by plain name is only canonical for unqualified attributes.
            if !key.starts_with("xmlns") && key.contains(':') {
                return Err(SamlError::Invalid {
                    field: "XML attribute",
                    reason: format!(
                        "<{name}> has the qualified attribute {key}, which this writer cannot order canonically"
                    ),
                });
            }
            check_chars(value, name)?;
            self.out.push(' ');
            self.out.push_str(key);
            self.out.push_str("=\"");
            escape_attr(value, &mut self.out);
            self.out.push('"');
        }
        self.out.push('>');
        body(self)?;
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        Ok(())
    }

    /// Writes an element whose only content is `text` (which may be empty).
    pub fn leaf(
        &mut self,
        name: &'static str,
        attrs: &[(&str, &str)],
        text: &str,
    ) -> Result<(), SamlError> {
        self.element(name, attrs, |w| w.text(name, text))
    }

    /// Writes escaped character data; `context` names the element for error messages.
    fn text(&mut self, context: &str, text: &str) -> Result<(), SamlError> {
        check_chars(text, context)?;
        escape_text(text, &mut self.out);
        Ok(())
    }

    /// Appends a fragment that is already canonical XML (e.g. a signed assertion).
    pub(crate) fn raw(&mut self, canonical: &str) {
        self.out.push_str(canonical);
    }

    /// Current byte length of the output, used to mark where a signature goes.
    pub fn offset(&self) -> usize {
        self.out.len()
    }

    /// Returns the XML written so far.
    pub fn into_string(self) -> String {
        self.out
    }
}

fn escape_text(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_attr(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// Refuses characters XML 1.0 cannot represent, so no input can make us sign broken XML.
fn check_chars(value: &str, context: &str) -> Result<(), SamlError> {
    let bad = value.chars().find(|&c| {
        matches!(c, '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}')
    });
    match bad {
        None => Ok(()),
        Some(c) => Err(SamlError::Invalid {
            field: "XML value",
            reason: format!(
                "a value in <{context}> contains U+{:04X}, which XML 1.0 does not allow",
                u32::from(c)
            ),
        }),
    }
}

/// A namespace declaration as rendered: prefix (`None` for the default) and URI.
type NsDecl<'a> = (Option<&'a str>, &'a str);

/// Exclusive canonical form (exc-c14n without comments) of a parsed element and everything
/// inside it except the subtree `omit` (an enveloped `ds:Signature`), for checking signatures
/// on messages we receive.
///
/// It writes with the same escaping as [`XmlWriter`], so what we sign and what we verify are
/// canonicalised by one implementation. The namespace rule is exc-c14n §3
/// (<https://www.w3.org/TR/xml-exc-c14n/#sec-Specification>): an element renders a namespace
/// it visibly utilises (its own prefix or one of its attributes') unless its nearest output
/// ancestor already rendered the same declaration; attributes sort by (namespace URI, local
/// name). The traversal is iterative, so deeply nested input cannot exhaust the stack.
pub fn exc_c14n(node: Node<'_, '_>, omit: Option<NodeId>) -> Result<String, SamlError> {
    let input = node.document().input_text();
    let omit_range = omit
        .and_then(|id| node.document().get_node(id))
        .map(|n| n.range());
    let mut out = String::new();
    // Open elements: (node ID, qualified name, namespace declarations in scope of the output).
    let mut open: Vec<(NodeId, &str, Vec<NsDecl<'_>>)> = Vec::new();
    for n in node.descendants() {
        if let Some(range) = &omit_range {
            if n.range().start >= range.start && n.range().start < range.end {
                continue;
            }
        }
        let parent = n.parent().map(|p| p.id());
        while let Some((id, name, _)) = open.last() {
            if Some(*id) == parent {
                break;
            }
            close_tag(name, &mut out);
            open.pop();
        }
        if n.is_element() {
            let inherited = open.last().map(|(_, _, ns)| ns.clone()).unwrap_or_default();
            let (name, scope) = open_tag(n, input, inherited, &mut out)?;
            open.push((n.id(), name, scope));
        } else if n.is_text() {
            escape_text(n.text().unwrap_or_default(), &mut out);
        } else if let Some(pi) = n.pi() {
            out.push_str("<?");
            out.push_str(pi.target);
            if let Some(value) = pi.value {
                out.push(' ');
                out.push_str(value);
            }
            out.push_str("?>");
        }
        // Comments are left out: the "without comments" variant.
    }
    while let Some((_, name, _)) = open.pop() {
        close_tag(name, &mut out);
    }
    Ok(out)
}

fn close_tag(name: &str, out: &mut String) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// The prefix of a qualified name, `None` when it has none.
fn prefix_of(qname: &str) -> Option<&str> {
    qname.split_once(':').map(|(p, _)| p)
}

/// Writes the start tag of `n`; returns its qualified name and the namespaces now in output scope.
fn open_tag<'a>(
    n: Node<'a, '_>,
    input: &'a str,
    mut scope: Vec<NsDecl<'a>>,
    out: &mut String,
) -> Result<(&'a str, Vec<NsDecl<'a>>), SamlError> {
    // roxmltree keeps no element prefix, but the source text does: the name after '<'.
    let tag = input.get(n.range().start + 1..).unwrap_or_default();
    let end = tag
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
        .unwrap_or(tag.len());
    let name = tag.get(..end).unwrap_or_default();
    let mut attrs: Vec<(&str, &str, &str, &str)> = n
        .attributes()
        .map(|a| {
            let qname = input.get(a.range_qname()).unwrap_or_else(|| a.name());
            (
                a.namespace().unwrap_or_default(),
                a.name(),
                qname,
                a.value(),
            )
        })
        .collect();
    attrs.sort_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));

    // Visibly utilised prefixes: the element's own (or the default namespace) and its
    // attributes'; unprefixed attributes are in no namespace and utilise nothing.
    let mut used: Vec<Option<&str>> = vec![prefix_of(name)];
    used.extend(attrs.iter().filter_map(|a| prefix_of(a.2)).map(Some));
    used.sort();
    used.dedup();
    let mut decls: Vec<NsDecl<'a>> = Vec::new();
    for prefix in used {
        if prefix == Some("xml") {
            continue; // the xml namespace is never declared (c14n §2.4)
        }
        let uri = n.lookup_namespace_uri(prefix).unwrap_or_default();
        let rendered = scope.iter().find(|(p, _)| *p == prefix).map(|(_, u)| *u);
        let needed = match rendered {
            Some(u) => u != uri,
            // An absent default needs no xmlns="" unless an output ancestor set one.
            None => !uri.is_empty(),
        };
        if needed {
            if uri.is_empty() && prefix.is_some() {
                return Err(SamlError::Invalid {
                    field: "XML namespace",
                    reason: format!("the prefix {prefix:?} is not declared"),
                });
            }
            decls.push((prefix, uri));
        }
    }
    out.push('<');
    out.push_str(name);
    for (prefix, uri) in &decls {
        match prefix {
            None => out.push_str(" xmlns=\""),
            Some(p) => {
                out.push_str(" xmlns:");
                out.push_str(p);
                out.push_str("=\"");
            }
        }
        escape_attr(uri, out);
        out.push('"');
        scope.retain(|(p, _)| p != prefix);
        scope.push((*prefix, uri));
    }
    for (_, _, qname, value) in attrs {
        out.push(' ');
        out.push_str(qname);
        out.push_str("=\"");
        escape_attr(value, out);
        out.push('"');
    }
    out.push('>');
    Ok((name, scope))
}

/// Formats an instant as xs:dateTime in UTC with milliseconds, e.g. `2024-03-12T14:00:18.450Z`.
pub fn xs_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(f: impl FnOnce(&mut XmlWriter) -> Result<(), SamlError>) -> Result<String, SamlError> {
        let mut w = XmlWriter::new();
        f(&mut w)?;
        Ok(w.into_string())
    }

    #[test]
    fn sorts_namespaces_then_attributes_and_never_self_closes() {
        let xml = write(|w| {
            w.element(
                "p:a",
                &[
                    ("z", "1"),
                    ("xmlns:p", "urn:p"),
                    ("b", "2"),
                    ("xmlns", "urn:d"),
                ],
                |w| w.leaf("p:e", &[], ""),
            )
        })
        .unwrap();
        assert_eq!(
            xml,
            r#"<p:a xmlns="urn:d" xmlns:p="urn:p" b="2" z="1"><p:e></p:e></p:a>"#
        );
    }

    #[test]
    fn escapes_text_and_attributes_per_c14n() {
        let xml = write(|w| w.leaf("a", &[("v", "&<>\"'\t\n\r")], "&<>\"'\t\n\r]]>")).unwrap();
        assert_eq!(
            xml,
            "<a v=\"&amp;&lt;>&quot;'&#x9;&#xA;&#xD;\">&amp;&lt;&gt;\"'\t\n&#xD;]]&gt;</a>"
        );
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(doc.root_element().attribute("v"), Some("&<>\"'\t\n\r"));
        assert_eq!(doc.root_element().text(), Some("&<>\"'\t\n\r]]>"));
    }

    #[test]
    fn refuses_qualified_attributes_in_release_builds_too() {
        let err = write(|w| w.leaf("t", &[("x:a", "1")], "")).unwrap_err();
        assert!(err.to_string().contains("x:a"), "{err}");
        assert!(write(|w| w.leaf("t", &[("xmlns:x", "urn:x")], "")).is_ok());
    }

    #[test]
    fn rejects_control_characters_in_text_and_attributes() {
        for bad in ["a\u{1}b", "\u{0}", "x\u{1B}", "\u{FFFF}"] {
            let err = write(|w| w.leaf("t", &[], bad)).unwrap_err();
            assert!(err.to_string().contains("<t>"), "{err}");
            assert!(write(|w| w.leaf("t", &[("a", bad)], "")).is_err());
        }
        assert!(write(|w| w.leaf("t", &[("a", "tab\tok")], "é\u{10000}")).is_ok());
    }

    #[test]
    fn formats_milliseconds_utc() {
        let t = DateTime::parse_from_rfc3339("2024-03-12T15:00:18.45+01:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(xs_datetime(t), "2024-03-12T14:00:18.450Z");
    }
}
