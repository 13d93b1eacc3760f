"""Framework-free core: dims, nesting maths, validators, errors."""
