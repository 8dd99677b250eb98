//! Links libpython with an rpath (so `mlxd worker` finds it without LD_LIBRARY_PATH) and
//! records the linked Python version, which the daemon checks virtualenvs against.

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    let version = pyo3_build_config::get().version();
    println!("cargo:rustc-env=MLXD_LINKED_PYTHON={}.{}", version.major, version.minor);
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
