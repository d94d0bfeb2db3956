//! The employee-facing pages in the employee's language: the message catalogues
//! (`locales/<lang>/*.ftl`, Fluent, built into the binary), the language of a request (its
//! `Accept-Language`, English when nothing matches), and the organisation's branding those
//! pages show.
//!
//! A request's [`Ui`] (language and branding) is put in scope by [`scope`] for the whole
//! request, so pages rendered far from the handler (an [`crate::web::AppError`] turned into
//! its page) speak the same language as the page the handler renders.

mod messages;

pub use messages::{attribute_label, binding_state, policy_rules, refusal_texts, Msg};

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use fluent_templates::fluent_bundle::FluentValue;
use fluent_templates::{LanguageIdentifier, Loader};

use crate::branding::Brand;
use crate::server::AppState;

fluent_templates::static_loader! {
    static LOCALES = {
        locales: "./locales",
        fallback_language: "en",
        // The pages are HTML: Unicode isolation marks around arguments would show in
        // copied text and break tests that look for a name.
        customise: |bundle| bundle.set_use_isolating(false),
    };
}

/// A language the employee pages are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    English,
    German,
}

impl Lang {
    /// Every language with a complete catalogue.
    pub const ALL: [Lang; 2] = [Lang::English, Lang::German];

    /// The BCP 47 tag, as in `<html lang>` and the `locales/` folder.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::English => "en",
            Lang::German => "de",
        }
    }

    fn id(self) -> LanguageIdentifier {
        match self {
            Lang::English => fluent_templates::langid!("en"),
            Lang::German => fluent_templates::langid!("de"),
        }
    }

    /// The language of an `Accept-Language` header: the first (by q-value) whose primary
    /// subtag idbridge has, English when none does (or the header is missing).
    pub fn negotiate(accept_language: Option<&str>) -> Lang {
        let Some(header) = accept_language else {
            return Lang::English;
        };
        accept_language::parse_with_quality(header)
            .into_iter()
            // `q=0` means "not this one" (RFC 9110 §12.4.2).
            .filter(|(_, q)| *q > 0.0)
            .find_map(|(tag, _)| {
                let primary = tag.split('-').next().unwrap_or_default();
                Lang::ALL
                    .into_iter()
                    .find(|lang| lang.tag().eq_ignore_ascii_case(primary))
            })
            .unwrap_or_default()
    }
}

/// A value put into a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Text(String),
    /// A count: chooses the plural form (`[one]`, `*[other]`).
    Number(i64),
}

/// Looks up `key` in `lang` with `args`.
pub fn text(lang: Lang, key: &str, args: &[(&'static str, Arg)]) -> String {
    let args: HashMap<Cow<'static, str>, FluentValue> = args
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Arg::Text(text) => FluentValue::from(text.clone()),
                Arg::Number(n) => FluentValue::from(*n),
            };
            (Cow::Borrowed(*name), value)
        })
        .collect();
    LOCALES.lookup_complete(&lang.id(), key, Some(&args))
}

/// What an employee page needs beyond its own fields: the language and the branding.
#[derive(Debug, Clone, Default)]
pub struct Ui {
    pub lang: Lang,
    pub brand: Arc<Brand>,
}

tokio::task_local! {
    static CURRENT: Ui;
}

impl Ui {
    /// The language and branding of the request being answered (English and the branding
    /// read last outside of a request).
    pub fn current() -> Ui {
        CURRENT.try_with(Ui::clone).unwrap_or_default()
    }

    /// The `lang` attribute of the page.
    pub fn lang(&self) -> &'static str {
        self.lang.tag()
    }

    /// The message `key`.
    pub fn t(&self, key: &str) -> String {
        text(self.lang, key, &[])
    }

    /// The message `key` with one argument.
    pub fn t1(&self, key: &str, name: &'static str, value: impl std::fmt::Display) -> String {
        text(self.lang, key, &[(name, Arg::Text(value.to_string()))])
    }

    /// The message `key` with two arguments.
    pub fn t2(
        &self,
        key: &str,
        first: &'static str,
        first_value: impl std::fmt::Display,
        second: &'static str,
        second_value: impl std::fmt::Display,
    ) -> String {
        text(
            self.lang,
            key,
            &[
                (first, Arg::Text(first_value.to_string())),
                (second, Arg::Text(second_value.to_string())),
            ],
        )
    }

    /// A message chosen by code (an error, a rule) in this page's language.
    pub fn msg(&self, msg: &Msg) -> String {
        msg.in_lang(self.lang)
    }
}

