//! The password policy, enforced on every password set.

use serde::{Deserialize, Serialize};

/// Symbols Microsoft Entra ID accepts in passwords (besides letters, digits and space).
pub const ENTRA_SYMBOLS: &str = "@#$%^&*-_!+=[]{}|\\:',.?/`~\"();<>";

/// Password rules; the defaults are at least as strict as Microsoft Entra ID's own, so a password
/// accepted here is never rejected when pushed to Microsoft 365.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordPolicy {
    pub min_length: usize,
    pub max_length: usize,
    /// How many of lower case, upper case, digits and symbols a password must mix (3 or 4).
    pub min_character_classes: u8,
    /// How many previous passwords may not be reused (0 = no history rule).
    pub history: u32,
    /// Days after the last change at which a password expires (0 = never).
    pub expiry_days: u32,
    /// Refuse passwords that contain the username (Entra refuses these too).
    pub disallow_username: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 8,
            max_length: 256,
            min_character_classes: 3,
            history: 5,
            expiry_days: 0,
            disallow_username: true,
        }
    }
}

/// The rule a password broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    #[error("it must be at least {0} characters long")]
    TooShort(usize),
    #[error("it must be at most {0} characters long")]
    TooLong(usize),
    #[error("it must mix at least {required} of: lower-case letters, upper-case letters, digits, symbols (it has {found})")]
    TooFewClasses { required: u8, found: u8 },
    #[error("it contains a character Microsoft 365 does not accept; use only ASCII letters, digits, spaces and the symbols {ENTRA_SYMBOLS}")]
    DisallowedCharacter,
    #[error("it must not contain the username")]
    ContainsUsername,
    #[error("it was used recently; choose one not among the last {0} passwords")]
    Reused(u32),
}

impl PasswordPolicy {
    /// The rules in one sentence, for the pages where a password is chosen.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} to {} characters mixing at least {} of: lower-case letters, upper-case letters, digits, symbols",
            self.min_length, self.max_length, self.min_character_classes
        );
        if self.disallow_username {
            text.push_str("; not containing the username");
        }
        if self.history > 0 {
            text.push_str(&format!("; none of the last {} passwords", self.history));
        }
        text.push('.');
        text
    }

    /// Checks the settings themselves; returns (setting, problem) when weaker than Entra ID's rule.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.min_length < 8 {
            return Err(("min_length", format!("{} is below 8", self.min_length)));
        }
        if self.max_length > 256 || self.max_length < self.min_length {
            return Err((
                "max_length",
                format!("{} must be between min_length and 256", self.max_length),
            ));
        }
        if !(3..=4).contains(&self.min_character_classes) {
            return Err((
                "min_character_classes",
                format!("{} must be 3 or 4", self.min_character_classes),
            ));
        }
        if self.history > 24 {
            return Err(("history", format!("{} must be at most 24", self.history)));
        }
        Ok(())
    }

    /// Checks a new password against the rules that need no stored history.
    pub fn check(&self, password: &str, username: &str) -> Result<(), PolicyViolation> {
        let length = password.chars().count();
        if length < self.min_length {
            return Err(PolicyViolation::TooShort(self.min_length));
        }
        if length > self.max_length {
            return Err(PolicyViolation::TooLong(self.max_length));
        }
        let (mut lower, mut upper, mut digit, mut symbol) = (false, false, false, false);
        for c in password.chars() {
            match c {
                'a'..='z' => lower = true,
                'A'..='Z' => upper = true,
                '0'..='9' => digit = true,
                ' ' => symbol = true,
                c if ENTRA_SYMBOLS.contains(c) => symbol = true,
                _ => return Err(PolicyViolation::DisallowedCharacter),
            }
        }
        let found = [lower, upper, digit, symbol].iter().filter(|b| **b).count() as u8;
        if found < self.min_character_classes {
            return Err(PolicyViolation::TooFewClasses {
                required: self.min_character_classes,
                found,
            });
        }
        if self.disallow_username
            && username.len() >= 3
            && password.to_lowercase().contains(&username.to_lowercase())
        {
            return Err(PolicyViolation::ContainsUsername);
        }
        Ok(())
    }

    /// The rules in force, one sentence each, as users read them before choosing a password.
    pub fn rules(&self) -> Vec<String> {
        let mut rules = vec![
            format!(
                "Between {} and {} characters long.",
                self.min_length, self.max_length
            ),
            format!(
                "At least {} of: lower-case letters, upper-case letters, digits, symbols.",
                self.min_character_classes
            ),
            format!("Only ASCII letters, digits, spaces and the symbols {ENTRA_SYMBOLS}"),
        ];
        if self.disallow_username {
            rules.push("It must not contain your username.".into());
        }
        if self.history > 0 {
            rules.push(format!(
                "It must not be one of your last {} passwords.",
                self.history
            ));
        }
        if self.expiry_days > 0 {
            rules.push(format!(
                "It expires {} days after you set it.",
                self.expiry_days
            ));
        }
        rules
    }

    /// Whether a password last changed at `changed_at_ms` has expired at `now_ms`.
    pub fn is_expired(&self, changed_at_ms: Option<i64>, now_ms: i64) -> bool {
        match (self.expiry_days, changed_at_ms) {
            (0, _) => false,
            // A user with no password-change time has no usable password either.
            (_, None) => true,
            (days, Some(changed)) => now_ms >= changed + i64::from(days) * 86_400_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PasswordPolicy {
        PasswordPolicy::default()
    }

    #[test]
    fn entra_rule_is_the_floor() {
        assert_eq!(
            policy().check("Ab1!", "u"),
            Err(PolicyViolation::TooShort(8))
        );
        assert_eq!(
            policy().check(&"Ab1!".repeat(65), "u"),
            Err(PolicyViolation::TooLong(256))
        );
        assert!(matches!(
            policy().check("abcdefgh1", "u"),
            Err(PolicyViolation::TooFewClasses {
                required: 3,
                found: 2
            })
        ));
        assert_eq!(policy().check("abcdefG1", "u"), Ok(()));
        assert_eq!(policy().check("abcd efG!", "u"), Ok(()));
    }

    #[test]
    fn non_ascii_is_refused_because_entra_refuses_it() {
        assert_eq!(
            policy().check("Abcdéfg1!", "u"),
            Err(PolicyViolation::DisallowedCharacter)
        );
    }

    #[test]
    fn username_inside_password_is_refused() {
        assert_eq!(
            policy().check("xxAlice99!", "alice"),
            Err(PolicyViolation::ContainsUsername)
        );
    }

    #[test]
    fn expiry_counts_from_last_change() {
        let p = PasswordPolicy {
            expiry_days: 90,
            ..policy()
        };
        let day = 86_400_000;
        assert!(!p.is_expired(Some(0), 89 * day));
        assert!(p.is_expired(Some(0), 90 * day));
        assert!(!policy().is_expired(Some(0), 1000 * day));
    }
}
