pub mod http;
pub mod passkey;
