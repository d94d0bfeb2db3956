//! All integration tests in one binary (each extra test binary is another slow link).

mod support;

mod cli;
mod directory;
mod server;
mod sso;
