//! Outgoing mail over SMTP (lettre): the password-reset links of the user portal. No HTTP here.
//!
//! One [`Mailer`] per process, built from `[smtp]` at start-up so a bad setting stops the start
//! with a clear message instead of failing at the first "forgot password". The SMTP password is
//! held by lettre's `Credentials` only and never logged.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{ConfigError, SmtpConfig, SmtpTls};

/// Why a mail could not be built or sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(transparent)]
    Setting(#[from] ConfigError),
    #[error("{0:?} is not an email address")]
    Address(String),
    #[error("the message could not be built: {0}")]
    Build(String),
    /// The SMTP server refused the message or could not be reached (lettre's message, which
    /// names the server's reply, never the credentials).
    #[error("the SMTP server did not take the message: {0}")]
    Send(String),
}

/// A plain-text mail to one recipient.
#[derive(Debug, Clone)]
pub struct OutgoingMail {
    pub to: String,
    pub subject: String,
    pub text: String,
}

/// Sends mail through the configured SMTP server.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port`, for logs and events.
    server: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Builds the transport from `[smtp]` (already checked by the config): reads the password
    /// file and sets up TLS. Nothing is sent yet, so an unreachable server does not stop the
    /// start; each delivery failure is logged and recorded.
    pub fn from_config(smtp: &SmtpConfig) -> Result<Self, MailError> {
        let from: Mailbox = smtp
            .from
            .parse()
            .map_err(|_| MailError::Address(smtp.from.clone()))?;
        let tls_error = |e: lettre::transport::smtp::Error| {
            MailError::Setting(ConfigError::Invalid {
                setting: "smtp.tls".into(),
                problem: format!("cannot set up TLS for {}: {e}", smtp.host),
                fix: "check smtp.host, or use tls = \"none\" for a relay on this host".into(),
            })
        };
        let builder = match smtp.tls {
            // Plain SMTP: only for a local relay (the config refuses a password over it).
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                .map_err(tls_error)?,
            SmtpTls::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host).map_err(tls_error)?
            }
        };
        let mut builder = builder
            .port(smtp.port())
            .timeout(Some(Duration::from_secs(smtp.timeout_seconds)));
        if let Some(username) = &smtp.username {
            let password = match (&smtp.password, &smtp.password_file) {
                (Some(p), _) => p.expose().to_string(),
                (None, Some(path)) => {
                    let bytes = crate::config::read_private_file("smtp.password_file", path)?;
                    String::from_utf8_lossy(&bytes).trim_end().to_string()
                }
                (None, None) => String::new(),
            };
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            server: format!("{}:{}", smtp.host, smtp.port()),
        })
    }

    /// The SMTP server, `host:port`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends one plain-text mail.
    pub async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|_| MailError::Address(mail.to.clone()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .header(ContentType::TEXT_PLAIN)
            .body(mail.text.clone())
            .map_err(|e| MailError::Build(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| MailError::Send(e.to_string()))
    }
}
