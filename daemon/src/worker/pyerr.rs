//! Python exceptions as the worker reports them.

use pyo3::prelude::*;

/// Whether `err` is an exception of the class named `class` (mlxd_runtime's own types).
pub(crate) fn is_exception(py: Python<'_>, err: &PyErr, class: &str) -> bool {
    err.get_type(py).name().is_ok_and(|name| name == class)
}

/// One line for the wire; the full traceback goes to the worker's stderr (the daemon log).
pub(crate) fn python_error(py: Python<'_>, doing: &str, err: PyErr) -> String {
    err.display(py);
    format!("{doing}: {err}")
}
