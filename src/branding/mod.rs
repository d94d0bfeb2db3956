//! The organisation's branding of the employee pages (SAML sign-in, the portal): its name,
//! its logo (PNG or SVG) and an accent colour. Entered in the console or the API, stored in
//! the database and read again by every node within [`crate::certs::rollover::RELOAD_EVERY`].
//!
//! `http` serves the logo and the stylesheet that applies the colour (the pages' CSP allows
//! no inline style, so the colour is never written into a page).

pub mod http;

use std::sync::{Arc, RwLock};

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::events::{kind, Actor, NewEvent};
use crate::store::{BrandingRow, Store, StoreError};

/// The name shown until an admin enters the organisation's.
pub const DEFAULT_NAME: &str = "idbridge";
/// The accent colour of the pages until an admin chooses one.
pub const DEFAULT_ACCENT: &str = "#0b5cad";
/// The largest logo accepted: it is sent with every sign-in page, and as base64 in the API's
/// JSON it must stay under the request size limit (256 KiB).
pub const MAX_LOGO_BYTES: usize = 128 * 1024;
/// The longest organisation name, in characters (it sits in the page header).
pub const MAX_NAME_CHARS: usize = 80;

/// Why a branding change was refused; nothing is saved then.
#[derive(Debug, thiserror::Error)]
pub enum BrandingError {
    #[error("the organisation name is empty; type the name employees know, e.g. \"Contoso\"")]
    NameEmpty,
    #[error(
        "the organisation name is longer than {MAX_NAME_CHARS} characters; use a shorter form"
    )]
    NameTooLong,
    #[error("the accent colour {0:?} is not of the form #rrggbb (six hex digits, e.g. #0b5cad)")]
    Colour(String),
    #[error(
        "the logo is {0} bytes; the limit is {MAX_LOGO_BYTES} bytes (128 KiB): export it smaller"
    )]
    LogoTooLarge(usize),
    #[error("the logo is empty; choose a PNG or SVG file")]
    LogoEmpty,
    #[error("the logo is neither a PNG nor an SVG image; save it as PNG or SVG")]
    LogoType,
    #[error("the SVG logo cannot be read: {0}")]
    LogoUnreadable(String),
    #[error("the SVG logo contains {0}, which a logo must not have; export it as a plain image")]
    LogoActive(String),
    #[error("the logo is not valid base64: {0}")]
    LogoEncoding(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BrandingError {
    /// The field a refusal is about (the API's `field`, the console's input).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            BrandingError::NameEmpty | BrandingError::NameTooLong => Some("name"),
            BrandingError::Colour(_) => Some("accentColour"),
            BrandingError::Store(_) => None,
            _ => Some("logo"),
        }
    }
}

/// The image formats a logo may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoType {
    Png,
    Svg,
}

impl LogoType {
    /// The media type it is served and stored as.
    pub fn content_type(self) -> &'static str {
        match self {
            LogoType::Png => "image/png",
            LogoType::Svg => "image/svg+xml",
        }
    }

    fn parse(stored: &str) -> Option<Self> {
        match stored {
            "image/png" => Some(LogoType::Png),
            "image/svg+xml" => Some(LogoType::Svg),
            _ => None,
        }
    }
}

/// A checked logo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logo {
    pub kind: LogoType,
    pub bytes: Arc<Vec<u8>>,
}

impl Logo {
    /// Checks an uploaded file: PNG by its signature, or SVG (an `<svg>` document without
    /// scripts, event handlers or embedded HTML; it is also served under a CSP that runs
    /// nothing, so this is a second fence).
    pub fn check(bytes: Vec<u8>) -> Result<Logo, BrandingError> {
        if bytes.is_empty() {
            return Err(BrandingError::LogoEmpty);
        }
        if bytes.len() > MAX_LOGO_BYTES {
            return Err(BrandingError::LogoTooLarge(bytes.len()));
        }
        const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
        let kind = if bytes.starts_with(PNG) {
            LogoType::Png
        } else {
            check_svg(&bytes)?;
            LogoType::Svg
        };
        Ok(Logo {
            kind,
            bytes: Arc::new(bytes),
        })
    }
}

