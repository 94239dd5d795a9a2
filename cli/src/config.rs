//! Configuration: `/etc/thinbox/config.toml`, overridden by flags.