/// Puts the request's [`Ui`] in scope for everything that answers it.
pub async fn scope(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let lang = Lang::negotiate(
        request
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    );
    let ui = Ui {
        lang,
        brand: state.branding.current(),
    };
    let mut response = CURRENT.scope(ui, next.run(request)).await;
    // Caches must not give a German page to an English browser.
    response.headers_mut().append(
        header::VARY,
        header::HeaderValue::from_static("accept-language"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (key, source text) of each message; a message's continuation lines are indented.
    fn messages(ftl: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in ftl.lines() {
            if line.starts_with(|c: char| c.is_ascii_lowercase()) {
                if let Some((key, value)) = line.split_once(" =") {
                    out.push((key.trim().to_string(), value.trim().to_string()));
                }
            } else if line.starts_with(' ') {
                if let Some((_, value)) = out.last_mut() {
                    value.push('\n');
                    value.push_str(line.trim());
                }
            }
        }
        out
    }

    fn catalogue(lang: Lang) -> Vec<(String, String)> {
        let files: &[&str] = match lang {
            Lang::English => &[
                include_str!("../../locales/en/pages.ftl"),
                include_str!("../../locales/en/messages.ftl"),
            ],
            Lang::German => &[
                include_str!("../../locales/de/pages.ftl"),
                include_str!("../../locales/de/messages.ftl"),
            ],
        };
        files.iter().flat_map(|f| messages(f)).collect()
    }

    #[test]
    fn every_key_is_in_every_catalogue() {
        let english: Vec<String> = catalogue(Lang::English)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let german: Vec<String> = catalogue(Lang::German)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let missing_de: Vec<&String> = english.iter().filter(|k| !german.contains(k)).collect();
        let missing_en: Vec<&String> = german.iter().filter(|k| !english.contains(k)).collect();
        assert!(missing_de.is_empty(), "missing in de: {missing_de:?}");
        assert!(missing_en.is_empty(), "missing in en: {missing_en:?}");
        assert!(english.len() > 100, "{} keys", english.len());
        let mut sorted = english.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), english.len(), "a key is defined twice");
    }

    #[test]
    fn every_key_used_in_code_and_templates_exists() {
        let english: Vec<String> = catalogue(Lang::English)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let prefixes: Vec<&str> = english.iter().filter_map(|k| k.split('-').next()).collect();
        let mut used = Vec::new();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in ["templates/sso", "templates/portal", "templates/mfa"] {
            collect_used(&root.join(dir), &prefixes, &mut used);
        }
        for file in ["templates/base.html", "templates/message.html"] {
            let source = std::fs::read_to_string(root.join(file)).unwrap();
            assert!(source.contains("ui."), "{file} uses no catalogue");
        }
        for dir in ["src/sso", "src/portal", "src/mfa", "src/web", "src/i18n"] {
            collect_used(&root.join(dir), &prefixes, &mut used);
        }
        assert!(used.len() > 150, "{} uses", used.len());
        let unknown: Vec<&String> = used.iter().filter(|k| !english.contains(k)).collect();
        assert!(unknown.is_empty(), "keys without a message: {unknown:?}");
    }

    fn is_key(text: &str) -> bool {
        text.contains('-')
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    /// Keys in templates' `t("…")`, `t1("…"`, `t2("…"` calls, and every key-like string
    /// literal (`"err-…"`) of the Rust sources.
    fn collect_used(dir: &std::path::Path, prefixes: &[&str], used: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                collect_used(&path, prefixes, used);
                continue;
            }
            let Ok(source) = std::fs::read_to_string(&path) else {
                continue;
            };
            let rust = path.extension().is_some_and(|e| e == "rs");
            let pieces: Vec<&str> = source.split('"').collect();
            for (i, piece) in pieces.iter().enumerate() {
                // Odd pieces are inside quotes (near enough for these files); in templates
                // only the first argument of a lookup is a key (others are ids, classes).
                let lookup = !rust
                    && i > 0
                    && ["ui.t(", "ui.t1(", "ui.t2("]
                        .iter()
                        .any(|call| pieces[i - 1].ends_with(call));
                if i % 2 == 1
                    && is_key(piece)
                    && (lookup
                        || rust && prefixes.contains(&piece.split('-').next().unwrap_or_default()))
                {
                    used.push(piece.to_string());
                }
            }
        }
    }

    #[test]
    fn german_differs_where_english_has_words() {
        let english = catalogue(Lang::English);
        let german = catalogue(Lang::German);
        // Names and product words are the same in both languages; anything longer is text.
        let same: Vec<&String> = english
            .iter()
            .zip(german.iter())
            .filter(|((_, en), (_, de))| en == de && en.split_whitespace().count() > 2)
            .map(|((k, _), _)| k)
            .collect();
        assert!(same.is_empty(), "not translated: {same:?}");
    }

    #[test]
    fn accept_language_picks_by_quality_and_falls_back_to_english() {
        assert_eq!(Lang::negotiate(None), Lang::English);
        assert_eq!(Lang::negotiate(Some("de")), Lang::German);
        assert_eq!(Lang::negotiate(Some("de-AT,de;q=0.9")), Lang::German);
        assert_eq!(
            Lang::negotiate(Some("fr-FR,fr;q=0.9,de;q=0.5,en;q=0.4")),
            Lang::German
        );
        assert_eq!(Lang::negotiate(Some("en;q=0.5,de;q=0.8")), Lang::German);
        assert_eq!(Lang::negotiate(Some("de;q=0.5,en;q=0.8")), Lang::English);
        assert_eq!(Lang::negotiate(Some("de;q=0,fr")), Lang::English);
        assert_eq!(Lang::negotiate(Some("fr, ja")), Lang::English);
        assert_eq!(Lang::negotiate(Some("garbage;;;")), Lang::English);
        assert_eq!(Lang::negotiate(Some("*")), Lang::English);
    }

    #[test]
    fn arguments_are_filled_in() {
        let ui = Ui {
            lang: Lang::German,
            ..Ui::default()
        };
        assert!(ui
            .t1("sso-login-heading", "sp", "Contoso Mail")
            .contains("Contoso Mail"));
        assert_eq!(
            ui.t1("sso-login-heading", "sp", "Contoso Mail"),
            "Melden Sie sich an, um zu Contoso Mail zu gelangen"
        );
        assert_eq!(
            Msg::count("err-locked", "minutes", 1).in_lang(Lang::German),
            "Zu viele Anmeldeversuche. Versuchen Sie es in 1 Minute erneut."
        );
        assert_eq!(
            Msg::count("err-locked", "minutes", 5).in_lang(Lang::English),
            "Too many sign-in attempts. Try again in 5 minutes."
        );
    }
}