fn check_svg(bytes: &[u8]) -> Result<(), BrandingError> {
    let text = std::str::from_utf8(bytes).map_err(|_| BrandingError::LogoType)?;
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if !trimmed.starts_with('<') {
        return Err(BrandingError::LogoType);
    }
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(trimmed, options)
        .map_err(|e| BrandingError::LogoUnreadable(e.to_string()))?;
    if doc.root_element().tag_name().name() != "svg" {
        return Err(BrandingError::LogoType);
    }
    for node in doc.descendants().filter(|n| n.is_element()) {
        let name = node.tag_name().name();
        if name.eq_ignore_ascii_case("script") || name.eq_ignore_ascii_case("foreignObject") {
            return Err(BrandingError::LogoActive(format!("a <{name}> element")));
        }
        for attr in node.attributes() {
            let attr_name = attr.name();
            if attr_name
                .get(..2)
                .is_some_and(|p| p.eq_ignore_ascii_case("on"))
            {
                return Err(BrandingError::LogoActive(format!(
                    "an event handler ({attr_name})"
                )));
            }
            if attr
                .value()
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("javascript:")
            {
                return Err(BrandingError::LogoActive("a javascript: link".into()));
            }
        }
    }
    Ok(())
}

/// A checked `#rrggbb` colour, lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accent(String);

impl Accent {
    /// Checks a colour as typed (`#0B5CAD` and ` #0b5cad ` are accepted as `#0b5cad`).
    pub fn parse(text: &str) -> Result<Accent, BrandingError> {
        let text = text.trim();
        let ok = text.len() == 7
            && text.starts_with('#')
            && text.chars().skip(1).all(|c| c.is_ascii_hexdigit());
        if !ok {
            return Err(BrandingError::Colour(text.to_string()));
        }
        Ok(Accent(text.to_ascii_lowercase()))
    }

    /// `#rrggbb`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Black or white, whichever reads better on this colour (WCAG relative luminance).
    pub fn text_colour(&self) -> &'static str {
        let channel = |i: usize| {
            let v = self
                .0
                .get(i..i + 2)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .map(f64::from)
                .unwrap_or(0.0)
                / 255.0;
            if v <= 0.03928 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        let luminance = 0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5);
        // Contrast with white is (1.05)/(L+0.05), with black (L+0.05)/0.05: equal near 0.179.
        if luminance > 0.179 {
            "#000000"
        } else {
            "#ffffff"
        }
    }
}

impl Default for Accent {
    fn default() -> Self {
        Accent(DEFAULT_ACCENT.into())
    }
}

/// The branding in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brand {
    pub name: String,
    pub accent: Accent,
    pub logo: Option<Logo>,
    /// When it was last changed (Unix ms; 0: never), also the stylesheet's and logo's version.
    pub updated_at: i64,
    pub updated_by: Option<String>,
}

impl Default for Brand {
    fn default() -> Self {
        Brand {
            name: DEFAULT_NAME.into(),
            accent: Accent::default(),
            logo: None,
            updated_at: 0,
            updated_by: None,
        }
    }
}

impl Brand {
    fn from_row(row: BrandingRow) -> Result<Brand, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("branding: {what}"));
        let accent = Accent::parse(&row.accent_colour).map_err(|_| corrupt("accent colour"))?;
        let logo = match (row.logo_type.as_deref(), row.logo_base64.as_deref()) {
            (Some(kind), Some(data)) => Some(Logo {
                kind: LogoType::parse(kind).ok_or_else(|| corrupt("logo type"))?,
                bytes: Arc::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .map_err(|_| corrupt("logo"))?,
                ),
            }),
            _ => None,
        };
        Ok(Brand {
            name: row.organisation_name,
            accent,
            logo,
            updated_at: row.updated_at,
            updated_by: Some(row.updated_by),
        })
    }

    /// The stylesheet of the employee pages that applies the accent colour.
    pub fn stylesheet(&self) -> String {
        format!(
            ":root {{ --accent: {}; --accent-text: {}; }}\n",
            self.accent.as_str(),
            self.accent.text_colour()
        ) + include_str!("../../templates/branding.css")
    }
}

/// What to do with the logo in a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoChange {
    Keep,
    Remove,
    /// A new file, checked by the change.
    Replace(Vec<u8>),
}

/// A change of the branding: the name and colour as typed, and the logo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrandChange {
    pub name: String,
    pub accent_colour: String,
    pub logo: LogoChange,
}

/// The branding of this node: what the database held when last read.
#[derive(Debug)]
pub struct Branding {
    store: Store,
    current: RwLock<Arc<Brand>>,
}

