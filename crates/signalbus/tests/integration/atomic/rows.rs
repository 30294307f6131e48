//! Row helpers.
