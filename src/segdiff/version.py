"""The package version, in a module of its own so that any layer can read it without importing the
package root (which would be an upward import). `segdiff.__version__` is this value."""

__version__ = "0.1.0"
