//! Running as a system service: socket activation ([`activation`]: systemd's LISTEN_FDS,
//! launchd's `launch_activate_socket`), readiness and status for systemd ([`notify`]), and
//! `mlxd install` / `mlxd uninstall` ([`install`]), which write the units or plists from
//! `systemd/` and `launchd/` for this binary and store, refusing for a system service
//! anything it would run that a user other than root could change (`root_owned`).

pub mod activation;
pub mod install;
pub mod notify;
mod root_owned;
