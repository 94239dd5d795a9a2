//! The state root and the backend behind every command.
