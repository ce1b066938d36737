"""The declaration of every setting of the entry points, once: dataclasses whose fields are
the keys of the Hydra configs in ``conf/``, with their types and defaults.

- :mod:`.schema`: checks plain settings against a declaration (unknown keys with the
  closest names, wrong types, values outside their choices).
- :mod:`.model`: ``model`` (every entry point composes the ``model`` group).
- :mod:`.train`, :mod:`.evaluate`, :mod:`.amg`, :mod:`.annotate`: each entry point's
  settings and its ``check(config) -> problems``.

The library's functions and classes take the same names as plain arguments, with the same
defaults (a test compares them), so a setting has one declaration and one default. This
package imports neither torch, Hydra nor Lightning.

A new setting is a field here (type, default, a comment saying what it does), the same value
in the YAML file that states it, and the same default in the function that takes it;
``tests/test_settings_declarations.py`` checks all three, and the entry points then refuse a
misspelling or a wrong type of it before they start.
"""
