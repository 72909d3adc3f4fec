//! The chat routes.
