//! The built `keel` binary, run as a user runs it.

mod commands;
mod reference_page;
mod support;
