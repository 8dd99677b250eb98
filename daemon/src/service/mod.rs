//! Running as a system service: socket activation ([`activation`]: systemd's LISTEN_FDS,
//! launchd's `launch_activate_socket`), readiness and status for systemd ([`notify`]), and
//! `mlxd install` / `mlxd uninstall` ([`install`]), which write the units or plists from
//! `systemd/` and `launchd/` for this binary and store.

pub mod activation;
pub mod install;
pub mod notify;
