//! (being written) An in-memory SQLite VFS that can lose power.