impl Branding {
    /// The default branding until [`Branding::load`] reads the stored one.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            current: RwLock::new(Arc::new(Brand::default())),
        }
    }

    /// The branding in effect.
    pub fn current(&self) -> Arc<Brand> {
        self.current
            .read()
            .map(|brand| brand.clone())
            .unwrap_or_default()
    }

    fn set(&self, brand: Arc<Brand>) {
        if let Ok(mut current) = self.current.write() {
            *current = brand;
        }
    }

    /// Reads the stored branding (another node or an admin may have changed it); whether it
    /// changed.
    pub async fn load(&self) -> Result<bool, StoreError> {
        let brand = match self.store.branding().await? {
            Some(row) => Brand::from_row(row)?,
            None => Brand::default(),
        };
        if *self.current() == brand {
            return Ok(false);
        }
        self.set(Arc::new(brand));
        Ok(true)
    }

    /// Checks and stores a change with its event; in effect at once on this node.
    pub async fn change(
        &self,
        change: BrandChange,
        actor: &Actor,
        client_ip: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Arc<Brand>, BrandingError> {
        let name = change.name.trim().to_string();
        if name.is_empty() {
            return Err(BrandingError::NameEmpty);
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(BrandingError::NameTooLong);
        }
        let accent = Accent::parse(&change.accent_colour)?;
        let before = self.current();
        let (logo, logo_detail) = match change.logo {
            LogoChange::Keep => (before.logo.clone(), "kept".to_string()),
            LogoChange::Remove => (None, "removed".to_string()),
            LogoChange::Replace(bytes) => {
                let logo = Logo::check(bytes)?;
                let detail = format!("{} ({} bytes)", logo.kind.content_type(), logo.bytes.len());
                (Some(logo), detail)
            }
        };
        let row = BrandingRow {
            organisation_name: name.clone(),
            accent_colour: accent.as_str().to_string(),
            logo_type: logo.as_ref().map(|l| l.kind.content_type().to_string()),
            logo_base64: logo
                .as_ref()
                .map(|l| base64::engine::general_purpose::STANDARD.encode(l.bytes.as_slice())),
            updated_at: now.timestamp_millis(),
            updated_by: actor.to_string(),
        };
        let mut event = NewEvent::new(now, actor, kind::BRANDING_CHANGED, None);
        event.details = json!({
            "name": name,
            "accent_colour": accent.as_str(),
            "logo": logo_detail,
        });
        event.client_ip = client_ip;
        self.store.save_branding(&row, &event).await?;
        let brand = Arc::new(Brand {
            name,
            accent,
            logo,
            updated_at: row.updated_at,
            updated_by: Some(row.updated_by),
        });
        self.set(brand.clone());
        Ok(brand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_must_be_six_hex_digits() {
        assert_eq!(Accent::parse(" #0B5CAD ").unwrap().as_str(), "#0b5cad");
        for bad in ["0b5cad", "#0b5ca", "#0b5cadd", "#0b5cag", "red", "", "#fff"] {
            assert!(Accent::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Accent::parse("#ffe600").unwrap().text_colour(), "#000000");
        assert_eq!(Accent::parse("#0b5cad").unwrap().text_colour(), "#ffffff");
    }

    #[test]
    fn logos_are_png_or_plain_svg() {
        let png = [b"\x89PNG\r\n\x1a\n".as_slice(), &[0u8; 16]].concat();
        assert_eq!(Logo::check(png).unwrap().kind, LogoType::Png);
        let svg = br#"<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10" fill="red"/></svg>"#;
        assert_eq!(Logo::check(svg.to_vec()).unwrap().kind, LogoType::Svg);
        let script = br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#;
        assert!(matches!(
            Logo::check(script.to_vec()),
            Err(BrandingError::LogoActive(_))
        ));
        let handler = br#"<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"></svg>"#;
        assert!(matches!(
            Logo::check(handler.to_vec()),
            Err(BrandingError::LogoActive(_))
        ));
        let html = b"<html><body>hi</body></html>";
        assert!(matches!(
            Logo::check(html.to_vec()),
            Err(BrandingError::LogoType)
        ));
        assert!(matches!(
            Logo::check(b"GIF89a....".to_vec()),
            Err(BrandingError::LogoType)
        ));
        assert!(matches!(
            Logo::check(vec![b' '; MAX_LOGO_BYTES + 1]),
            Err(BrandingError::LogoTooLarge(_))
        ));
    }
}
