//! Test harness (netns, daemon) lives here.
